"""Behaviour policies for data collection.

A :class:`Policy` acts in one env: the collector calls ``policy.reset(seed)`` at the start of every
episode and ``policy(obs)`` with that env's observation dict at every step. Reseeding per episode makes
an episode's actions depend only on its seed, so an interrupted collection resumes to exactly the data
an uninterrupted one would have written. :func:`make_policy` builds one from a name:

* ``"random"``: uniform samples of the action space;
* ``"expert"`` / ``"expert:NOISE"``: the env's scripted expert from :mod:`lewm_envs.experts`;
* ``"sb3:PATH.zip"`` / ``"sb3:ALGO:PATH.zip"``: a saved Stable-Baselines3 model, sampling its actions;
* any callable ``obs -> action`` (its ``reset()`` is called at episode starts if it has one).
"""

from __future__ import annotations

import copy
import importlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

POLICY_NAMES = (
    "random",
    "expert",
    "expert:NOISE",
    "sb3:PATH.zip",
    "sb3:ALGO:PATH.zip",
    "a callable obs -> action",
)


class Policy:
    """Acts in one env. Subclasses implement :meth:`__call__` and, if they keep state, :meth:`reset`."""

    def reset(self, seed: int) -> None:
        """Start an episode; everything random in the episode derives from ``seed``."""

    def __call__(self, obs: dict[str, np.ndarray]) -> Any:
        """One env's observation dict -> one action (array for Box, int for Discrete)."""
        raise NotImplementedError

    def clone(self) -> Policy:
        """A copy for another env slot: shares loaded models, not per-episode state."""
        return copy.copy(self)


class RandomPolicy(Policy):
    """Samples the action space (uniform in a bounded Box, uniform choice in a Discrete)."""

    def __init__(self, action_space: gym.Space) -> None:
        self.action_space = action_space
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._space = copy.deepcopy(self.action_space)  # own RNG, so clones do not share one
        self._space.seed(int(seed))

    def __call__(self, obs: dict[str, np.ndarray]) -> Any:
        return self._space.sample()


class ExpertPolicy(Policy):
    """The scripted expert of a ``lewm_envs`` env, rebuilt with the episode's seed at each reset.
    ``env_kwargs`` are the keyword arguments the env was made with (e.g. a MiniGrid ``layout``)."""

    def __init__(self, env_id: str, noise: float | None = None, env_kwargs: dict | None = None) -> None:
        try:
            from lewm_envs.experts import make_expert
        except ImportError as err:
            raise ValueError(
                f"the 'expert' policy needs lewm_envs.experts, which failed to import ({err})"
            ) from err
        self._make = make_expert
        self.env_id = env_id
        self._kwargs = {**(env_kwargs or {}), **({} if noise is None else {"noise": noise})}
        self.reset(0)  # fails now, before any collection, if the env has no expert

    def reset(self, seed: int) -> None:
        self._expert = self._make(self.env_id, seed=int(seed), **self._kwargs)

    def __call__(self, obs: dict[str, np.ndarray]) -> Any:
        return self._expert(obs)


class SB3Policy(Policy):
    """A saved Stable-Baselines3 model, acting with ``predict(obs, deterministic=False)``.

    SB3 samples from torch's global RNG; each step runs under a private seed derived from the episode
    seed and the step number, so episodes stay reproducible however env slots interleave.
    """

    def __init__(self, path: str | Path, algo: str | None = None, observation_space: gym.Space | None = None):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no Stable-Baselines3 model at {path}; pass sb3:PATH.zip with an existing file")
        cls = _sb3_class(algo or _detect_algo(path))
        self.model = cls.load(path, device="cpu")
        self._adapt = _obs_adapter(self.model.observation_space, observation_space)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._seed, self._step = int(seed), 0

    def __call__(self, obs: dict[str, np.ndarray]) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self._seed << 24) + self._step)  # distinct per (episode, step)
            action, _ = self.model.predict(self._adapt(obs), deterministic=False)
        self._step += 1
        return action


class CallablePolicy(Policy):
    """Wraps a user callable ``obs -> action``; clones share it."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], Any]) -> None:
        self.fn = fn

    def reset(self, seed: int) -> None:
        if callable(getattr(self.fn, "reset", None)):
            self.fn.reset()

    def __call__(self, obs: dict[str, np.ndarray]) -> Any:
        return self.fn(obs)


def make_policy(
    spec: str | Callable | Policy,
    env: gym.Env | gym.vector.VectorEnv,
    *,
    env_id: str | None = None,
    noise: float | None = None,
    env_kwargs: dict | None = None,
) -> Policy:
    """Build a behaviour policy for ``env`` (a single or vector env; only its spaces and id are used).

    ``env_id`` (default ``env.spec.id``) names the env for ``"expert"`` and ``env_kwargs`` the keyword
    arguments it was made with, which the expert gets too; ``noise`` overrides the expert's default
    action noise (``"expert:0.3"`` does the same from a string).
    """
    if isinstance(spec, Policy):
        return spec
    vector = isinstance(env, gym.vector.VectorEnv)
    action_space = env.single_action_space if vector else env.action_space
    observation_space = env.single_observation_space if vector else env.observation_space
    if callable(spec):
        return CallablePolicy(spec)
    if not isinstance(spec, str):
        raise TypeError(f"policy must be a name or a callable, got {spec!r}; valid names: {POLICY_NAMES}")
    if spec == "random":
        return RandomPolicy(action_space)
    if spec == "expert" or spec.startswith("expert:"):
        env_id = env_id or getattr(env.spec, "id", None)
        if not env_id:
            raise ValueError("the 'expert' policy needs a registered env id (pass env_id=...)")
        if spec != "expert":
            try:
                noise = float(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(
                    f"bad policy {spec!r}: use expert:NOISE with a number, e.g. expert:0.2"
                ) from None
        return ExpertPolicy(env_id, noise, env_kwargs)
    if spec.startswith("sb3:"):
        parts = spec.split(":", 2)
        # "sb3:PPO:model.zip" names the algorithm; "sb3:model.zip" detects it from the zip
        if len(parts) == 3 and parts[1].isidentifier():
            return SB3Policy(parts[2], parts[1], observation_space)
        return SB3Policy(spec[4:], None, observation_space)
    raise ValueError(f"unknown policy {spec!r}; valid: {', '.join(POLICY_NAMES)}")


def _detect_algo(path: Path) -> str:
    """The algorithm class name of a saved SB3 model, from the policy class recorded in the zip."""
    try:
        data = json.loads(zipfile.ZipFile(path).read("data"))
        module = data["policy_class"]["__module__"]  # e.g. "stable_baselines3.sac.policies"
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip ({err})") from err
    package, algo = module.split(".")[:2]
    if algo == "common":  # PPO and A2C share ActorCriticPolicy
        return "PPO" if "clip_range" in data else "A2C"
    return f"{package}.{algo}"


def _sb3_class(name: str) -> type:
    """SB3 (or sb3-contrib) algorithm class from ``"PPO"``, ``"tqc"`` or ``"sb3_contrib.tqc"``."""
    package, _, algo = name.rpartition(".")
    for module in [package] if package else ["stable_baselines3", "sb3_contrib"]:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for attr in dir(mod):
            if attr.lower() == algo.lower() and isinstance(getattr(mod, attr), type):
                return getattr(mod, attr)
    raise ValueError(
        f"unknown Stable-Baselines3 algorithm {name!r}; name it explicitly, e.g. sb3:PPO:model.zip"
    )


def _obs_adapter(model_space: gym.Space, env_space: gym.Space | None) -> Callable[[dict], Any]:
    """Map our Dict observation to what the model was trained on: the same Dict keys, or one entry."""
    if isinstance(model_space, gym.spaces.Dict):
        keys = list(model_space.spaces)
        return lambda obs: {k: obs[k] for k in keys}
    if isinstance(env_space, gym.spaces.Dict):
        for key in ("state", "proprio", "pixels", *env_space.spaces):
            sub = env_space.spaces.get(key)
            if sub is not None and sub.shape == model_space.shape:
                return lambda obs: obs[key]
        raise ValueError(
            f"the SB3 model observes {model_space}, which matches no entry of the env observation {env_space}"
        )
    return lambda obs: obs
