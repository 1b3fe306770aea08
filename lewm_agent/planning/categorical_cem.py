"""Cross-entropy method over discrete actions, encoded as one-hot action blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lewm_agent.checks import check_float, check_int

from .base import CostFn, Planner, Problem, evaluate, select_elites


class CategoricalCEM(Planner):
    """CEM with one categorical distribution per (step, sub-step) for discrete action spaces.

    The model's action features for one step are ``action_block`` one-hot vectors of length
    ``n_actions`` laid end to end, so ``action_dim = action_block * n_actions``. ``n_actions`` is a
    property of the environment and is fixed at construction; ``action_block`` is then read off
    ``action_dim`` at each ``plan``.

    Each iteration samples one-hot candidates from the current probabilities (candidate 0 = the mode),
    keeps the ``topk`` lowest-cost ones and sets the probabilities to the elites' action frequencies
    plus ``smoothing`` (renormalised), so no action's probability collapses to zero. The returned plan
    is the final mode as one-hot features ``[B, horizon, action_dim]``.

    Warm start: ``init`` (one-hot or probability blocks) is blended half-and-half with the uniform
    distribution, so the previous plan is the starting mode but everything else is still explored;
    all-zero blocks (such as the zero padding of a shifted plan) start uniform. Bounds do not apply.

    Args:
        n_actions: choices of the discrete action space (one-hot width).
        num_samples: candidates per iteration, including the mode.
        iterations: refits per plan.
        topk: elites per refit, ``<= num_samples``.
        smoothing: added to every elite frequency before renormalising (>= 0).
        seed, device: as for :class:`~lewm_agent.planning.CEM`.
    """

    name = "categorical_cem"
    discrete = True

    def __init__(
        self,
        n_actions: int,
        num_samples: int = 300,
        iterations: int = 30,
        topk: int = 30,
        smoothing: float = 0.01,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        super().__init__(seed, device)
        self.n_actions = check_int("n_actions", n_actions, minimum=2)
        self.num_samples = check_int("num_samples", num_samples, minimum=2)
        self.iterations = check_int("iterations", iterations)
        self.topk = check_int("topk", topk)
        if self.topk > self.num_samples:
            raise ValueError(f"topk ({topk}) must be <= num_samples ({num_samples})")
        self.smoothing = check_float("smoothing", smoothing, positive=False)

    def _solve(self, cost_fn: CostFn, p: Problem) -> Tensor:
        n = self.n_actions
        p.check_one_hot(n, "CategoricalCEM")
        shape = (p.batch_size, p.horizon, p.action_dim // n, n)
        probs = self._initial_probs(p.init.reshape(shape))
        for _ in range(self.iterations):
            # Inverse-CDF sampling: one uniform number per categorical draw.
            u = p.draw(torch.rand, self.num_samples - 1, *shape[1:3])  # [B, S-1, H, block]
            cdf = probs.cumsum(dim=-1)[:, None]  # [B, 1, H, block, n]
            sampled = (cdf < u[..., None]).sum(dim=-1).clamp_max(n - 1)
            indices = torch.cat([probs.argmax(dim=-1)[:, None], sampled], dim=1)  # [B, S, H, block]
            candidates = F.one_hot(indices, n).to(p.dtype).flatten(-2)  # [B, S, H, action_dim]
            costs = evaluate(cost_fn, candidates)
            elites, _ = select_elites(indices, costs, self.topk)
            freq = F.one_hot(elites, n).to(p.dtype).mean(dim=1)  # [B, H, block, n]
            probs = (freq + self.smoothing) / (1 + n * self.smoothing)
        return F.one_hot(probs.argmax(dim=-1), n).to(p.dtype).flatten(-2)

    def _initial_probs(self, init: Tensor) -> Tensor:
        """``[B, H, block, n]`` starting probabilities from the warm-start blocks (see class doc)."""
        init = init.clamp_min(0)
        total = init.sum(dim=-1, keepdim=True)
        uniform = torch.full_like(init, 1 / self.n_actions)
        blended = 0.5 * init / total.clamp_min(1e-12) + 0.5 * uniform
        return torch.where(total > 0, blended, uniform)
