"""Baselines behind the agent protocol (``act``, ``reset``, ``predict``) for side-by-side evaluation."""

from .random import RandomPolicy

__all__ = ["RandomPolicy"]
