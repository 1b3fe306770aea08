"""SIGReg: the Sketched Isotropic Gaussian Regulariser of LeJEPA / LeWM.

Pushes embeddings toward N(0, I): project them on random unit directions and compare each projection's
empirical characteristic function with exp(-t^2 / 2) (the Epps-Pulley statistic), averaged over
directions. By Cramér-Wold the statistic vanishes only for an isotropic Gaussian.

Defaults are the official code's (17 knots on [0, 3], trapezoid weights folded over [-3, 3], Gaussian
window, 1024 directions redrawn on every call, statistic scaled by the number of samples N).
``variant="paper"`` uses the paper's appendix instead: knots on [0.2, 4] and no N scaling.

Under ``torch.distributed`` the embeddings of every rank are gathered before the statistic (gradients
flow back to each rank's own rows) and rank 0's directions are broadcast, so N processes compute
exactly the single-process value on the concatenated batch. The official code computes it per rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

VARIANTS = {"official": (0.0, 3.0, True), "paper": (0.2, 4.0, False)}


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 1 (the batch of a ``[T, B, D]`` tensor) whose backward sums every rank's
    gradient for this rank's rows, which is what DDP's gradient averaging expects of a loss that each
    rank computes on the global batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.batch = x.shape[1]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[:, ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SIGReg(nn.Module):
    """``forward(z)`` with ``z`` of shape ``[T, N, D]`` (or ``[N, D]``) returns a scalar: the statistic
    computed over the N samples separately for each of the T time steps, averaged over time steps and
    directions."""

    def __init__(self, knots: int = 17, num_proj: int = 1024, variant: str = "official"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown SIGReg variant {variant!r}; choose one of {sorted(VARIANTS)}")
        t_min, t_max, self.scale_by_n = VARIANTS[variant]
        self.num_proj = num_proj
        t = torch.linspace(t_min, t_max, knots)
        dt = (t_max - t_min) / (knots - 1)
        # Trapezoid rule on [t_min, t_max], doubled because the integrand is even in t.
        weights = torch.full((knots,), 2 * dt)
        weights[[0, -1]] = dt
        window = torch.exp(-t.square() / 2)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("phi", window, persistent=False)  # characteristic function of N(0, 1)
        self.register_buffer("weights", weights * window, persistent=False)

    def directions(self, dim: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num_proj`` random unit directions ``[dim, num_proj]``; identical on every rank."""
        a = torch.randn(dim, self.num_proj, generator=generator, device=generator.device if generator else device)
        a = a.to(device)
        if _distributed():
            dist.broadcast(a, src=0)
        return a / a.norm(dim=0)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if z.ndim == 2:
            z = z.unsqueeze(0)
        z = z.float()  # the cos/sin averages are unstable in bf16
        if _distributed():
            z = _GatherWithGrad.apply(z)
        n = z.shape[-2]
        x_t = (z @ self.directions(z.shape[-1], z.device, generator)).unsqueeze(-1) * self.t  # [T, N, M, K]
        err = (x_t.cos().mean(-3) - self.phi).square() + x_t.sin().mean(-3).square()  # [T, M, K]
        statistic = err @ self.weights  # [T, M]
        if self.scale_by_n:
            statistic = statistic * n
        return statistic.mean()
