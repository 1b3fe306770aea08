"""The goal-reaching evaluation protocol of the paper (v3) and the official code.

Dataset mode: draw ``episodes`` (episode, start) rows with ``seed`` from a dataset (held out from
training), restricted to ``start <= ep_len - goal_offset - 1``; place the env in the stored state of
the start row, take the stored frame ``goal_offset`` steps later as the goal image and its state as the
goal; give the policy ``budget`` steps; an episode succeeds if the env's success rule holds at any step
(including the start). Env mode: the env samples start and goal from ``reset(seed=seed + i)``.

Every policy (agent or baseline) is run on the very same episodes; environments run in lockstep so a
planner can batch them.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from lewm_agent.config import Protocol
from lewm_agent.data.store import EpisodeStore
from lewm_agent.images import resize_images


@dataclass
class EpisodeSpec:
    """How to start one evaluation episode."""

    reset_seed: int
    options: dict | None = None
    goal_image: np.ndarray | None = None  # overrides obs["goal"] (the dataset frame)
    source: tuple[int, int] | None = None  # (dataset episode, start step)


def dataset_episodes(store: EpisodeStore, protocol: Protocol, state_column: str = "state") -> list[EpisodeSpec]:
    """Sample the protocol's start/goal pairs from a stored dataset."""
    if state_column not in store.columns:
        raise ValueError(
            f"dataset-driven evaluation needs a '{state_column}' column to place start and goal; "
            f"{store.path} has {sorted(store.columns)}. Use env-sampled goals instead (--mode env)."
        )
    lens = np.asarray(store.ep_len)
    starts_per_ep = np.maximum(lens - protocol.goal_offset, 0)  # valid starts: 0 .. len - offset - 1
    total = int(starts_per_ep.sum())
    if total < protocol.episodes:
        raise ValueError(
            f"the dataset has only {total} start rows at least goal_offset={protocol.goal_offset} steps before an "
            f"episode end, fewer than the {protocol.episodes} evaluation episodes requested"
        )
    rng = np.random.default_rng(protocol.seed)
    picks = np.sort(rng.choice(total, size=protocol.episodes, replace=False))
    bounds = np.cumsum(starts_per_ep)
    specs = []
    for k, row in enumerate(picks):
        ep = int(np.searchsorted(bounds, row, side="right"))
        start = int(row - (bounds[ep - 1] if ep else 0))
        offset = int(store.ep_offset[ep])
        rows = store.read(state_column, [offset + start, offset + start + protocol.goal_offset])
        goal_image = store.read("pixels", [offset + start + protocol.goal_offset])[0]
        specs.append(
            EpisodeSpec(
                reset_seed=protocol.seed + k,
                options={"state": rows[0], "goal_state": rows[1]},
                goal_image=goal_image,
                source=(ep, start),
            )
        )
    return specs


def env_episodes(protocol: Protocol) -> list[EpisodeSpec]:
    """Episodes whose start and goal the env samples from ``reset(seed=protocol.seed + i)``."""
    return [EpisodeSpec(reset_seed=protocol.seed + i) for i in range(protocol.episodes)]


@dataclass
class EpisodeResult:
    success: bool
    steps_to_success: int | None  # env steps taken when success first held (0: at the start)
    source: tuple[int, int] | None


def run_episodes(
    policy,
    make_env,
    specs: list[EpisodeSpec],
    budget: int,
    desc: str = "evaluating",
    record: int = 0,
    progress: bool = True,
) -> tuple[list[EpisodeResult], list[list[np.ndarray]]]:
    """Run ``policy`` (``act(batch_obs)``, ``reset()``) on every episode in lockstep.

    Returns per-episode results and, for the first ``record`` episodes, frames showing the agent's
    view beside its goal.
    """
    envs = [make_env() for _ in specs]
    try:
        obs_list, success, steps = [], [False] * len(specs), [None] * len(specs)
        for i, (env, spec) in enumerate(zip(envs, specs)):
            obs, info = env.reset(seed=spec.reset_seed, options=spec.options)
            if spec.goal_image is not None:
                obs["goal"] = _match(spec.goal_image, obs["pixels"])
            obs_list.append(obs)
            if info.get("is_success", False):
                success[i], steps[i] = True, 0
        videos = [[_side_by_side(obs_list[i])] for i in range(min(record, len(specs)))]
        policy.reset()
        active = [not s for s in success]
        for t in tqdm(range(1, budget + 1), desc=desc, disable=not progress, leave=False):
            if not any(active):
                break
            actions = policy.act(_stack(obs_list))
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                obs, _, terminated, truncated, info = env.step(actions[i])
                if specs[i].goal_image is not None:
                    obs["goal"] = obs_list[i]["goal"]
                obs_list[i] = obs
                if i < len(videos):
                    videos[i].append(_side_by_side(obs))
                if info.get("is_success", False):
                    success[i], steps[i] = True, t
                if terminated or truncated or success[i]:
                    active[i] = False
        results = [EpisodeResult(s, n, spec.source) for s, n, spec in zip(success, steps, specs)]
        return results, videos
    finally:
        for env in envs:
            env.close()


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rate (%) and steps-to-success statistics of one policy's episodes."""
    steps = [r.steps_to_success for r in results if r.success]
    return {
        "success_rate": 100.0 * sum(r.success for r in results) / len(results),
        "successes": int(sum(r.success for r in results)),
        "episodes": len(results),
        "mean_steps_to_success": float(np.mean(steps)) if steps else None,
        "per_episode": [
            {"success": r.success, "steps_to_success": r.steps_to_success, "source": r.source} for r in results
        ],
    }


def timing_stats(seconds: list[float]) -> dict:
    """Mean, median and 95th percentile of planning times (seconds per planner call)."""
    if not seconds:
        return {"calls": 0}
    a = np.asarray(seconds)
    return {
        "calls": int(len(a)),
        "mean_s": float(a.mean()),
        "median_s": float(np.median(a)),
        "p95_s": float(np.percentile(a, 95)),
    }


def _stack(obs_list: list[dict]) -> dict:
    return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}


def _match(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A dataset frame at the env's image size."""
    if image.shape == like.shape:
        return image
    return resize_images(image, like.shape[0]).permute(1, 2, 0).numpy()


def _side_by_side(obs: dict) -> np.ndarray:
    return np.concatenate([obs["pixels"], obs["goal"]], axis=1)


def make_env_factory(env_id: str, image_size: int, **kwargs):
    """A zero-argument factory for ``env_id`` (``lewm/...`` ids are registered on demand)."""
    if env_id.startswith("lewm/"):
        import lewm_envs  # noqa: F401  (registers the ids)

    def make():
        return gym.make(env_id, image_size=image_size, **kwargs)

    return make
