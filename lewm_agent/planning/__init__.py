"""Planners over a cost function, independent of environments and models.

Every planner has ``plan(cost_fn, batch_size, horizon, action_dim, init=None, low=None, high=None,
seeds=None) -> [batch_size, horizon, action_dim]`` where ``cost_fn(candidates[B, S, horizon,
action_dim]) -> costs[B, S]`` (lower is better) works in the model's normalised action space.

    from lewm_agent.planning import make_planner
    planner = make_planner("cem")                       # the paper's CEM: 300 x 30, top 30
    plan = planner.plan(cost_fn, batch_size=1, horizon=5, action_dim=10)
"""

from .base import CostFn, Planner, StateFn
from .beam import BeamSearch
from .categorical_cem import CategoricalCEM
from .cem import CEM
from .factory import PLANNERS, make_planner
from .gradient import GradientPlanner
from .mppi import MPPI

__all__ = [
    "CEM",
    "MPPI",
    "GradientPlanner",
    "CategoricalCEM",
    "BeamSearch",
    "Planner",
    "CostFn",
    "StateFn",
    "PLANNERS",
    "make_planner",
]
