"""Beam search over discrete action sequences that merges plans ending in the same predicted state."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from lewm_agent.checks import check_float, check_int

from .base import CostFn, Planner, Problem, evaluate


class BeamSearch(Planner):
    """Breadth-first search over one-hot action blocks, kept to ``width`` distinct predicted states.

    Sampling planners struggle where the goal cost is flat except near the goal: in a grid world the
    latent distance to the goal frame is about the same from every cell more than a step or two away,
    so CEM's elites carry no information and a goal-reaching sequence is a needle among ``n**horizon``.
    A world model is deterministic, though, and many sequences lead to the same state (turn left then
    right, walk into a wall), so the number of distinct states within reach is small. This planner
    extends every kept plan by every choice of the next step, asks ``state_fn`` for the predicted state
    each extension ends in, keeps the cheapest plan per state (merging states closer than ``merge``
    times the median squared distance between the candidates' states) and the ``width`` cheapest
    states; after ``horizon`` steps it returns the cheapest plan. When ``width`` covers every reachable
    state the search is exhaustive: with the closest-step cost ("min") it finds the plan whose
    predicted path comes nearest to the goal.

    It needs ``state_fn(candidates[B, S, h, action_dim]) -> [B, S, K]`` in ``plan`` (``LeWMAgent``
    passes the predictor's context after the plan: its last embeddings and actions). Candidates are
    ``h``-step prefixes, ``h = 1 .. horizon``, so ``cost_fn`` and ``state_fn`` must accept any length.
    No noise is drawn: ``seeds`` and ``init`` do not change the plan. Bounds do not apply.

    Args:
        n_actions: choices of the discrete action space (one-hot width).
        width: distinct states kept per step (the beam).
        merge: states whose squared distance is at most ``merge`` x the median squared distance between
            the candidates' states count as one (> 0; a predicted state drifts a little with the path
            that led to it, so the default merges within 5% of the typical distance).
        seed, device: as for :class:`~lewm_agent.planning.CEM`.
    """

    name = "beam"
    discrete = True
    needs_states = True

    def __init__(
        self,
        n_actions: int,
        width: int = 256,
        merge: float = 0.05,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        super().__init__(seed, device)
        self.n_actions = check_int("n_actions", n_actions, minimum=2)
        self.width = check_int("width", width)
        self.merge = check_float("merge", merge)

    def _solve(self, cost_fn: CostFn, p: Problem) -> Tensor:
        n = self.n_actions
        p.check_one_hot(n, "BeamSearch")
        if p.state_fn is None:
            raise ValueError("BeamSearch needs state_fn in plan(): the predicted state each candidate ends in")
        # Every choice of one planned step: all n**block combinations of the block's env actions.
        block = p.action_dim // n
        combos = torch.tensor(list(itertools.product(range(n), repeat=block)), device=p.device)
        choices = F.one_hot(combos, n).to(p.dtype).flatten(-2)  # [C, action_dim]
        c = len(choices)
        b = p.batch_size
        plans = torch.zeros(b, 1, 0, p.action_dim, device=p.device, dtype=p.dtype)  # the empty plan
        alive = torch.ones(b, 1, dtype=torch.bool, device=p.device)
        for _ in range(p.horizon):
            w, h = plans.shape[1], plans.shape[2]
            grown = torch.cat(
                [plans[:, :, None].expand(b, w, c, h, p.action_dim),
                 choices[None, None, :, None].expand(b, w, c, 1, p.action_dim)], dim=3,
            ).reshape(b, w * c, h + 1, p.action_dim)
            costs = evaluate(cost_fn, grown).masked_fill(~alive.repeat_interleave(c, dim=1), float("inf"))
            keep = self._distinct_cheapest(p.state_fn(grown), costs)  # [B, W'] indices, -1 = none
            keep = keep[:, : max(1, int((keep >= 0).sum(dim=1).max()))]
            alive = keep >= 0
            plans = grown.gather(1, keep.clamp_min(0)[..., None, None].expand(-1, -1, h + 1, p.action_dim))
        return plans[:, 0]  # the kept plans are sorted by cost

    def _distinct_cheapest(self, states: Tensor, costs: Tensor) -> Tensor:
        """Per row, the indices of the ``width`` cheapest candidates with distinct states, cheapest
        first, padded with -1; infinite costs are never kept."""
        out = torch.full((len(costs), min(self.width, costs.shape[1])), -1, dtype=torch.long, device=costs.device)
        for row, (x, cost) in enumerate(zip(states.float(), costs)):
            order = cost.argsort()
            order = order[cost[order].isfinite()]
            d2 = torch.cdist(x[order], x[order]).square()  # sorted by cost
            cheaper = torch.ones_like(d2, dtype=torch.bool).triu(diagonal=1)  # [i, j]: i is cheaper than j
            scale = d2[cheaper].median() if len(order) > 1 else d2.new_zeros(())
            # A candidate is dropped when a cheaper one ends within the merge distance of its state.
            duplicate = ((d2 <= self.merge * scale) & cheaper).any(dim=0)
            kept = order[~duplicate][: out.shape[1]]
            out[row, : len(kept)] = kept
        return out
