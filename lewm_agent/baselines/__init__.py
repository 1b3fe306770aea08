"""Baselines behind the agent protocol (``act``, ``reset``, ``predict``) for side-by-side evaluation.

:class:`PolicyAgent` runs any behaviour policy of :mod:`lewm_agent.data.policies` (``"random"`` for
the random floor, ``"expert"`` for the scripted expert, ``"sb3:PATH.zip"`` for a Stable-Baselines3
model, or a callable) on one observation or a vector-env batch, exactly where the LeWM agent runs.
"""

from __future__ import annotations

import numpy as np

from lewm_agent.agent import Agent
from lewm_agent.data.policies import Policy, make_policy


class PolicyAgent(Agent):
    """One clone of ``policy`` per env slot, reseeded from ``seed`` at every episode start."""

    name = "policy"

    def __init__(self, policy: Policy, seed: int = 0):
        self.policy, self.seed = policy, seed
        self._slots: list[Policy | None] = []
        self._episodes = 0

    @classmethod
    def make(cls, name, env, env_id: str | None = None, seed: int = 0, env_kwargs: dict | None = None) -> "PolicyAgent":
        """``name`` as for :func:`lewm_agent.data.policies.make_policy`, for ``env``'s spaces (an env made
        with ``env_kwargs``, which the scripted expert gets too)."""
        agent = cls(make_policy(name, env, env_id=env_id, env_kwargs=env_kwargs), seed)
        if isinstance(name, str):
            agent.name = name
        return agent

    def describe(self) -> dict:
        # The scripted expert reads the true state (and the goal state) from obs["state"].
        return {**super().describe(), "privileged_state": self.name.startswith("expert")}

    def reset(self, env_indices=None) -> None:
        if env_indices is None:
            self._slots = []
            return
        for i in np.atleast_1d(env_indices):
            if i < len(self._slots):
                self._slots[i] = None

    def act(self, obs: dict):
        pixels = np.asarray(obs["pixels"])
        if pixels.ndim == 3:
            return self._slot(0)(obs)
        return np.stack([self._slot(i)({k: v[i] for k, v in obs.items()}) for i in range(len(pixels))])

    def _slot(self, i: int) -> Policy:
        self._slots += [None] * (i + 1 - len(self._slots))
        if self._slots[i] is None:
            policy = self.policy.clone()
            policy.reset(hash((self.seed, self._episodes)) & 0x7FFFFFFF)
            self._episodes += 1
            self._slots[i] = policy
        return self._slots[i]


__all__ = ["PolicyAgent"]  # the trained baselines: lewm_agent.baselines.sb3 and lewm_agent.baselines.gcbc
