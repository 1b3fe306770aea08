"""Looking inside a trained LeWM: probes of physical quantities, surprise (violation of expectation)
and temporal straightness. ``lewm probe`` and ``lewm surprise`` are the command-line forms."""

from .probe import Quantity, env_quantities, probe, probe_table
from .surprise import SurpriseTracker, paired_test, surprise_experiment, surprise_series, surprise_table

__all__ = ["Quantity", "env_quantities", "probe", "probe_table", "SurpriseTracker", "paired_test",
           "surprise_experiment", "surprise_series", "surprise_table"]
