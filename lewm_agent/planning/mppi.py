"""Model predictive path integral (MPPI) planning, stable-worldmodel style."""

from __future__ import annotations

import torch
from torch import Tensor

from lewm_agent.checks import check_float, check_int, check_share

from .base import CostFn, Planner, Problem, evaluate, select_elites
from .cem import sample_around


class MPPI(Planner):
    """MPPI over action sequences in the normalised action space.

    Each iteration samples candidates ``mean + std * eps`` (clamped to the bounds, candidate 0 = the
    mean) and moves the mean to their ``softmax(-cost / temperature)``-weighted average. As in
    stable-worldmodel, the average is over the ``topk`` lowest-cost candidates (None = all of them),
    and the std stays at ``init_std`` unless ``update_std`` is set, in which case it becomes the
    weighted std of those candidates around the new mean, floored at ``min_std`` so the search never
    freezes. The returned plan is the final mean.

    The temperature is in cost units: with LeWM's summed-squared-error latent cost (values of order
    1-100) the default 0.5 makes the update close to "move to the best few candidates".

    Args:
        num_samples: candidates per iteration, including the mean.
        iterations: updates per plan.
        temperature: softmax temperature (> 0); lower = greedier.
        init_std: sampling standard deviation (the starting one when ``update_std``).
        topk: candidates that enter the weighted average (None = all).
        update_std: refit the std from the weighted candidates each iteration.
        min_std: floor of the refitted std.
        block_noise: share of the noise common to the env steps of a block, as for
            :class:`~lewm_agent.planning.CEM` (0: independent, as in stable-worldmodel).
        seed, device: as for :class:`~lewm_agent.planning.CEM`.
    """

    name = "mppi"

    def __init__(
        self,
        num_samples: int = 300,
        iterations: int = 30,
        temperature: float = 0.5,
        init_std: float = 1.0,
        topk: int | None = 30,
        update_std: bool = False,
        min_std: float = 0.05,
        block_noise: float = 0.0,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        super().__init__(seed, device)
        self.num_samples = check_int("num_samples", num_samples, minimum=2)
        self.iterations = check_int("iterations", iterations)
        self.temperature = check_float("temperature", temperature)
        self.init_std = check_float("init_std", init_std)
        self.topk = None if topk is None else check_int("topk", topk)
        if self.topk is not None and self.topk > self.num_samples:
            raise ValueError(f"topk ({topk}) must be <= num_samples ({num_samples}) or None")
        if not isinstance(update_std, bool):
            raise ValueError(f"update_std must be True or False, got {update_std!r}")
        self.update_std = update_std
        self.min_std = check_float("min_std", min_std, positive=False)
        self.block_noise = check_share("block_noise", block_noise)

    def _solve(self, cost_fn: CostFn, p: Problem) -> Tensor:
        mean = p.init
        std = torch.full_like(mean, self.init_std)
        k = self.topk or self.num_samples
        for _ in range(self.iterations):
            candidates = sample_around(p, mean, std, self.num_samples, self.block_noise)
            costs = evaluate(cost_fn, candidates)
            chosen, chosen_costs = select_elites(candidates, costs, k)
            weights = torch.softmax(-chosen_costs / self.temperature, dim=1)[:, :, None, None]
            mean = p.clamp((weights * chosen).sum(dim=1))  # clamping only removes rounding
            if self.update_std:
                var = (weights * (chosen - mean[:, None]) ** 2).sum(dim=1)
                std = var.sqrt().clamp_min(self.min_std)
        return mean
