"""Cross-entropy method with the official stable-worldmodel semantics (the LeWM paper's planner)."""

from __future__ import annotations

import torch
from torch import Tensor

from lewm_agent.checks import check_float, check_int, check_share

from .base import CostFn, Planner, Problem, evaluate, select_elites


class CEM(Planner):
    """Gaussian CEM over action sequences in the normalised action space.

    Each iteration samples ``num_samples`` candidates ``mean + std * eps`` (clamped to the bounds),
    with candidate 0 forced to the current mean, keeps the ``topk`` lowest-cost ones and refits the
    mean and the standard deviation (not the variance) on them. The returned plan is the final mean,
    not the best sample. The std restarts at ``init_std`` on every call: a warm start only moves the
    mean. Defaults are the paper's: 300 samples, 30 iterations, top 30, ``init_std`` 1, and noise
    drawn independently for every feature (``block_noise`` 0).

    Args:
        num_samples: candidates per iteration (S), including the mean.
        iterations: refits per plan.
        topk: elites per refit, ``2 <= topk <= num_samples`` (the elite std needs two).
        init_std: starting standard deviation of every action feature.
        block_noise: share of the sampling noise's variance that the env steps of one action block
            have in common (``plan``'s ``action_block``), in [0, 1]. 0 draws every env step
            independently (the paper's); 1 draws one perturbation per block, so a block moves as far
            as a constant action instead of a random walk of ``action_block`` steps.
        seed: seeds the planner's own generator, used when ``plan`` gets no ``seeds``.
        device: where plans are made when ``plan`` gets no ``init``.
    """

    name = "cem"

    def __init__(
        self,
        num_samples: int = 300,
        iterations: int = 30,
        topk: int = 30,
        init_std: float = 1.0,
        block_noise: float = 0.0,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        super().__init__(seed, device)
        self.num_samples = check_int("num_samples", num_samples, minimum=2)
        self.iterations = check_int("iterations", iterations)
        self.topk = check_int("topk", topk, minimum=2)
        if self.topk > self.num_samples:
            raise ValueError(f"topk ({topk}) must be <= num_samples ({num_samples})")
        self.init_std = check_float("init_std", init_std)
        self.block_noise = check_share("block_noise", block_noise)

    def _solve(self, cost_fn: CostFn, p: Problem) -> Tensor:
        mean = p.init
        std = torch.full_like(mean, self.init_std)
        for _ in range(self.iterations):
            candidates = sample_around(p, mean, std, self.num_samples, self.block_noise)
            costs = evaluate(cost_fn, candidates)
            elites, _ = select_elites(candidates, costs, self.topk)
            # The mean is a convex combination of clamped candidates; clamping only removes rounding.
            # The std is torch's unbiased one, as in stable-worldmodel.
            mean, std = p.clamp(elites.mean(dim=1)), elites.std(dim=1)
        return mean


def sample_around(p: Problem, mean: Tensor, std: Tensor, num_samples: int, block_noise: float = 0.0) -> Tensor:
    """``[B, S, H, A]`` candidates: the mean itself, then ``mean + std * eps``, clamped to the bounds.
    ``eps`` has unit variance; ``block_noise`` of it is shared by the env steps of each block."""
    eps = p.draw(torch.randn, num_samples - 1, p.horizon, p.action_dim)
    if block_noise:
        step = p.action_dim // p.action_block
        shared = p.draw(torch.randn, num_samples - 1, p.horizon, 1, step)
        own = eps.unflatten(-1, (p.action_block, step))
        eps = (block_noise**0.5 * shared + (1 - block_noise) ** 0.5 * own).flatten(-2)
    shape = (p.batch_size, num_samples, p.horizon, p.action_dim)
    candidates = torch.empty(shape, device=p.device, dtype=p.dtype)
    candidates[:, 0] = mean
    torch.addcmul(mean[:, None], std[:, None], eps, out=candidates[:, 1:])
    return p.clamp(candidates)
