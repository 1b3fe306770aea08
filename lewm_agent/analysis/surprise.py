"""Surprise (violation of expectation): how badly the world model predicted the frame that came.

Surprise at env step t is the mean squared difference between the embedding of frame t and the
predictor's expectation of it from the true past: the frames at t - f, t - 2f, ... (up to ``history``
of them, f = the model's frameskip) and the action blocks executed after each. It is defined from
step f on (NaN before). :func:`surprise_series` computes it for a recorded episode in one batch;
:class:`SurpriseTracker` computes the same numbers online, one step at a time (used by
:class:`lewm_agent.wrappers.SurpriseWrapper`).

:func:`surprise_experiment` is the paper's protocol: paired episodes with the same seed and actions,
one left alone and one perturbed at a mid-episode step (``teleport``: physically implausible;
``color``: only visually different), and a one-sided paired t-test of the perturbed against the
unperturbed surprise at the perturbed frame.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import torch

from lewm_agent.checks import check_int
from lewm_agent.config import SurpriseConfig
from lewm_agent.images import resize_images

PERTURBATIONS = ("teleport", "color")


def _features(codec, actions) -> torch.Tensor:
    """Env actions ``[T, ...]`` (indices for discrete spaces) -> model features ``[T, action_dim]``."""
    raw = np.asarray(actions, dtype=np.float32).reshape(len(actions), codec.spec.raw_dim)
    return codec.encode(raw)


def _context(t: int, frameskip: int, history: int) -> list[int]:
    """The past model steps the prediction of step ``t`` starts from, oldest first."""
    k = min(history, t // frameskip)
    return [t - frameskip * j for j in range(k, 0, -1)]


@torch.no_grad()
def _predict_errors(model, z: torch.Tensor, feats: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Surprise at each step of ``targets`` (all with contexts of the same length)."""
    f, h = model.config.action_block, model.config.history
    contexts = [_context(t, f, h) for t in targets]
    emb = torch.stack([z[c] for c in contexts])  # [N, k, D]
    blocks = torch.stack([torch.stack([feats[s:s + f].reshape(-1) for s in c]) for c in contexts])
    pred = model.predict(emb, blocks.to(emb.device))[:, -1]
    return (pred - z[targets]).square().mean(-1).double().cpu().numpy()


@torch.no_grad()
def surprise_series(model, codec, frames: np.ndarray, actions) -> np.ndarray:
    """Surprise of every step of one episode: ``frames [T + 1, H, W, 3]`` (uint8; frame t is seen
    after actions 0..t-1), ``actions`` ``T`` env actions -> ``[T + 1]`` (NaN before step frameskip)."""
    if len(frames) != len(actions) + 1:
        raise ValueError(f"an episode of {len(actions)} actions has {len(actions) + 1} frames, got {len(frames)}")
    model.eval()
    z = model.encode(resize_images(np.asarray(frames), model.config.image_size)[None])[0]
    feats = _features(codec, actions)
    f, h = model.config.action_block, model.config.history
    out = np.full(len(frames), np.nan)
    steps = np.arange(f, len(frames))
    for k in np.unique(np.minimum(h, steps // f)):
        group = steps[np.minimum(h, steps // f) == k].tolist()
        out[group] = _predict_errors(model, z, feats, group)
    return out


class SurpriseTracker:
    """Online surprise: :meth:`reset` with the first frame, then :meth:`step` with each action and the
    frame it led to; both return the surprise of that frame (NaN while the history is too short)."""

    def __init__(self, model, codec):
        self.model, self.codec = model.eval(), codec
        f, h = model.config.action_block, model.config.history
        self.frameskip, self.history = f, h
        self._z: deque = deque(maxlen=h * f + 1)
        self._a: deque = deque(maxlen=h * f)
        self._t = 0

    @torch.no_grad()
    def _embed(self, frame: np.ndarray) -> torch.Tensor:
        return self.model.encode(resize_images(np.asarray(frame), self.model.config.image_size)[None, None])[0, 0]

    def reset(self, frame: np.ndarray) -> float:
        self._z.clear()
        self._a.clear()
        self._z.append(self._embed(frame))
        self._t = 0
        return float("nan")

    def step(self, action, frame: np.ndarray) -> float:
        if not self._z:
            raise RuntimeError("SurpriseTracker.step before reset")
        self._a.append(_features(self.codec, [action])[0])
        self._z.append(self._embed(frame))
        self._t += 1
        t = self._t
        if t < self.frameskip:
            return float("nan")
        # The buffers start at the same step and hold one frame more than actions; indexed from their
        # start, the newest frame's context is the same as by absolute step (a full buffer spans exactly
        # the history), so the offline computation applies as is.
        return float(_predict_errors(self.model, torch.stack(list(self._z)), torch.stack(list(self._a)),
                                     [len(self._z) - 1])[0])


# -- the paired experiment ----------------------------------------------------------------------------


def _rollout(env, actions_or_policy, seed: int, length: int, perturb: tuple[str, int] | None):
    """Frames and actions of ``length`` steps from ``reset(seed)``; the env keeps running after its
    success rule fires. ``perturb`` = (kind, step): the frame of that step is the perturbed one."""
    obs, _ = env.reset(seed=seed)
    frames, actions = [obs["pixels"]], []
    policy = actions_or_policy if callable(actions_or_policy) else None
    for t in range(length):
        if perturb is not None and t == perturb[1]:
            obs = env.perturb(perturb[0])
            frames[-1] = obs["pixels"]
        action = policy(obs) if policy else actions_or_policy[t]
        obs, *_ = env.step(action)
        frames.append(obs["pixels"])
        actions.append(action)
    if perturb is not None and perturb[1] == length:
        frames[-1] = env.perturb(perturb[0])["pixels"]
    return np.stack(frames), actions


def paired_test(perturbed: np.ndarray, unperturbed: np.ndarray) -> dict:
    """One-sided paired t-test (perturbed > unperturbed) and the effect size d = mean / std of the
    differences."""
    from scipy import stats

    diff = perturbed - unperturbed
    test = stats.ttest_rel(perturbed, unperturbed, alternative="greater")
    sd = diff.std(ddof=1)
    return {"t": float(test.statistic), "p_value": float(test.pvalue),
            "effect_size": float(diff.mean() / sd) if sd > 0 else float("inf"),
            "mean_perturbed": float(perturbed.mean()), "mean_unperturbed": float(unperturbed.mean()),
            "ratio": float(perturbed.mean() / unperturbed.mean()) if unperturbed.mean() > 0 else float("inf")}


def surprise_experiment(run_dir: str | Path, env_id: str | None = None, episodes: int = SurpriseConfig.episodes,
                        perturb_step: int | None = None, length: int | None = None,
                        kinds: tuple[str, ...] = PERTURBATIONS, policy: str = SurpriseConfig.policy,
                        seed: int = SurpriseConfig.seed, out: str | Path | None = None,
                        device: str = SurpriseConfig.device, progress: bool = True) -> dict:
    """Surprise curves of ``episodes`` paired episodes per perturbation ``kind``; writes
    ``surprise.json``, ``surprise.md`` and ``surprise.png`` to ``out`` (default ``RUN/surprise``).

    ``perturb_step`` defaults to 4 frameskips (the history is full by then), ``length`` to the
    perturbation step plus 4 frameskips. Every episode runs ``length`` steps whatever its success rule
    says. Bad input (an env without ``perturb``, a step outside the episode, too few episodes, another
    env than the run's) raises ValueError before any episode is run."""
    from tqdm.auto import tqdm

    from lewm_agent.data.policies import make_policy
    from lewm_agent.evaluation.protocol import make_env_factory
    from lewm_agent.runs import Run

    run = Run(run_dir)
    model, codec, config = run.load(device=device)
    run_env = config.get("data", {}).get("env_id")
    env_id = env_id or run_env
    if not env_id:
        raise ValueError(f"{run_dir} does not record its env id: pass one (--env)")
    if run_env and env_id != run_env:
        raise ValueError(f"{run_dir} was trained on {run_env}, not {env_id}: its surprise on another env measures "
                         "the change of env, not the perturbation; pass a run of that env")
    f = model.config.action_block
    episodes = check_int("episodes", episodes, minimum=2)
    perturb_step = check_int("perturb_step", 4 * f if perturb_step is None else perturb_step, minimum=0)
    length = check_int("length", perturb_step + 4 * f if length is None else length)
    if not f <= perturb_step <= length:
        raise ValueError(f"perturb_step {perturb_step} must lie in the episode, between the first step with a "
                         f"surprise ({f}, one frameskip) and its length ({length})")
    bad = sorted(set(kinds) - set(PERTURBATIONS))
    if bad or not kinds:
        raise ValueError(f"unknown perturbation(s) {bad or list(kinds)}; choose from {PERTURBATIONS}")
    env = make_env_factory(env_id, model.config.image_size)().unwrapped
    if not callable(getattr(env, "perturb", None)):
        raise ValueError(f"{env_id} has no perturb(kind) method, so no perturbed twins can be made; the lewm/ "
                         "envs have one")
    behaviour = make_policy(policy, env, env_id=env_id)
    curves = {"none": [], **{k: [] for k in kinds}}
    for i in tqdm(range(episodes), desc="surprise episodes", disable=not progress):
        behaviour.reset(seed + i)
        frames, actions = _rollout(env, behaviour, seed + i, length, None)
        curves["none"].append(surprise_series(model, codec, frames, actions))
        for kind in kinds:
            twin, _ = _rollout(env, actions, seed + i, length, (kind, perturb_step))
            curves[kind].append(surprise_series(model, codec, twin, actions))
    env.close()
    curves = {k: np.stack(v) for k, v in curves.items()}
    tests = {k: paired_test(curves[k][:, perturb_step], curves["none"][:, perturb_step]) for k in kinds}
    report = {"run_dir": str(run_dir), "env_id": env_id, "episodes": episodes, "perturb_step": perturb_step,
              "length": length, "policy": policy, "seed": seed, "tests": tests,
              "curves": {k: v.tolist() for k, v in curves.items()}}
    out = Path(out) if out else run.file(Run.SURPRISE)
    out.mkdir(parents=True, exist_ok=True)
    (out / "surprise.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "surprise.md").write_text(surprise_table(report))
    _plot(out / "surprise.png", curves, report)
    return report


def surprise_table(report: dict) -> str:
    lines = [f"Surprise of {report['run_dir']} on {report['env_id']}: {report['episodes']} paired episodes "
             f"({report['policy']}, seeds {report['seed']}..{report['seed'] + report['episodes'] - 1}), "
             f"perturbed at step {report['perturb_step']} of {report['length']}; one-sided paired t-test of the "
             "surprise of the perturbed frame against the same step of the unperturbed twin.", "",
             "| perturbation | surprise perturbed | unperturbed | ratio | t | p-value | effect size d |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, t in report["tests"].items():
        lines.append(f"| {kind} | {t['mean_perturbed']:.4f} | {t['mean_unperturbed']:.4f} | {t['ratio']:.1f} | "
                     f"{t['t']:.2f} | {t['p_value']:.2g} | {t['effect_size']:.2f} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, curves: dict[str, np.ndarray], report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    defined = ~np.isnan(curves["none"]).all(axis=0)  # the first frameskip steps have no surprise
    steps = np.arange(curves["none"].shape[1])[defined]
    for kind, c in curves.items():
        mean = np.nanmean(c[:, defined], axis=0)
        sem = np.nanstd(c[:, defined], axis=0) / np.sqrt(len(c))
        ax.plot(steps, mean, label="unperturbed" if kind == "none" else kind)
        ax.fill_between(steps, mean - sem, mean + sem, alpha=0.25)
    ax.axvline(report["perturb_step"], color="k", ls="--", lw=0.8, label="perturbation")
    ax.set_xlabel("env step")
    ax.set_ylabel("surprise (latent MSE)")
    ax.set_title(f"{report['env_id']}: mean of {report['episodes']} episodes ± s.e.m.", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
