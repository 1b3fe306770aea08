"""Temporal straightness (the paper's Eq. 9): how straight latent trajectories are.

With velocities ``v_t = z_{t+1} - z_t``, ``S = mean over sequences and t of cos(v_t, v_{t+1})``: 1 for
trajectories that move along straight lines at any speed, about 0 for random walks.
"""

from __future__ import annotations

import torch


def straightness_terms(z: torch.Tensor) -> torch.Tensor:
    """Embeddings ``[B, T, D]`` (T >= 3, consecutive model steps) -> the cosines ``[B, T - 2]``."""
    if z.ndim != 3 or z.shape[1] < 3:
        raise ValueError(f"straightness needs embeddings [B, T >= 3, D], got {tuple(z.shape)}")
    v = z[:, 1:] - z[:, :-1]
    return torch.nn.functional.cosine_similarity(v[:, 1:], v[:, :-1], dim=-1, eps=1e-8)


def temporal_straightness(z: torch.Tensor) -> float:
    """Mean cosine between consecutive latent velocities of ``z [B, T, D]``."""
    return float(straightness_terms(z.float()).mean())
