"""Looking inside a trained LeWM: probes of physical quantities, surprise (violation of expectation),
open-loop prediction error and temporal straightness. ``lewm probe``, ``lewm surprise`` and
``lewm rollout`` are the command-line forms."""

from .probe import Quantity, env_quantities, probe, probe_table
from .rollout import rollout_error, rollout_table
from .surprise import SurpriseTracker, paired_test, surprise_experiment, surprise_series, surprise_table

__all__ = ["Quantity", "env_quantities", "probe", "probe_table", "rollout_error", "rollout_table", "SurpriseTracker",
           "paired_test", "surprise_experiment", "surprise_series", "surprise_table"]
