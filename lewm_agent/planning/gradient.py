"""Gradient-based planning: optimise the action sequence by backpropagating through the cost."""

from __future__ import annotations

import torch
from torch import Tensor

from lewm_agent.checks import check_float, check_int

from .base import CostFn, Planner, Problem, evaluate

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


class GradientPlanner(Planner):
    """Gradient descent on the action sequence through a differentiable ``cost_fn``.

    ``cost_fn`` must be differentiable with respect to its input (e.g. a world-model rollout without
    ``torch.no_grad``); ``plan`` turns autograd on for it even when called under ``inference_mode``.
    Gradients are taken with ``torch.autograd.grad`` so the model's own ``.grad`` fields stay untouched.

    ``num_samples`` restarts run in parallel per row: restart 0 starts at the warm-start mean, the
    others at ``mean + init_std * eps``. After ``iterations`` optimiser steps (each followed by
    clamping to the bounds) every restart is evaluated once more and each row returns its best one.
    The LeWM paper's Adam solver is ``optimizer="adamw", lr=0.1, iterations=30`` with 100 samples in
    stable-worldmodel's config; the default here is a single restart with Adam, the cheap choice.

    Args:
        iterations: optimiser steps.
        lr: learning rate.
        num_samples: parallel restarts per row.
        optimizer: one of "adam", "adamw", "sgd", "rmsprop" (torch defaults otherwise).
        init_std: spread of the restarts around the warm-start mean.
        seed, device: as for :class:`~lewm_agent.planning.CEM`.
    """

    name = "gradient"
    needs_grad = True

    def __init__(
        self,
        iterations: int = 30,
        lr: float = 0.1,
        num_samples: int = 1,
        optimizer: str = "adam",
        init_std: float = 1.0,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        super().__init__(seed, device)
        self.iterations = check_int("iterations", iterations)
        self.lr = check_float("lr", lr)
        self.num_samples = check_int("num_samples", num_samples)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        self.optimizer = optimizer
        self.init_std = check_float("init_std", init_std)

    def _solve(self, cost_fn: CostFn, p: Problem) -> Tensor:
        x = p.init[:, None].repeat(1, self.num_samples, 1, 1)  # [B, R, H, A]
        if self.num_samples > 1:
            x[:, 1:] += self.init_std * p.draw(torch.randn, self.num_samples - 1, p.horizon, p.action_dim)
        x = p.clamp(x).requires_grad_(True)
        opt = OPTIMIZERS[self.optimizer]([x], lr=self.lr)
        for _ in range(self.iterations):
            costs = evaluate(cost_fn, x)
            if not costs.requires_grad:
                raise ValueError(
                    "GradientPlanner needs a differentiable cost_fn: its output has no gradient "
                    "(was the rollout run under torch.no_grad / inference_mode, or detached?)"
                )
            # Rows and restarts are independent, so the sum's gradient is each one's own gradient.
            (x.grad,) = torch.autograd.grad(costs.sum(), x)
            opt.step()
            with torch.no_grad():
                x.copy_(p.clamp(x))
        with torch.no_grad():
            best = evaluate(cost_fn, x).nan_to_num(nan=float("inf")).argmin(dim=1)
            return x[torch.arange(p.batch_size, device=p.device), best].detach()
