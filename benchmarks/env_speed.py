"""Environment throughput: env steps/s of every ``lewm_envs`` env, and data-collection frames/s.

Steps/s: one process, random actions, rendering included (every observation carries a frame), the
env reset whenever an episode ends; a short warm-up, then ``--seconds`` of timed steps per env.
Collection frames/s: ``lewm_agent.data.collector.collect`` (when that module exists) writing random
episodes to a temporary HDF5 store with 1 and 2 parallel envs, start-up included; each run in a fresh
spawned process, because forked vector-env workers hang once their parent has rendered MuJoCo.
Prints Markdown tables plus the machine's load, since other work on the same cores skews every number.

    python benchmarks/env_speed.py [--envs lewm/TwoRoom-v0 ...] [--image-size 64] [--seconds 3]
                                   [--num-envs 1 2] [--no-collect]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import gymnasium as gym
import lewm_envs

# Episodes per collection run: enough frames (~1-3k) that start-up does not dominate, except Cube.
COLLECT_EPISODES = {
    "lewm/TwoRoom-v0": 30,
    "lewm/PushT-v0": 10,
    "lewm/Reacher-v0": 10,
    "lewm/MiniGrid-MultiRoom-v0": 30,
    "lewm/Cube-v0": 2,
}


def available(env_id: str) -> bool:
    """False for envs whose optional extra is not installed."""
    extra = {"lewm/PushT-v0": "pymunk", "lewm/Cube-v0": "ogbench"}.get(env_id)
    return extra is None or importlib.util.find_spec(extra) is not None


def steps_per_second(env_id: str, image_size: int, seconds: float) -> tuple[float, int]:
    """(env steps/s, steps timed) with random actions, resets included."""
    env = gym.make(env_id, image_size=image_size)
    env.action_space.seed(0)
    env.reset(seed=0)

    def run(duration: float) -> int:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += 1
            if terminated or truncated:
                env.reset()
        return steps

    run(min(0.5, seconds / 4))  # warm-up: caches, first renders
    start = time.perf_counter()
    steps = run(seconds)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate, steps


def collection_frames_per_second(env_id: str, image_size: int, num_envs: int) -> float:
    """Frames/s of ``collect`` writing random episodes of ``env_id`` with ``num_envs`` envs."""
    import h5py

    from lewm_agent.data.collector import collect

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.h5"
        start = time.perf_counter()
        collect(
            env_id,
            episodes=COLLECT_EPISODES.get(env_id, 10),
            policy="random",
            out=out,
            image_size=image_size,
            num_envs=num_envs,
            seed=0,
            progress=False,
        )
        elapsed = time.perf_counter() - start
        with h5py.File(out, "r") as f:
            frames = f["pixels"].shape[0]
    return frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=list(lewm_envs.ENVS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per env")
    parser.add_argument(
        "--num-envs", type=int, nargs="+", default=[1, 2], help="parallel envs for collection"
    )
    parser.add_argument("--no-collect", action="store_true", help="skip the collection table")
    args = parser.parse_args()
    envs = [e for e in args.envs if available(e)]
    skipped = sorted(set(args.envs) - set(envs))

    print(f"CPU cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    if skipped:
        print(f"skipped (optional extra not installed): {', '.join(skipped)}")
    print(f"\n### Env steps/s at {args.image_size} px (1 process, random actions, rendering included)\n")
    print("| env | steps/s | ms/step | steps timed |")
    print("|---|---:|---:|---:|")
    for env_id in envs:
        rate, steps = steps_per_second(env_id, args.image_size, args.seconds)
        print(f"| {env_id} | {rate:,.0f} | {1000 / rate:.2f} | {steps} |", flush=True)

    if args.no_collect or importlib.util.find_spec("lewm_agent.data.collector") is None:
        print("\n(collection table skipped)")
        return
    print(f"\n### Collection frames/s at {args.image_size} px (random policy, start-up included)\n")
    print("| env | episodes | " + " | ".join(f"{n} env{'s' if n > 1 else ''}" for n in args.num_envs) + " |")
    print("|---|---:|" + "---:|" * len(args.num_envs))
    for env_id in envs:
        rates = []
        for n in args.num_envs:
            # A fresh process per run (its workers may start their own vector-env subprocesses).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rates.append(pool.submit(collection_frames_per_second, env_id, args.image_size, n).result())
        cells = " | ".join(f"{r:,.0f}" for r in rates)
        print(f"| {env_id} | {COLLECT_EPISODES.get(env_id, 10)} | {cells} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
