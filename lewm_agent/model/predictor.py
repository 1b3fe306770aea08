"""The action-conditioned causal predictor, its action Embedder and the BatchNorm MLP projector.

Layouts follow the official LeWM code (``module.py``): DiT-style AdaLN-zero blocks conditioned per
token on that step's action embedding, causal attention, learned positions, a final LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPProjector(nn.Module):
    """Linear -> BatchNorm1d -> GELU -> Linear over the last dim; any leading shape."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class ActionEmbedder(nn.Module):
    """Action blocks ``[B, T, block * action_dim]`` -> embeddings ``[B, T, dim]``, per time step."""

    def __init__(self, in_dim: int, dim: int, smoothed_dim: int = 10, mlp_ratio: int = 4):
        super().__init__()
        self.smooth = nn.Conv1d(in_dim, smoothed_dim, kernel_size=1)
        self.mlp = nn.Sequential(nn.Linear(smoothed_dim, mlp_ratio * dim), nn.SiLU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        lead = actions.shape[:-1]
        x = actions.reshape(-1, actions.shape[-2], actions.shape[-1]).transpose(1, 2)
        x = self.smooth(x).transpose(1, 2)
        return self.mlp(x).reshape(*lead, -1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AdaLNBlock(nn.Module):
    """x += gate * Attn(modulate(LN(x))); x += gate * MLP(modulate(LN(x))), modulation from the action.

    The modulation Linear is zero-initialised, so every block starts as the identity (AdaLN-zero).
    ``modulation(c)`` is split out so a planner can compute it once per candidate action.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_dim, dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        return self.adaLN_modulation(c)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
        x = x + gate_a * self.attn(self.norm1(x) * (1 + scale_a) + shift_a)
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)


class Predictor(nn.Module):
    """Causal transformer: embeddings ``[B, T, dim]`` + action embeddings ``[B, T, dim]`` -> ``[B, T, dim]``.

    Output t has seen inputs 0..t only and predicts the embedding of frame t + 1. ``T <= history``.
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, history: int):
        super().__init__()
        self.history = history
        self.pos_embed = nn.Parameter(torch.randn(1, history, dim))
        self.blocks = nn.ModuleList(AdaLNBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def modulations(self, act_emb: torch.Tensor) -> list[torch.Tensor]:
        """Per-block AdaLN modulations ``[..., T, 6 * dim]`` of action embeddings ``[..., T, dim]``."""
        return [block.modulation(act_emb) for block in self.blocks]

    def forward(self, x: torch.Tensor, act_emb: torch.Tensor | None = None, mods: list | None = None) -> torch.Tensor:
        t = x.shape[1]
        if t > self.history:
            raise ValueError(f"predictor context has {t} steps but the model was built for history {self.history}")
        mods = self.modulations(act_emb) if mods is None else mods
        x = x + self.pos_embed[:, :t]
        for block, mod in zip(self.blocks, mods):
            x = block(x, mod)
        return self.norm(x)
