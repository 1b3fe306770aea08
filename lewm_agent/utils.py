"""Small helpers shared across the package: device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Return ``device``, or for ``"auto"`` the best available one: cuda, then mps, then cpu."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
