"""``lewm bench ENV|all``: an env's recipe from data to the results table.

collect the recipe's training data -> collect held-out episodes (other seeds) -> train the recipe's
LeWM, with the recipe's planner made the run's default -> optionally train GCBC on the same data ->
``lewm compare`` LeWM, the random floor, the scripted expert (the ceiling) and any extra agents on the
paper's protocol. Every stage keeps its output in ``OUT/ENV``; running the same command again resumes
where it stopped (collection appends, training resumes, agents already evaluated are kept unless
they changed since, such as a model trained further with ``--steps``).

    OUT/ENV/data/train.h5, data/eval.h5   the episode stores
    OUT/ENV/model/                        the LeWM run folder
    OUT/ENV/gcbc/                         the GCBC run folder (with --gcbc-steps)
    OUT/ENV/compare/                      results.json, results.md, compare.png, videos/
    OUT/ENV/bench.json                    the recipe, data statistics, stage wall times, the results
    OUT/summary.md, summary.json          one row per env benched into OUT
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, dataclass
from pathlib import Path

from lewm_agent.config import Protocol
from lewm_agent.options import option
from lewm_agent.recipes import RECIPES, SIZES, Recipe, get_recipe

EVAL_SEED_OFFSET = 1_000_003  # held-out episodes use seeds no training episode uses


@dataclass
class BenchConfig:
    env: str = option(MISSING, f"recipe ({' | '.join(RECIPES)}), its env id, or all")
    size: str = option("cpu", "cpu: about 15 min of training on two cores; paper: the official setup (GPU)",
                       choices=SIZES)
    out: str = option("runs/bench", "folder of one subfolder per env and the summary table")
    episodes: int | None = option(None, "training episodes (default: the recipe's)")
    steps: int | None = option(None, "optimizer steps (default: the recipe's)")
    gcbc_steps: int = option(0, "also train goal-conditioned behaviour cloning on the same data (0: no)")
    seed: int = option(0, "seed of the training data and of training")
    device: str = option("auto", "auto (cuda, mps, cpu) or a torch device")
    progress: bool = option(True, "show progress bars", cli=False)


def bench_names(env: str) -> list[str]:
    """Recipe names for ``env`` (``all``: every recipe whose env can be made here)."""
    if env != "all":
        get_recipe(env)  # raises naming the recipes
        return [env if env in RECIPES else next(n for n, r in RECIPES.items() if r["cpu"].env_id == env)]
    return [name for name, r in RECIPES.items() if _available(r["cpu"].env_id)]


def _available(env_id: str) -> bool:
    """Whether ``env_id``'s simulator imports (Cube needs the optional ``cube`` extra)."""
    import gymnasium as gym
    import lewm_envs  # noqa: F401

    try:
        gym.make(env_id, image_size=8).close()
    except ImportError:
        return False
    return True


def data_stats(path: Path, frameskip: int, history: int) -> dict:
    """Episode lengths of a store, and how many episodes are too short for one training window."""
    import numpy as np

    from lewm_agent.data.store import EpisodeStore

    with EpisodeStore(path) as store:
        lengths = np.asarray(store.ep_len)
    window = (history + 1) * frameskip
    return {"episodes": int(len(lengths)), "transitions": int(lengths.sum()),
            "length_mean": float(lengths.mean()), "length_median": float(np.median(lengths)),
            "length_p10": float(np.percentile(lengths, 10)), "length_p90": float(np.percentile(lengths, 90)),
            "shorter_than_a_window": int((lengths < window).sum()), "window": window}


def run_bench(name: str, cfg: BenchConfig, extra_agents: tuple[str, ...] = (),
              recipe: Recipe | None = None, protocol: Protocol = Protocol()) -> dict:
    """Bench recipe ``name`` at ``cfg.size`` into ``cfg.out/name``; returns what ``bench.json`` holds.
    ``recipe`` replaces the named one (tests run a shrunken recipe through the same stages)."""
    from lewm_agent.data.collector import collect
    from lewm_agent.evaluation.compare import compare, compare_table
    from lewm_agent.runs import Run, atomic_write
    from lewm_agent.train import train

    recipe = recipe or get_recipe(name, cfg.size)
    changes = {k: v for k, v in (("train_episodes", cfg.episodes), ("steps", cfg.steps)) if v is not None}
    recipe = recipe.with_overrides(**changes)
    out = Path(cfg.out) / name
    data_dir, run_dir, gcbc_dir = out / "data", out / "model", out / "gcbc"
    stages: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(key: str, text: str) -> None:
        stages[key] = time.perf_counter()
        print(f"[{name} {time.perf_counter() - t0:6.0f}s] {text}", flush=True)

    def done(key: str) -> None:
        stages[key] = time.perf_counter() - stages[key]

    kw = dict(image_size=recipe.image_size, max_episode_steps=recipe.max_episode_steps,
              env_kwargs=recipe.env_kwargs, progress=cfg.progress)
    stage("collect_train", f"1/4 collecting {recipe.train_episodes} {recipe.policy} episodes of {recipe.env_id} "
                           f"{recipe.env_kwargs or ''}-> {data_dir / 'train.h5'}")
    train_data = collect(recipe.env_id, recipe.train_episodes, policy=recipe.policy, out=data_dir / "train.h5",
                         seed=cfg.seed, **kw)
    done("collect_train")
    stage("collect_eval", f"2/4 collecting {recipe.eval_episodes} held-out episodes -> {data_dir / 'eval.h5'}")
    eval_data = collect(recipe.env_id, recipe.eval_episodes, policy=recipe.policy, out=data_dir / "eval.h5",
                        seed=cfg.seed + EVAL_SEED_OFFSET, **kw)
    done("collect_eval")
    stage("train", f"3/4 training the '{recipe.preset}' LeWM ({recipe.steps or f'{recipe.epochs} epochs of'} "
                   f"steps) -> {run_dir}")
    train(recipe.train_config(str(train_data), str(run_dir), seed=cfg.seed, device=cfg.device, progress=cfg.progress))
    Run(run_dir).set_defaults(planner=recipe.planner_section(), agent=recipe.agent_settings)
    done("train")
    agents = [f"LeWM={run_dir}", "random", "expert"]
    if cfg.gcbc_steps:
        from lewm_agent.baselines.gcbc import train_gcbc
        from lewm_agent.config import GCBCConfig

        stage("gcbc", f"3b/4 training GCBC for {cfg.gcbc_steps} steps on the same data -> {gcbc_dir}")
        train_gcbc(GCBCConfig(data=str(train_data), out=str(gcbc_dir), preset=recipe.preset, steps=cfg.gcbc_steps,
                              image_size=recipe.image_size, seed=cfg.seed, device=cfg.device, progress=cfg.progress))
        done("gcbc")
        agents.append(f"GCBC={gcbc_dir}")
    agents += list(extra_agents)
    stage("evaluate", f"4/4 comparing {', '.join(a.split('=')[0] for a in agents)} on {protocol.episodes} "
                      "held-out start/goal pairs")
    report = compare(agents, out / "compare", data=eval_data, protocol=protocol, device=cfg.device,
                     progress=cfg.progress, env_kwargs=recipe.env_kwargs)
    done("evaluate")
    print(compare_table(report))
    bench = {
        "recipe": name, "size": cfg.size, "settings": recipe.to_dict(), "seed": cfg.seed,
        "train_data": data_stats(train_data, recipe.frameskip, recipe.history),
        "eval_data": data_stats(eval_data, recipe.frameskip, recipe.history),
        "stage_seconds": stages,  # this invocation's: a resumed stage counts only what was left
        "results": {label: {k: r.get(k) for k in ("kind", "success_rate", "successes", "episodes", "ci95",
                                                  "decision_ms_per_step", "train_seconds", "offline_transitions")}
                    for label, r in report["agents"].items()},
        "protocol": report["protocol"],
    }
    text = json.dumps(bench, indent=2) + "\n"
    atomic_write(out / "bench.json", text.encode())
    return json.loads(text)  # as a later reader of bench.json sees it


def summary_table(benches: dict[str, dict]) -> str:
    """One row per env: LeWM with its interval, the random floor, the expert and the other agents."""
    lines = [
        "Paper protocol on held-out episodes (goal 25 steps ahead, 50-step budget, seed 42); success over the "
        "episodes with its 95% Wilson interval.",
        "",
        "| env | size | LeWM | 95% CI | random | expert | other agents | LeWM training | plan ms / env step "
        "| train episodes (mean length) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in benches.items():
        r = b["results"]
        lewm = r["LeWM"]
        others = ", ".join(f"{k} {v['success_rate']:.0f}%" for k, v in r.items()
                           if k not in ("LeWM", "random", "expert")) or "-"
        train_min = (lewm.get("train_seconds") or 0) / 60
        data = b["train_data"]
        lines.append(
            f"| {name} | {b['size']} | **{lewm['success_rate']:.0f}%** ({lewm['successes']}/{lewm['episodes']}) "
            f"| {lewm['ci95'][0]:.0f}-{lewm['ci95'][1]:.0f}% | {r['random']['success_rate']:.0f}% "
            f"| {r['expert']['success_rate']:.0f}% | {others} | {train_min:.1f} min "
            f"| {lewm['decision_ms_per_step']:.1f} | {data['episodes']:,} ({data['length_mean']:.0f} steps) |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path) -> dict[str, dict]:
    """``summary.md`` / ``summary.json`` over every ``bench.json`` in ``out``."""
    from lewm_agent.runs import atomic_write

    benches = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/bench.json"))}
    if benches:
        atomic_write(out / "summary.json", (json.dumps(benches, indent=2) + "\n").encode())
        atomic_write(out / "summary.md", summary_table(benches).encode())
    return benches


def bench(cfg: BenchConfig, extra_agents: tuple[str, ...] = ()) -> dict[str, dict]:
    """Bench every env ``cfg.env`` names, then write the summary over all envs in ``cfg.out``."""
    names = bench_names(cfg.env)
    if extra_agents and len(names) > 1:
        raise ValueError("extra agents (--agent) belong to one env: bench one env when adding them")
    for name in names:
        run_bench(name, cfg, extra_agents)
    benches = write_summary(Path(cfg.out))
    print(summary_table({n: benches[n] for n in names}))
    print(f"summary of every env in {cfg.out}: summary.md, summary.json")
    return benches


__all__ = ["BenchConfig", "bench", "bench_names", "data_stats", "run_bench", "summary_table", "write_summary"]
