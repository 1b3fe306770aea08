"""Collect episodes from Gymnasium envs into an HDF5 episode store.

Episodes are numbered globally ``0 .. episodes - 1``; episode ``g`` is reset with a seed derived from
``(seed, g)`` and its policy is reseeded likewise, so its content depends on nothing else: not on
the number of parallel envs, the shard that collects it, or whether the run was interrupted.
Finished episodes are written in index order, so a resumed run appends exactly what the
uninterrupted run would have written next.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from tqdm.auto import tqdm

from lewm_agent.checks import check_int
from lewm_agent.config import CollectConfig
from lewm_agent.data.policies import Policy, make_policy
from lewm_agent.data.store import EpisodeWriter, Schema
from lewm_agent.images import resize_images
from lewm_agent.spaces import ActionSpec

OBS_COLUMNS = ("proprio", "state")  # observation entries recorded when the env has them
INFO_COLUMNS = ("goal_state",)  # info entries recorded when the env reports them


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(env reset seed, policy seed) of global episode ``index``."""
    env_seed, policy_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(env_seed), int(policy_seed)


def shard_episodes(episodes: int, shard: tuple[int, int] | None) -> list[int]:
    """Global indices of the episodes that shard ``(i, n)`` collects: ``i, i + n, ...``."""
    i, n = shard or (0, 1)
    return list(range(i, episodes, n))


def _check_shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (i, n) with 0 <= i < n, got {shard!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard must be a pair (i, n) with 0 <= i < n, got {shard!r}")
    return i, n


class _TimeLimited:
    """Picklable factory (AsyncVectorEnv workers) wrapping a user factory in a TimeLimit."""

    def __init__(self, factory: Callable[[], gym.Env], max_episode_steps: int | None) -> None:
        self.factory, self.max_episode_steps = factory, max_episode_steps

    def __call__(self) -> gym.Env:
        env = self.factory()
        return gym.wrappers.TimeLimit(env, self.max_episode_steps) if self.max_episode_steps else env


class _Make:
    """Picklable ``gym.make`` of a registered env. It carries the parent's spec, not just the id: a
    worker started with ``spawn`` is a fresh interpreter whose registry holds neither the ids the
    parent registered at run time (a test, a notebook) nor the ``lewm/`` ids; ``gym.make(spec)``
    needs no registry and imports the entry point's module itself."""

    def __init__(self, spec: gym.envs.registration.EnvSpec, kwargs: dict[str, Any]) -> None:
        self.spec, self.kwargs = spec, kwargs

    def __call__(self) -> gym.Env:
        return gym.make(self.spec, **self.kwargs)


def _vector_context() -> str | None:
    """``spawn`` once this process has rendered MuJoCo frames: forked workers would inherit its EGL
    context and hang inside Mesa. None (the platform default, fork on Linux) otherwise: faster starts."""
    import sys

    render = sys.modules.get("lewm_envs.mujoco_render")
    return "spawn" if render is not None and render.context_made() else None


def _env_factory(env: str | Callable[[], gym.Env], image_size: int, max_episode_steps: int | None,
                 env_kwargs: dict):
    """``(factory, env_id)`` for a registered id or a user factory; bad ids raise ValueError."""
    if callable(env):
        if env_kwargs:
            raise ValueError(f"env_kwargs {env_kwargs} are for a registered env id; a factory makes its env itself")
        return _TimeLimited(env, max_episode_steps), None
    if not isinstance(env, str):
        raise TypeError(f"env must be a registered env id or a zero-argument factory, got {env!r}")
    try:
        import lewm_envs  # noqa: F401  (registers the lewm/... ids)
    except ImportError:
        pass
    try:
        spec = gym.spec(env)
    except gym.error.Error:
        ids = sorted(k for k in gym.registry if k.startswith("lewm/"))
        raise ValueError(f"unknown env id {env!r}; registered lewm ids: {ids}") from None
    if not (max_episode_steps or spec.max_episode_steps):
        raise ValueError(f"{env} has no registered time limit; pass max_episode_steps")
    kwargs: dict[str, Any] = dict(env_kwargs)
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    if "image_size" in inspect.signature(creator).parameters:
        kwargs["image_size"] = image_size  # render at the stored size instead of resizing afterwards
    return _Make(spec, kwargs), env


def _check_spaces(envs: gym.vector.VectorEnv) -> None:
    space = envs.single_observation_space
    pixels = space.spaces.get("pixels") if isinstance(space, gym.spaces.Dict) else None
    if pixels is None or pixels.dtype != np.uint8 or len(pixels.shape) != 3 or pixels.shape[-1] != 3:
        raise ValueError(
            "collect needs a Dict observation with 'pixels' (uint8 [H, W, 3]), got "
            f"{space}; wrap the env with lewm_agent.wrappers to add pixel and goal observations"
        )
    ActionSpec.from_space(envs.single_action_space)  # raises on unsupported action spaces


class _Episode:
    """Rows of one episode being recorded: observation t and the action taken after it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.rows: dict[str, list[np.ndarray]] = {}

    def add(self, row: dict[str, np.ndarray]) -> None:
        for k, v in row.items():
            self.rows.setdefault(k, []).append(v)

    def columns(self) -> dict[str, np.ndarray]:
        cols = {k: np.stack(v) for k, v in self.rows.items()}
        cols["episode_idx"] = np.full(len(cols["pixels"]), self.index, dtype=np.int64)
        return cols


def collect(
    env: str | Callable[[], gym.Env],
    episodes: int,
    policy: str | Callable | Policy = CollectConfig.policy,
    out: str | os.PathLike = "data.h5",
    image_size: int = CollectConfig.image_size,
    num_envs: int = CollectConfig.num_envs,
    seed: int = CollectConfig.seed,
    shard: tuple[int, int] | None = None,
    max_episode_steps: int | None = CollectConfig.max_episode_steps,
    env_kwargs: dict | None = None,
    progress: bool = True,
) -> Path:
    """Collect ``episodes`` episodes of ``env`` with a behaviour policy into the store ``out``.

    Args:
        env: a registered env id (``lewm/...`` ids are registered by importing ``lewm_envs``) or a
            zero-argument factory returning an env with Dict observations holding ``pixels``.
        episodes: total number of episodes (over all shards).
        policy: see :func:`lewm_agent.data.policies.make_policy`.
        out: the HDF5 file; if it exists, collection resumes after its episodes.
        image_size: side of the stored square frames (envs that take ``image_size`` render at it,
            other frames are resized).
        num_envs: parallel envs (AsyncVectorEnv subprocesses when > 1).
        seed: base seed; episode g uses seeds derived from ``(seed, g)``.
        shard: ``(i, n)`` collects the global episodes ``i, i + n, ...`` into ``out``.
        max_episode_steps: time limit; the env's registered limit if None.
        env_kwargs: keyword arguments of ``gym.make(env, ...)`` (e.g. ``{"goal_room": "other"}``); the
            scripted expert gets them too, and the store records them (``EpisodeStore.env_kwargs``).
        progress: show a tqdm bar.

    Returns the path of the store. Per step it records ``pixels``, ``action`` (NaN on an episode's
    last row), ``proprio``/``state`` when observed, ``goal_state`` when in ``info``, and the global
    ``episode_idx``. Bad arguments, unknown ids and an existing ``out`` of another env or layout raise
    ValueError before anything is written.
    """
    episodes = check_int("episodes", episodes)
    image_size = check_int("image_size", image_size)
    num_envs = check_int("num_envs", num_envs)
    if max_episode_steps is not None:
        max_episode_steps = check_int("max_episode_steps", max_episode_steps)
    check_int("seed", seed, minimum=0)
    todo = shard_episodes(episodes, _check_shard(shard))
    env_kwargs = dict(env_kwargs or {})
    factory, env_id = _env_factory(env, image_size, max_episode_steps, env_kwargs)

    # Autoreset off: each env is reset explicitly with the seed of the episode it starts next.
    if env_kwargs:  # a wrong keyword fails here, in this process, naming itself
        try:
            factory().close()
        except TypeError as err:
            raise ValueError(f"{env_id} does not take env_kwargs {env_kwargs}: {err}") from None
    autoreset = gym.vector.AutoresetMode.DISABLED
    if num_envs == 1:
        envs = gym.vector.SyncVectorEnv([factory], autoreset_mode=autoreset)
    else:
        envs = gym.vector.AsyncVectorEnv([factory] * min(num_envs, len(todo)), autoreset_mode=autoreset,
                                         context=_vector_context())
    try:
        _check_spaces(envs)
        env_id = env_id or getattr(envs.get_attr("spec")[0], "id", None)
        spec = ActionSpec.from_space(envs.single_action_space)
        base_policy = make_policy(policy, envs, env_id=env_id, env_kwargs=env_kwargs)
        with EpisodeWriter(out, "append", action_spec=spec, env_id=env_id, env_kwargs=env_kwargs) as writer:
            remaining = todo[writer.num_episodes :]
            done = len(todo) - len(remaining)
            desc = f"collect {env_id or 'env'}"
            with tqdm(total=len(todo), initial=done, unit="ep", disable=not progress, desc=desc) as bar:
                if remaining:
                    _run(envs, base_policy, writer, remaining, seed, image_size, spec, bar)
    finally:
        envs.close()
    return Path(out)


def _run(
    envs: gym.vector.VectorEnv,
    base_policy: Policy,
    writer: EpisodeWriter,
    todo: list[int],
    seed: int,
    image_size: int,
    spec: ActionSpec,
    bar: tqdm,
) -> None:
    """Step all envs until every episode in ``todo`` is written, in order."""
    n = envs.num_envs
    policies = [base_policy.clone() for _ in range(n)]
    queue = list(reversed(todo))  # next episode to start at the end
    running: list[_Episode | None] = [None] * n  # None: a spare env running a discarded episode
    finished: dict[int, _Episode] = {}
    next_write, frames, t0 = 0, 0, time.perf_counter()

    def start(mask: np.ndarray) -> tuple[dict, dict]:
        """Reset the masked envs, each with the next episode (or, when none is left, a spare one)."""
        seeds: list[int | None] = [None] * n
        for i in np.flatnonzero(mask):
            index = queue.pop() if queue else None
            running[i] = None if index is None else _Episode(index)
            seeds[i], policy_seed = episode_seeds(seed, index) if index is not None else (None, 0)
            policies[i].reset(policy_seed)
        return envs.reset(seed=seeds, options={"reset_mask": mask})

    obs, info = start(np.ones(n, dtype=bool))
    goal = _info_rows(info, None)  # per-env INFO_COLUMNS of the current observation
    checked = False
    while next_write < len(todo):
        pixels = _frames(obs["pixels"], image_size)
        actions = [
            _as_action(policies[i]({k: v[i] for k, v in obs.items()}), envs.single_action_space)
            for i in range(n)
        ]
        rows = [_row(obs, goal, pixels, i, actions[i], spec) for i in range(n)]
        if not checked:
            writer.check_columns(_schema(rows[0]))  # before stepping: an incompatible file fails fast
            checked = True
        for i in range(n):
            if running[i] is not None:
                running[i].add(rows[i])
        obs, _, terminated, truncated, info = envs.step(np.stack(actions))
        frames += n
        goal = _info_rows(info, goal)
        done = terminated | truncated
        if not done.any():
            continue
        pixels = _frames(obs["pixels"], image_size)
        nan_action = np.full(spec.raw_dim, np.nan, dtype=np.float32)
        for i in np.flatnonzero(done):
            if running[i] is not None:
                running[i].add(_row(obs, goal, pixels, i, nan_action, spec))
                finished[running[i].index] = running[i]
        while next_write < len(todo) and todo[next_write] in finished:
            writer.add_episode(finished.pop(todo[next_write]).columns())
            next_write += 1
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - t0):.0f}")
        if next_write < len(todo):
            obs, reset_info = start(done)
            goal = _info_rows(reset_info, goal)


def _frames(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Batched frames ``[n, H, W, 3]`` at ``image_size`` (HWC uint8, as stored)."""
    if pixels.shape[1:3] == (image_size, image_size):
        return pixels
    return resize_images(pixels, image_size).permute(0, 2, 3, 1).numpy()


def _as_action(action: Any, space: gym.Space) -> Any:
    """A policy's action as the env takes it: an int for Discrete, a clipped float32 vector for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(np.asarray(action).reshape(-1)[0])
    a = np.asarray(action, dtype=np.float32)
    if a.size != int(np.prod(space.shape)):
        raise ValueError(f"the policy returned an action of shape {a.shape}; the env expects {space.shape}")
    return np.clip(a.reshape(space.shape), space.low, space.high)


def _info_rows(info: dict, previous: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Per-env values of INFO_COLUMNS, updated where ``info`` has them (its ``_key`` masks)."""
    rows = {k: v.copy() for k, v in (previous or {}).items()}
    for k in INFO_COLUMNS:
        if k in info:
            values, mask = np.asarray(info[k], dtype=np.float32), info[f"_{k}"]
            mask = mask.reshape(-1, *[1] * (values.ndim - 1))
            rows[k] = values if k not in rows else np.where(mask, values, rows[k])
    return rows


def _row(obs: dict, goal: dict, pixels: np.ndarray, i: int, action: Any, spec: ActionSpec) -> dict:
    """Row of env ``i``: its frame, the action taken after it, and the recorded obs / info entries."""
    row = {"pixels": pixels[i], "action": np.asarray(action, dtype=np.float32).reshape(spec.raw_dim)}
    row.update({k: np.asarray(obs[k][i], dtype=np.float32) for k in OBS_COLUMNS if k in obs})
    row.update({k: v[i] for k, v in goal.items()})
    return row


def _schema(row: dict[str, np.ndarray]) -> Schema:
    schema = {k: (np.shape(v), np.asarray(v).dtype) for k, v in row.items()}
    schema["episode_idx"] = ((), np.dtype(np.int64))
    return schema
