"""What every planner shares: argument checks, per-row random generators, bounds, cost evaluation.

A planner minimises ``cost_fn(candidates[B, S, horizon, action_dim]) -> costs[B, S]`` over action
sequences in the model's normalised action space and returns one plan per batch row,
``[B, horizon, action_dim]``. It knows nothing of environments or models.

Reproducibility: with ``seeds`` (one int per row) row i draws all its noise from its own
``torch.Generator`` seeded with ``seeds[i]``, so a batched plan equals the single plans with the same
seeds whenever ``cost_fn`` treats rows independently. Without ``seeds`` the whole batch draws from one
generator per device, seeded once with the planner's ``seed``, so successive plans differ but a run is
reproducible.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lewm_agent.checks import check_int

CostFn = Callable[[Tensor], Tensor]
"""``cost_fn(candidates[B, S, horizon, action_dim]) -> costs[B, S]``, lower is better."""

StateFn = Callable[[Tensor], Tensor]
"""``state_fn(candidates[B, S, h, action_dim]) -> states[B, S, K]``: what each plan ends in, for
planners that merge plans reaching the same state (:class:`~lewm_agent.planning.BeamSearch`)."""


@dataclass
class Problem:
    """One validated call to ``plan``: sizes, the starting mean, bounds and the random generators."""

    batch_size: int
    horizon: int
    action_dim: int
    init: Tensor  # [B, horizon, action_dim], inside the bounds
    low: Tensor | None  # [action_dim]
    high: Tensor | None  # [action_dim]
    generators: list[torch.Generator]  # one per row, or a single one shared by the batch
    action_block: int = 1  # env steps per planned step: action_dim = action_block * one env step's features
    state_fn: StateFn | None = None  # only planners with needs_states use it

    @property
    def device(self) -> torch.device:
        return self.init.device

    @property
    def dtype(self) -> torch.dtype:
        return self.init.dtype

    def check_one_hot(self, n_actions: int, planner: str) -> None:
        """Raise unless the features are one-hot blocks of ``n_actions`` and there are no bounds."""
        if self.action_dim % n_actions:
            raise ValueError(
                f"action_dim ({self.action_dim}) must be a multiple of n_actions ({n_actions}): one one-hot "
                "vector per env step of the action block"
            )
        if self.low is not None or self.high is not None:
            raise ValueError(f"{planner} plans one-hot actions; pass low=None and high=None")

    def clamp(self, x: Tensor) -> Tensor:
        """``x[..., action_dim]`` clamped to the bounds (unchanged when there are none)."""
        if self.low is None and self.high is None:
            return x
        return x.clamp(self.low, self.high)

    def draw(self, sampler: Callable[..., Tensor], *shape: int) -> Tensor:
        """``[B, *shape]`` from ``torch.randn`` or ``torch.rand``, row i from its own generator."""
        kw = dict(device=self.device, dtype=self.dtype)
        if len(self.generators) == 1:
            return sampler(self.batch_size, *shape, generator=self.generators[0], **kw)
        out = torch.empty(self.batch_size, *shape, **kw)
        for row, gen in zip(out, self.generators):
            sampler(*shape, generator=gen, out=row)
        return out


class Planner:
    """Base class. Subclasses set ``name`` and implement ``_solve(cost_fn, problem) -> [B, H, A]``.

    ``device`` is where plans are made when no ``init`` is given (default cpu); with ``init`` the plan
    is made on ``init``'s device and in its floating dtype.
    """

    name: str = ""
    #: Planners over one-hot action blocks (discrete actions) take ``n_actions``; the others plan
    #: continuous features.
    discrete: bool = False
    #: Sampling planners run under ``torch.inference_mode``; the gradient planner needs autograd.
    needs_grad: bool = False
    #: Planners that merge plans ending in the same state need ``state_fn`` in ``plan``.
    needs_states: bool = False

    def __init__(self, seed: int = 0, device: str | torch.device | None = None):
        self.seed = check_int("seed", seed, minimum=None)
        self.device = torch.device(device) if device is not None else None
        self._shared: dict[torch.device, torch.Generator] = {}

    @property
    def settings(self) -> dict:
        """Constructor arguments, so that ``make_planner(p.name, **p.settings)`` rebuilds ``p``."""
        names = [k for k in inspect.signature(type(self).__init__).parameters if k != "self"]
        out = {k: getattr(self, k) for k in names}
        if out.get("device") is not None:
            out["device"] = str(out["device"])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"

    def plan(
        self,
        cost_fn: CostFn,
        batch_size: int,
        horizon: int,
        action_dim: int,
        init: Tensor | None = None,
        low: Tensor | None = None,
        high: Tensor | None = None,
        seeds: Sequence[int] | None = None,
        action_block: int = 1,
        state_fn: StateFn | None = None,
    ) -> Tensor:
        """Minimise ``cost_fn`` and return the plans, ``[batch_size, horizon, action_dim]``.

        Args:
            cost_fn: ``candidates[B, S, horizon, action_dim] -> costs[B, S]`` (lower is better).
            batch_size: B, the number of independent problems (e.g. environments).
            horizon: planned steps (action blocks).
            action_dim: features per step (e.g. action_block * env action dim).
            init: warm-start mean ``[B, T, action_dim]`` with ``T <= horizon``; missing trailing steps
                are zeros (so the unexecuted tail of the previous plan can be passed as is). None = zeros.
            low, high: bounds ``[action_dim]`` (or scalars), either may be None. Candidates are clamped
                to them and the returned plan respects them.
            seeds: one int per row; row i then equals a single plan with ``seeds=[seeds[i]]``.
            action_block: env steps per planned step, dividing ``action_dim``: the features of one
                step are ``action_block`` env actions end to end (CEM's and MPPI's ``block_noise``).
            state_fn: ``candidates[B, S, h, action_dim] -> [B, S, K]``, the state each plan ends in; only
                planners with ``needs_states`` use it (see :data:`StateFn`).
        """
        problem = self._problem(batch_size, horizon, action_dim, init, low, high, seeds, action_block)
        problem.state_fn = state_fn
        if self.needs_grad:
            with torch.inference_mode(False), torch.enable_grad():
                return self._solve(cost_fn, problem).detach()
        with torch.inference_mode():
            out = self._solve(cost_fn, problem)
        # A plain tensor, so callers may modify it in place outside inference mode.
        return out.clone()

    def _solve(self, cost_fn: CostFn, problem: Problem) -> Tensor:
        raise NotImplementedError

    def _problem(self, batch_size, horizon, action_dim, init, low, high, seeds, action_block) -> Problem:
        batch_size = check_int("batch_size", batch_size)
        horizon = check_int("horizon", horizon)
        action_dim = check_int("action_dim", action_dim)
        action_block = check_int("action_block", action_block)
        if action_dim % action_block:
            raise ValueError(f"action_block ({action_block}) must divide action_dim ({action_dim})")
        if init is None:
            device = self.device or torch.device("cpu")
            full = torch.zeros(batch_size, horizon, action_dim, device=device)
        else:
            ok = isinstance(init, Tensor) and init.ndim == 3 and init.shape[0] == batch_size
            if not ok or init.shape[1] > horizon or init.shape[2] != action_dim:
                raise ValueError(
                    f"init must be a tensor [batch_size={batch_size}, T<={horizon}, action_dim={action_dim}]"
                    f", got {tuple(init.shape) if isinstance(init, Tensor) else type(init)}"
                )
            dtype = init.dtype if init.is_floating_point() else torch.float32
            full = torch.zeros(batch_size, horizon, action_dim, device=init.device, dtype=dtype)
            full[:, : init.shape[1]] = init.detach()
        low = self._bound("low", low, action_dim, full)
        high = self._bound("high", high, action_dim, full)
        if low is not None and high is not None and bool((low > high).any()):
            raise ValueError(f"low must be <= high everywhere, got low={low.tolist()} high={high.tolist()}")
        generators = self._generators(seeds, batch_size, full.device)
        problem = Problem(batch_size, horizon, action_dim, full, low, high, generators, action_block)
        problem.init = problem.clamp(full)  # a warm start outside the bounds starts at the nearest bound
        return problem

    @staticmethod
    def _bound(name: str, value, action_dim: int, like: Tensor) -> Tensor | None:
        if value is None:
            return None
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device).detach()
        if t.ndim == 0:
            return t.expand(action_dim)
        if t.shape != (action_dim,):
            raise ValueError(
                f"{name} must have shape [action_dim={action_dim}] (or be a scalar), got {tuple(t.shape)}; "
                "with action blocks, repeat the per-step bounds: bound.repeat(action_block)"
            )
        return t

    def _generators(self, seeds, batch_size: int, device: torch.device) -> list[torch.Generator]:
        if seeds is None:
            if device not in self._shared:
                self._shared[device] = torch.Generator(device).manual_seed(self.seed)
            return [self._shared[device]]
        seeds = list(seeds)
        if len(seeds) != batch_size:
            raise ValueError(f"seeds must have one int per row ({batch_size}), got {len(seeds)}")
        return [torch.Generator(device).manual_seed(check_int("seeds[i]", s, minimum=0)) for s in seeds]


def evaluate(cost_fn: CostFn, candidates: Tensor) -> Tensor:
    """``cost_fn(candidates[B, S, ...])`` checked to be ``[B, S]``."""
    costs = cost_fn(candidates)
    expected = tuple(candidates.shape[:2])
    if not isinstance(costs, Tensor) or tuple(costs.shape) != expected:
        raise ValueError(
            f"cost_fn must return a tensor of shape [B, S] = {list(expected)}, "
            f"got {getattr(costs, 'shape', type(costs))}"
        )
    return costs


def select_elites(candidates: Tensor, costs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` lowest-cost candidates per row: ``([B, k, ...], costs [B, k])``.

    NaN costs (a diverged rollout) rank last instead of being picked as elites.
    """
    costs = costs.nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    vals, idx = costs.topk(k, dim=1, largest=False)
    rows = torch.arange(candidates.shape[0], device=candidates.device)[:, None]
    return candidates[rows, idx], vals
