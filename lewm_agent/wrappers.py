"""Gymnasium wrappers that give any env with an ``rgb_array`` renderer the lewm observation contract.

    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    env = PixelGoalWrapper(env, image_size=64, goal_fn=upright_image,
                           success_fn=lambda env, obs, info: obs[0] > 0.95)
    obs, info = env.reset(seed=0)        # obs: {"pixels", "goal", "state"}; info["is_success"]

* :class:`SuccessWrapper` reports ``info["is_success"]`` from a predicate and terminates on success.
* :class:`PixelGoalWrapper` turns observations into ``{"pixels", "goal"[, "state"]}``: ``pixels`` is
  ``env.render()`` resized with :func:`lewm_agent.images.resize_images` (the same resize as training),
  ``goal`` comes from ``reset(options={"goal_image": img})`` or from ``goal_fn(env)``, and a flat Box
  observation is kept as float32 ``state``. Both compose with Gymnasium's own wrappers.
* :class:`ObservationKeys` keeps some entries of a Dict observation (e.g. ``pixels`` and ``goal``, so a
  model-free baseline sees what LeWM sees and no state).
* :class:`DenseGoalReward` replaces a ``lewm_envs`` env's sparse reward (1 on success) with a dense one.
* :class:`SurpriseWrapper` adds ``info["surprise"]``, a trained LeWM's prediction error on each new
  frame, so implausible events can be flagged while acting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lewm_agent.images import resize_images

SuccessFn = Callable[[gym.Env, Any, dict], bool]
# A goal image, or (goal image, goal state) to also report the goal in info["goal_state"].
GoalFn = Callable[[gym.Env], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


class SuccessWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Sets ``info["is_success"] = success_fn(env, obs, info)`` on reset and every step, and ends
    the episode (``terminated=True``) when it is true.

    ``env`` is the wrapped env and ``obs`` / ``info`` are its own observation and info.
    """

    def __init__(self, env: gym.Env, success_fn: SuccessFn) -> None:
        if not callable(success_fn):
            raise TypeError(f"success_fn must be callable (env, obs, info) -> bool, got {success_fn!r}")
        gym.utils.RecordConstructorArgs.__init__(self, success_fn=success_fn)
        super().__init__(env)
        self.success_fn = success_fn

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        info["is_success"] = bool(self.success_fn(self.env, obs, info))
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = bool(self.success_fn(self.env, obs, info))
        info["is_success"] = success
        return obs, reward, terminated or success, truncated, info


class ObservationKeys(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Keeps only ``keys`` of a Dict observation (in that order)."""

    def __init__(self, env: gym.Env, keys: tuple[str, ...] = ("pixels", "goal")) -> None:
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or any(k not in space.spaces for k in keys):
            have = list(space.spaces) if isinstance(space, spaces.Dict) else space
            raise ValueError(f"ObservationKeys needs a Dict observation with keys {list(keys)}; the env has {have}")
        gym.utils.RecordConstructorArgs.__init__(self, keys=tuple(keys))
        super().__init__(env)
        self.keys = tuple(keys)
        self.observation_space = spaces.Dict({k: space.spaces[k] for k in self.keys})

    def observation(self, observation: dict) -> dict:
        return {k: observation[k] for k in self.keys}


class DenseGoalReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Reward ``success - distance / scale`` for a ``lewm_envs`` env: the distance between the goal
    the current state achieves (``env.achieved_goal``) and the episode's goal, divided by the extent of
    the goal's range in the observation space (so it lies in [0, 1]), plus the env's own 1 on success.
    Every step away from the goal costs, and the episode ends on success, so reaching it sooner pays
    more. Angles in a goal (PushT's block) count by their raw difference."""

    def __init__(self, env: gym.Env) -> None:
        base = env.unwrapped
        if not hasattr(base, "achieved_goal") or not hasattr(base, "state_dim"):
            raise ValueError(f"DenseGoalReward needs a lewm_envs env (with achieved_goal and state_dim), got {base}")
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        state = base.observation_space["state"]
        low, high = state.low[base.state_dim :], state.high[base.state_dim :]
        self.scale = float(np.linalg.norm(high.astype(np.float64) - low)) or 1.0

    def distance(self, state: np.ndarray) -> float:
        """Scaled distance of an observation ``state`` (start layout + goal) from its goal."""
        base = self.env.unwrapped
        achieved = base.achieved_goal(np.asarray(state[: base.state_dim], dtype=np.float64))
        return float(np.linalg.norm(achieved - state[base.state_dim :])) / self.scale

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) - self.distance(obs["state"]), terminated, truncated, info


def _to_hwc(image: Any, size: int, name: str) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` image resized to ``[size, size, 3]`` (ValueError naming ``name``)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must be a uint8 RGB image shaped [H, W, 3], got {arr.dtype} {arr.shape}")
    return resize_images(arr, size).permute(1, 2, 0).numpy()


class PixelGoalWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observation ``{"pixels", "goal"[, "state"]}`` for any env with ``render_mode="rgb_array"``.

    Args:
        env: the env; it must have been made with ``render_mode="rgb_array"``.
        image_size: side of the square ``pixels`` / ``goal`` images (uint8 ``[S, S, 3]``).
        goal_fn: ``goal_fn(env) -> image`` (or ``(image, goal_state)``), called after every reset
            that gets no ``options["goal_image"]``; it may pose the env to render the goal, as long
            as it puts the env back.
        success_fn: ``success_fn(env, obs, info) -> bool`` on the env's own observation; success
            terminates the episode. Without it ``info["is_success"]`` is the env's own value (or
            False).

    ``reset(options={"goal_image": img, "goal_state": g})`` sets this episode's goal image (any
    size, uint8 HWC) and, optionally, the ``info["goal_state"]`` to report; other options go to the
    env. A flat ``Box`` observation of the env is kept under ``"state"`` (float32); other observation
    spaces are dropped.
    """

    def __init__(
        self,
        env: gym.Env,
        image_size: int = 64,
        goal_fn: GoalFn | None = None,
        success_fn: SuccessFn | None = None,
    ) -> None:
        if env.render_mode != "rgb_array":
            name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
            raise ValueError(
                f"PixelGoalWrapper reads pixels from env.render(), so the env must be made with "
                f"render_mode='rgb_array' (e.g. gym.make({name!r}, render_mode='rgb_array')); "
                f"got render_mode={env.render_mode!r}"
            )
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int (pixels per side), got {image_size!r}")
        if goal_fn is not None and not callable(goal_fn):
            raise TypeError(f"goal_fn must be callable env -> image, got {goal_fn!r}")
        # Recorded so that env.spec can rebuild the wrapped env (gymnasium's env checker does).
        gym.utils.RecordConstructorArgs.__init__(
            self, image_size=image_size, goal_fn=goal_fn, success_fn=success_fn
        )
        super().__init__(SuccessWrapper(env, success_fn) if success_fn is not None else env)
        self.image_size = int(image_size)
        self.goal_fn = goal_fn
        image = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        obs_spaces = {"pixels": image, "goal": image}
        inner = env.observation_space
        self._keep_state = isinstance(inner, spaces.Box) and len(inner.shape) == 1
        if self._keep_state:
            obs_spaces["state"] = spaces.Box(
                inner.low.astype(np.float32), inner.high.astype(np.float32), dtype=np.float32
            )
        self.observation_space = spaces.Dict(obs_spaces)
        self._goal: np.ndarray | None = None
        self._goal_state: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        options = dict(options or {})
        goal_image, goal_state = options.pop("goal_image", None), options.pop("goal_state", None)
        if goal_image is None and self.goal_fn is None:
            raise ValueError(
                "PixelGoalWrapper needs a goal image: pass reset(options={'goal_image': img}) or give "
                "the wrapper a goal_fn(env) -> image"
            )
        obs, info = self.env.reset(seed=seed, options=options or None)
        if goal_image is None:
            goal = self.goal_fn(self.env)
            goal_image, goal_state = goal if isinstance(goal, tuple) else (goal, goal_state)
            self._goal = _to_hwc(goal_image, self.image_size, "goal_fn's image")
        else:
            self._goal = _to_hwc(goal_image, self.image_size, "options['goal_image']")
        self._goal_state = None if goal_state is None else np.asarray(goal_state, dtype=np.float32)
        return self._observe(obs), self._info(info)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs), reward, terminated, truncated, self._info(info)

    def _observe(self, obs: Any) -> dict:
        frame = self.env.render()
        out = {"pixels": _to_hwc(frame, self.image_size, "env.render()"), "goal": self._goal.copy()}
        if self._keep_state:
            out["state"] = np.asarray(obs, dtype=np.float32).reshape(-1)
        return out

    def _info(self, info: dict) -> dict:
        info["is_success"] = bool(info.get("is_success", False))
        if self._goal_state is not None:
            info["goal_state"] = self._goal_state.copy()
        return info


class SurpriseWrapper(gym.Wrapper):
    """Adds ``info["surprise"]`` on reset and every step: how far the frame just observed is from what
    a trained LeWM predicted from the frames and actions before it (see
    :mod:`lewm_agent.analysis.surprise`; NaN for the first ``frameskip`` steps of an episode).

        env = SurpriseWrapper(gym.make("lewm/TwoRoom-v0"), "runs/demo/model")
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(action)   # info["surprise"]

    ``model`` is a run folder or a loaded ``LeWM`` (then pass its ``codec``). Observations must carry
    ``pixels`` (every lewm env does; other envs after :class:`PixelGoalWrapper`).
    """

    def __init__(self, env: gym.Env, model, codec=None, device: str = "cpu") -> None:
        super().__init__(env)
        from lewm_agent.analysis.surprise import SurpriseTracker

        if codec is None:
            from lewm_agent.runs import Run

            model, codec, _ = Run(model).load(device=device)
        if not isinstance(env.observation_space, spaces.Dict) or "pixels" not in env.observation_space.spaces:
            raise ValueError("SurpriseWrapper needs dict observations with 'pixels'; wrap the env with "
                             "PixelGoalWrapper first")
        self.tracker = SurpriseTracker(model, codec)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["surprise"] = self.tracker.reset(obs["pixels"])
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["surprise"] = self.tracker.step(action, obs["pixels"])
        return obs, reward, terminated, truncated, info
