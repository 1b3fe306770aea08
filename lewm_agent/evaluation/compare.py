"""``lewm compare``: any set of agents on exactly the same start/goal pairs of one protocol.

Agents are named by strings (optionally ``LABEL=SPEC``):

* ``random``, ``expert``, ``expert:NOISE``: the behaviour policies (random floor, scripted ceiling);
* a LeWM run folder (``lewm train`` / ``lewm import``), or ``lewm:RUN``;
* a GCBC run folder (``lewm gcbc``), or ``gcbc:RUN``;
* a Stable-Baselines3 zip (``lewm baseline``, or any SB3 model of these observations), or ``sb3:PATH.zip``.

Every agent is loaded and checked against the env before any episode runs, then run through
:func:`lewm_agent.evaluation.protocol.run_episodes` on the same episodes, reading it only through the
:class:`lewm_agent.agent.Agent` protocol. The output folder gets ``results.json`` (per agent, per
episode; rewritten after each agent), ``results.md``, ``compare.png`` and ``videos/episode_NN.mp4``
(the agents side by side, in table order, then the goal). Running it again with the same protocol
evaluates only the agents not yet in ``results.json`` and those whose ``describe()`` changed since
(trained further, another planner).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from lewm_agent.agent import Agent
from lewm_agent.config import Protocol
from lewm_agent.runs import Run, atomic_write

from .protocol import dataset_episodes, env_episodes, make_env_factory, run_episodes, summarize
from .report import _jsonable, protocol_line, write_video

POLICIES = ("random", "expert")
AGENT_FORMS = "random, expert, expert:NOISE, a LeWM run folder, a GCBC run folder or an SB3 .zip (optionally LABEL=SPEC)"


def parse_agent(text: str) -> tuple[str, str, str]:
    """``(label, kind, target)`` of an agent string; ValueError naming the forms for anything else."""
    label, sep, spec = text.partition("=")
    if not sep:
        label, spec = "", text
    kind, _, rest = spec.partition(":")
    if spec in POLICIES or kind == "expert":
        kind, target = "policy", spec
    elif kind in ("lewm", "gcbc", "sb3") and rest:
        target = rest
    elif spec.endswith(".zip"):
        kind, target = "sb3", spec
    elif (Path(spec) / Run.CONFIG).is_file():
        target = spec
        kind = "gcbc" if json.loads((Path(spec) / Run.CONFIG).read_text()).get("kind") == "gcbc" else "lewm"
    else:
        raise ValueError(f"unknown agent {text!r}: use {AGENT_FORMS}")
    if kind != "policy" and not Path(target).exists():
        raise ValueError(f"agent {text!r}: {target} does not exist")
    if not label:
        path = Path(target)
        label = {"policy": target, "sb3": path.parent.name if path.stem == "model" else path.stem}.get(kind, path.name)
    return label, kind, target


def agent_env(kind: str, target: str) -> str | None:
    """The env id an agent was trained on, as its files record it (None if they do not)."""
    if kind == "lewm":
        return Run(target).read_config().get("data", {}).get("env_id")
    if kind == "gcbc":
        from lewm_agent.baselines.gcbc import read_gcbc_config

        return read_gcbc_config(target).get("env_id")
    if kind == "sb3":
        from lewm_agent.baselines.sb3 import read_record

        return ((read_record(Path(target).parent) or {}).get("settings") or {}).get("env_id")
    return None


def load_agent(kind: str, target: str, env, env_id: str, seed: int, device: str = "auto",
               planner: str | None = None, env_kwargs: dict | None = None) -> Agent:
    """The agent ``target`` for ``env`` (a made env, with ``env_kwargs``: only its spaces are read)."""
    trained_on = agent_env(kind, target)
    if trained_on and trained_on != env_id:
        raise ValueError(f"agent {target} was trained on {trained_on}, not {env_id}: compare agents of one env")
    if kind == "lewm":
        from lewm_agent.agent import LeWMAgent

        agent = LeWMAgent.load(target, device=device, planner=planner)
        agent.seed(seed)
        return agent
    if kind == "gcbc":
        from lewm_agent.baselines.gcbc import GCBCAgent

        agent = GCBCAgent(target, device=device)
        if agent.action_space != env.action_space:
            raise ValueError(f"GCBC run {target} acts in {agent.action_space}, the env in {env.action_space}")
        return agent
    if kind == "sb3":
        from lewm_agent.baselines.sb3 import SB3Agent

        return SB3Agent(target, env.observation_space, env.action_space)
    from lewm_agent.baselines import PolicyAgent

    return PolicyAgent.make(target, env, env_id=env_id, seed=seed, env_kwargs=env_kwargs)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


class _Timed(Agent):
    """Times an agent's ``act`` calls (per env step: seconds of a call over the envs it acted for)."""

    def __init__(self, agent: Agent):
        self.agent, self.seconds, self.env_steps = agent, 0.0, 0

    def reset(self, env_indices=None) -> None:
        self.agent.reset(env_indices)

    def act(self, obs: dict):
        start = time.perf_counter()
        actions = self.agent.act(obs)
        self.seconds += time.perf_counter() - start
        self.env_steps += len(np.asarray(obs["pixels"]))
        return actions


def compare(
    agents: list[str],
    out: str | Path,
    data: str | Path | None = None,
    env_id: str | None = None,
    protocol: Protocol = Protocol(),
    device: str = "auto",
    planner: str | None = None,
    videos: int = 3,
    progress: bool = True,
    env_kwargs: dict | None = None,
) -> dict:
    """Evaluate ``agents`` (strings, see the module docstring) on the same episodes; returns the report
    written to ``out/results.json``. ``data``: a held-out episode store (the paper's dataset protocol);
    without it the env samples starts and goals. ``env_id``: default, the env the agents were trained on.
    ``env_kwargs``: of ``gym.make`` (default: those the held-out data was collected with)."""
    from lewm_agent.data.store import EpisodeStore

    parsed = [parse_agent(a) for a in agents]
    labels = [p[0] for p in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two agents share a label in {labels}: name them with LABEL=SPEC")
    envs = {e for e in (agent_env(k, t) for _, k, t in parsed) if e}
    if env_id is None and not envs and data is not None:
        with EpisodeStore(data) as store:
            envs = {store.env_id} if store.env_id else set()
    if env_id is None:
        if len(envs) != 1:
            raise ValueError(f"the agents were trained on {sorted(envs) or 'no recorded env'}: pass the env id (--env)")
        env_id = envs.pop()
    if data is not None:
        with EpisodeStore(data) as store:
            if store.env_id and store.env_id != env_id:
                raise ValueError(f"{data} holds episodes of {store.env_id}, not {env_id}: pass held-out data of {env_id}")
            specs, mode = dataset_episodes(store, protocol), "dataset"
            digest = store.digest()
            image_size = int(store.read("pixels", 0).shape[0])
            env_kwargs = store.env_kwargs if env_kwargs is None else env_kwargs
    else:
        specs, mode, digest = env_episodes(protocol), "env-sampled", None
        image_size = 64
    env_kwargs = env_kwargs or {}
    out = Path(out)
    header = {"env_id": env_id, "env_kwargs": env_kwargs, "mode": mode, "data": str(Path(data).resolve()) if data else None,
              "data_digest": digest, "image_size": image_size, "protocol": protocol.to_dict(), "episodes": [s.source for s in specs]}
    report = _previous(out / "results.json", header)
    make_env = make_env_factory(env_id, image_size, **env_kwargs)
    probe_env = make_env()
    try:  # every agent loads and fits the env before any episode runs
        loaded = {label: load_agent(kind, target, probe_env, env_id, protocol.seed, device, planner, env_kwargs)
                  for label, kind, target in parsed}
    finally:
        probe_env.close()
    out.mkdir(parents=True, exist_ok=True)
    for label, kind, target in parsed:
        if _unchanged(report["agents"].get(label), target, loaded[label].describe()):
            continue  # evaluated here already, as it is now
        if label in report["agents"]:
            moved = report["agents"][label].get("spec") != target
            why = f"it is now {target}, not {report['agents'][label].get('spec')}" if moved else \
                "trained further, or another planner or model"
            print(f"{label} changed since {out / 'results.json'} evaluated it ({why}): evaluating it again", flush=True)
        timed = _Timed(loaded[label])
        results, frames = run_episodes(timed, make_env, specs, protocol.budget, desc=f"compare {label}",
                                       record=videos, progress=progress)
        summary = summarize(results)
        summary["ci95"] = wilson_interval(summary["successes"], summary["episodes"])
        summary["decision_ms_per_step"] = 1000 * timed.seconds / max(1, timed.env_steps)
        report["agents"][label] = {"spec": target, "kind": kind, **loaded[label].describe(), **summary}
        if frames:
            np.savez_compressed(out / f"frames_{label}.npz", *[np.stack(f) for f in frames])
        _save(out / "results.json", report)  # after each agent: an interruption keeps the finished ones
    report["agents"] = {label: report["agents"][label] for label in labels}  # table in the order asked
    _save(out / "results.json", report)
    (out / "results.md").write_text(compare_table(report))
    write_compare_plot(out / "compare.png", report)
    report["videos"] = _side_by_side_videos(out, labels, videos)
    return report


def _save(path: Path, report: dict) -> None:
    atomic_write(path, (json.dumps(report, indent=2, default=_jsonable) + "\n").encode())


def _previous(path: Path, header: dict) -> dict:
    """The report already in ``path`` when it was made on the same protocol and episodes, else a new one."""
    if not path.is_file():
        return {**header, "agents": {}}
    previous = json.loads(path.read_text())
    same = _as_stored(header)
    # The data are the same episodes when their digests agree, wherever the file lies now (a moved
    # folder); reports written before digests were stored can only compare paths.
    same.pop("data" if "data_digest" in previous else "data_digest")
    differ = [k for k in same if previous.get(k) != same[k]]
    if differ:
        was = "" if differ != ["data"] else f" (it evaluated {previous.get('data')}, written before data digests)"
        raise ValueError(f"{path.parent} holds a comparison on another env, protocol or data: its {', '.join(differ)} "
                         f"differ{was}; use another --out (or the same settings to add agents to it)")
    previous.setdefault("agents", {})
    return {**previous, **header}  # the data's path as it is now


def _unchanged(previous: dict | None, spec: str, description: dict) -> bool:
    """Whether a stored result is of this very agent: the same spec and the same ``describe()`` (a
    retrained run has other training seconds, another planner another repr)."""
    if previous is None or previous.get("spec") != spec:
        return False
    return all(previous.get(k) == v for k, v in _as_stored(description).items())


def _as_stored(value):
    """``value`` as ``results.json`` holds it (tuples as lists, arrays as lists, ...), for comparisons."""
    return json.loads(json.dumps(value, default=_jsonable))


def _cell(value, fmt: str = "{}", none: str = "-") -> str:
    return none if value is None or value == "" else fmt.format(value)


def compare_table(report: dict) -> str:
    lines = [
        protocol_line(report)[:-1] + "; 95% Wilson intervals.",
        "",
        "| agent | kind | success | 95% CI | mean steps to success | decision ms / step | offline transitions "
        "| env steps | training time | reward | privileged state |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in report["agents"].items():
        low, high = r["ci95"]
        train = r.get("train_seconds")
        reward = r.get("uses_reward")
        lines.append(
            f"| {label} | {r['kind']} | {r['success_rate']:.0f}% "
            f"({r['successes']}/{r['episodes']}) | {low:.0f}-{high:.0f}% | {_cell(r['mean_steps_to_success'], '{:.1f}')} "
            f"| {r['decision_ms_per_step']:.2f} | {_cell(r.get('offline_transitions'), '{:,}')} "
            f"| {_cell(r.get('env_steps'), '{:,}')} | {_cell(train and train / 60, '{:.1f} min')} "
            f"| {reward if isinstance(reward, str) else ('yes' if reward else 'no')} "
            f"| {'yes' if r.get('privileged_state') else 'no'} |")
    lines += ["", "Videos (`videos/`): the agents side by side in this order, then the goal."]
    return "\n".join(lines) + "\n"


def write_compare_plot(path: Path, report: dict) -> Path:
    """Success with 95% intervals per agent, and success against training wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["agents"])
    rows = [report["agents"][n] for n in names]
    rates = np.array([r["success_rate"] for r in rows])
    ci = np.array([r["ci95"] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    errors = np.maximum(0, [rates - ci[:, 0], ci[:, 1] - rates])  # rounding can put a bound a hair past the rate
    a.bar(names, rates, yerr=errors, capsize=4, color="tab:blue")
    a.set_ylim(0, 105)
    a.set_ylabel("success rate (%)")
    a.set_title(f"{report['env_id']}, {report['protocol']['episodes']} episodes")
    a.tick_params(axis="x", rotation=30)
    for name, r, rate in zip(names, rows, rates):
        if r.get("train_seconds"):
            b.scatter(r["train_seconds"] / 60, rate)
            b.annotate(name, (r["train_seconds"] / 60, rate), textcoords="offset points", xytext=(4, 4), fontsize=8)
    b.set_xlabel("training wall time (min)")
    b.set_ylabel("success rate (%)")
    b.set_ylim(0, 105)
    b.set_title("success against training time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _side_by_side_videos(out: Path, labels: list[str], count: int) -> list[str]:
    """``videos/episode_NN``: each agent's view of episode NN side by side, then the goal."""
    recorded = {}
    for label in labels:
        path = out / f"frames_{label}.npz"
        if path.is_file():
            with np.load(path) as f:
                recorded[label] = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    if not recorded:
        return []
    (out / "videos").mkdir(exist_ok=True)
    written = []
    for i in range(min(count, min(len(v) for v in recorded.values()))):
        clips = [recorded[label][i] for label in recorded]  # [T, S, 2S, 3]: view | goal
        width = clips[0].shape[2] // 2
        length = max(len(c) for c in clips)
        frames = []
        for t in range(length):
            views = [c[min(t, len(c) - 1), :, :width] for c in clips]
            frames.append(np.concatenate(views + [clips[0][0, :, width:]], axis=1))
        written.append(str(write_video(out / "videos" / f"episode_{i:02d}", frames)))
    return written


__all__ = ["compare", "compare_table", "load_agent", "parse_agent", "wilson_interval", "write_compare_plot"]
