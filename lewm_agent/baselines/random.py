"""The random-policy floor: uniform actions, behind the same act / reset / predict protocol as the agent."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class RandomPolicy:
    """Samples ``action_space`` uniformly with its own seeded generator."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = action_space
        self.action_space.seed(seed)

    def reset(self, env_indices=None) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        pixels = np.asarray(obs["pixels"])
        if pixels.ndim == 3:
            return self.action_space.sample()
        return np.stack([self.action_space.sample() for _ in range(len(pixels))])

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        return self.act(observation), state
