"""A plain ViT encoder (pre-norm, CLS token, learned positions), written here so checkpoints never
depend on a third-party library's parameter names.

With ``image_size=224, patch_size=14, dim=192, depth=12, heads=3, mlp_dim=768`` it has exactly the
5,501,376 parameters of the Hugging Face ViT-Tiny/14 (no pooler) that the official LeWM trains from
scratch, with the same layer layout (LayerNorm eps 1e-12, exact GELU, final LayerNorm).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float = 1e-12):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Images ``[N, 3, S, S]`` (already normalised) -> CLS features ``[N, dim]`` after the final LayerNorm."""

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"encoder dim {dim} is not divisible by its {heads} heads")
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        for p in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"encoder expects {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}: "
                "resize with lewm_agent.images.resize_images first"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
