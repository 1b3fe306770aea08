"""Build a planner from a name and settings, e.g. from a config file or the command line."""

from __future__ import annotations

import inspect

from .base import Planner
from .beam import BeamSearch
from .categorical_cem import CategoricalCEM
from .cem import CEM
from .gradient import GradientPlanner
from .mppi import MPPI

PLANNERS: dict[str, type[Planner]] = {
    "cem": CEM,
    "mppi": MPPI,
    "gradient": GradientPlanner,
    "adam": GradientPlanner,  # the paper calls its gradient solver "Adam"
    "categorical_cem": CategoricalCEM,
    "beam": BeamSearch,
}


def make_planner(name: str, **overrides) -> Planner:
    """The planner called ``name`` with its defaults, updated by ``overrides``.

    Names: "cem", "mppi", "gradient" (alias "adam"); for discrete actions "categorical_cem" and "beam"
    (which need ``n_actions``).
    Raises ValueError for an unknown name, an unknown setting or an invalid value, before any work.
    """
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; valid names: {sorted(PLANNERS)}")
    cls = PLANNERS[name]
    params = inspect.signature(cls.__init__).parameters
    valid = [k for k in params if k != "self"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for planner {name!r}; valid settings: {valid}")
    missing = [k for k in valid if params[k].default is inspect.Parameter.empty and k not in overrides]
    if missing:
        raise ValueError(f"planner {name!r} needs setting(s) {missing}")
    return cls(**overrides)
