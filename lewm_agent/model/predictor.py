"""The action-conditioned causal predictor, its action Embedder and the BatchNorm MLP projector.

Layouts follow the official LeWM code (``module.py``): DiT-style AdaLN-zero blocks conditioned per
token on that step's action embedding, causal attention, learned positions, a final LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

KV = tuple[torch.Tensor, torch.Tensor]
"""Keys and values of one attention layer, ``[..., positions, heads, dim_head]`` each."""


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
        # A kernel-1 Conv1d is a Linear over the features of each step; applied as one, it keeps the
        # steps contiguous (a transposed Conv1d output sent the MLP through slow batched matmuls).
        x = F.linear(actions, self.smooth.weight.squeeze(-1), self.smooth.bias)
        return self.mlp(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, past: KV | None = None, last_only: bool = False) -> tuple[torch.Tensor, KV]:
        """Causal self-attention over ``x [..., n, dim]``, returning ``(out, (k, v))``.

        ``past``: keys and values ``[..., P, heads, dim_head]`` of P earlier positions (broadcastable to
        x's leading dims); x then holds positions P..P+n-1 and attends to them too. ``last_only``: only
        the newest position's output is computed (``out [..., 1, dim]``). ``(k, v)`` are x's own.
        """
        qkv = self.to_qkv(self.norm(x)).unflatten(-1, (3, self.heads, self.dim_head))  # [..., n, 3, h, d]
        q, k, v = qkv.unbind(-3)  # each [..., n, h, d]
        kv = (k, v)
        if past is not None:
            lead = x.shape[:-2]
            k = torch.cat([past[0].expand(*lead, -1, -1, -1), k], dim=-3)
            v = torch.cat([past[1].expand(*lead, -1, -1, -1), v], dim=-3)
        if last_only:
            q = q[..., -1:, :, :]
        if self.training or k.shape[-3] > SHORT_WINDOW or not x.is_cpu:
            out = _fused_attention(q, k, v, self.dropout if self.training else 0.0)
        else:
            out = _short_attention(q, k, v)
        return self.to_out(out.flatten(-2)), kv


# Up to this many positions, eval-mode attention on a CPU loops over the keys (see _short_attention;
# measured there). GPUs keep the fused kernel, where each extra small op costs a kernel launch.
SHORT_WINDOW = 4


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Causal ``F.scaled_dot_product_attention``; shapes as in :func:`_short_attention`."""
    nq, nk = q.shape[-3], k.shape[-3]
    mask = None
    if 1 < nq < nk:  # query i (position nk - nq + i) sees keys 0..nk - nq + i
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
    out_shape = q.shape
    # [N, h, n, d]: CPU's fused (flash) kernel takes 4-D tensors only.
    q, k, v = (t.reshape(-1, *t.shape[-3:]).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=nq == nk > 1)
    return out.transpose(1, 2).reshape(out_shape)


def _short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention for windows of a few positions: ``q [..., nq, h, d]`` are the last nq
    of the ``nk`` positions in ``k, v [..., nk, h, d]``. Returns ``[..., nq, h, d]``.

    With so few keys, a loop over them (one elementwise product and sum each) beats both the batched
    matmuls and the fused kernel, which are built for long sequences.
    """
    nq, nk = q.shape[-3], k.shape[-3]
    # Keys on dim -3 of the scores, so the softmax runs over a strided dim with contiguous rows.
    scores = torch.stack([(q * k[..., j : j + 1, :, :]).sum(-1) for j in range(nk)], dim=-3)  # [..., nk, nq, h]
    if nq > 1:  # query i (position nk - nq + i) sees keys 0..nk - nq + i
        hidden = torch.ones(nk, nq, dtype=torch.bool, device=q.device).tril(-(nk - nq + 1))
        scores = scores.masked_fill(hidden[:, :, None], float("-inf"))
    probs = (scores * q.shape[-1] ** -0.5).softmax(-3, dtype=torch.float32).to(v.dtype).unsqueeze(-1)
    out = probs[..., 0, :, :, :] * v[..., 0:1, :, :]
    for j in range(1, nk):
        out = torch.addcmul(out, probs[..., j, :, :, :], v[..., j : j + 1, :, :])
    return out


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
        # 1 at the two scale slots, so that modulation() returns 1 + scale, ready to multiply.
        one = torch.zeros(6, dim)
        one[[1, 4]] = 1.0
        self.register_buffer("scale_one", one.flatten(), persistent=False)

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        """``[..., 6 * dim]``: shift, 1 + scale, gate for the attention, then the same for the MLP."""
        silu, linear = self.adaLN_modulation
        return F.linear(silu(c), linear.weight, linear.bias + self.scale_one)  # the +1 rides on the bias

    def forward(
        self, x: torch.Tensor, mod: torch.Tensor, past: KV | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, KV]:
        """``(x', (k, v))``; ``past`` and ``last_only`` as in :meth:`Attention.forward` (with
        ``last_only`` only the newest position goes on: ``x' [..., 1, dim]``)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
        # addcmul(a, b, c) = a + b * c in one pass over memory instead of two.
        attn, kv = self.attn(torch.addcmul(shift_a, self.norm1(x), scale_a), past, last_only)
        if last_only:
            x, gate_a, shift_m, scale_m, gate_m = (t[..., -1:, :] for t in (x, gate_a, shift_m, scale_m, gate_m))
        x = torch.addcmul(x, gate_a, attn)
        return torch.addcmul(x, gate_m, self.mlp(torch.addcmul(shift_m, self.norm2(x), scale_m))), kv


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

    def forward(
        self,
        x: torch.Tensor,
        act_emb: torch.Tensor | None = None,
        mods: list[torch.Tensor] | None = None,
        past: list[KV] | None = None,
        last_only: bool = False,
        return_kv: bool = False,
    ):
        """The predictor over ``x [..., T, dim]`` with action embeddings ``act_emb`` (or their
        precomputed ``mods``, per block).

        For planning: ``past`` holds, per block, the keys and values of P earlier window positions
        (see :meth:`Attention.forward`), and x then holds positions P..P+T-1; ``last_only`` returns
        only the newest position's output ``[..., 1, dim]``; ``return_kv`` also returns x's own keys
        and values per block, to serve as a later call's ``past``.
        """
        p_len = 0 if past is None else past[0][0].shape[-3]
        t = x.shape[-2]
        if p_len + t > self.history:
            raise ValueError(
                f"predictor context has {p_len + t} steps but the model was built for history {self.history}"
            )
        mods = self.modulations(act_emb) if mods is None else mods
        past = past or [None] * len(self.blocks)
        x = x + self.pos_embed[:, p_len : p_len + t]
        kvs = []
        for i, (block, mod, block_past) in enumerate(zip(self.blocks, mods, past)):
            # Only the last block can drop the older positions: earlier ones feed its keys and values.
            x, kv = block(x, mod, block_past, last_only and i == len(self.blocks) - 1)
            kvs.append(kv)
        x = self.norm(x)
        return (x, kvs) if return_kv else x
