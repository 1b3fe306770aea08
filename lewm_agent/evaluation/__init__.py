"""Goal-reaching evaluation: the paper's protocol, with the random floor and planning times reported."""

from __future__ import annotations

from pathlib import Path

from lewm_agent.config import EvalConfig

from .protocol import (
    EpisodeSpec,
    Protocol,
    dataset_episodes,
    env_episodes,
    make_env_factory,
    run_episodes,
    summarize,
    timing_stats,
)
from .report import markdown_table, write_json, write_plot, write_video


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    out: str | Path | None = None,
    protocol: Protocol = Protocol(),
    env_id: str | None = None,
    device: str = EvalConfig.device,
    planner: str | None = None,
    videos: int = EvalConfig.videos,
    progress: bool = True,
    baselines: tuple[str, ...] = ("random",),
    **planner_overrides,
) -> dict:
    """Evaluate the checkpoint in ``run_dir`` and the random floor on the same episodes.

    With ``data`` (an episode store held out from training) the paper's dataset protocol is used;
    without it the env samples starts and goals. Writes ``results.json``, ``results.md``,
    ``plot.png`` and up to ``videos`` episode videos to ``out`` (default ``run_dir/eval``) and returns
    the results dict. ``baselines`` are behaviour-policy names (``random``, ``expert``, ``sb3:PATH.zip``)
    run on the same episodes.
    """
    from lewm_agent.agent import LeWMAgent
    from lewm_agent.baselines import PolicyAgent
    from lewm_agent.data.store import EpisodeStore
    from lewm_agent.runs import Run

    run = Run(run_dir)
    run_dir = run.path
    config = run.read_config()  # fails early, with a clear message, on a missing/bad run folder
    env_id = env_id or config.get("data", {}).get("env_id")
    if not env_id:
        raise ValueError(f"{run_dir} does not record its env id: pass env_id (--env)")
    out = Path(out) if out else run.file(Run.EVAL)
    # The env as the training data made it (e.g. TwoRoom's goal_room), unless held-out data says otherwise.
    env_kwargs = config.get("data", {}).get("env_kwargs") or {}
    if data is not None:
        with EpisodeStore(data) as store:  # closed at once: a later collection may append to it
            specs, mode = dataset_episodes(store, protocol), "dataset"
            image_size = int(store.read("pixels", 0).shape[0])
            env_kwargs = store.env_kwargs
    else:
        specs, mode = env_episodes(protocol), "env-sampled"
        image_size = config["model"]["image_size"]
    agent = LeWMAgent.load(run_dir, device=device, planner=planner, **planner_overrides)
    agent.seed(protocol.seed)
    make_env = make_env_factory(env_id, image_size, **env_kwargs)
    out.mkdir(parents=True, exist_ok=True)

    probe_env = make_env()
    contenders = [("LeWM", agent)] + [
        (name, PolicyAgent.make(name, probe_env, env_id=env_id, seed=protocol.seed, env_kwargs=env_kwargs))
        for name in baselines
    ]
    probe_env.close()
    policies, recordings = {}, {}
    for name, policy in contenders:
        results, frames = run_episodes(
            policy, make_env, specs, protocol.budget, desc=f"eval {name}", record=videos if name == "LeWM" else 0,
            progress=progress,
        )
        policies[name] = summarize(results)
        recordings[name] = frames
    policies["LeWM"]["planning_time"] = timing_stats(agent.plan_times)
    policies["LeWM"]["planner"] = repr(agent.planner)
    policies["LeWM"]["precision"] = agent.precision
    policies["LeWM"]["compiled"] = agent.model.rollout_compiled
    report = {"env_id": env_id, "env_kwargs": env_kwargs, "mode": mode, "run_dir": str(run_dir), "protocol": protocol.to_dict(), "policies": policies}
    write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown_table(report))
    write_plot(out / "plot.png", report, run.metrics())
    report["videos"] = [str(write_video(out / f"episode_{i:02d}", f)) for i, f in enumerate(recordings["LeWM"])]
    return report


__all__ = [
    "EpisodeSpec",
    "Protocol",
    "evaluate",
    "dataset_episodes",
    "env_episodes",
    "make_env_factory",
    "run_episodes",
    "summarize",
    "timing_stats",
    "markdown_table",
    "write_json",
    "write_plot",
    "write_video",
]
