"""Evaluation outputs people and machines can read: results.json, results.md, plot.png, videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_json(path: Path, results: dict) -> Path:
    path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    return path


def protocol_line(results: dict) -> str:
    """The sentence above every results table: env, goal mode and protocol."""
    p = results["protocol"]
    return (f"Env `{results['env_id']}`, {results['mode']} goals: {p['episodes']} episodes, seed {p['seed']}, "
            f"goal offset {p['goal_offset']}, budget {p['budget']} steps, success at any step.")


def markdown_table(results: dict) -> str:
    """One row per policy: success rate, successes, mean steps to success, planning time."""
    lines = [
        protocol_line(results),
        "",
        "| policy | success rate | successes | mean steps to success | plan time mean / median / p95 (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["policies"].items():
        t = r.get("planning_time") or {}
        timing = (
            f"{t['mean_s']:.3f} / {t['median_s']:.3f} / {t['p95_s']:.3f} ({t['calls']} calls)" if t.get("calls") else "-"
        )
        steps = r["mean_steps_to_success"]
        lines.append(
            f"| {name} | {r['success_rate']:.1f}% | {r['successes']}/{r['episodes']} | "
            f"{'-' if steps is None else f'{steps:.1f}'} | {timing} |"
        )
    return "\n".join(lines) + "\n"


def write_plot(path: Path, results: dict, metrics: list[dict] | None = None) -> Path:
    """Success rate per policy, and the training curves when given the run's metrics rows
    (:meth:`lewm_agent.runs.Run.metrics`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if metrics else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    names = list(results["policies"])
    rates = [results["policies"][n]["success_rate"] for n in names]
    ax = axes[0, 0]
    bars = ax.bar(names, rates, color=["tab:blue", "tab:gray", "tab:orange", "tab:green"][: len(names)])
    ax.bar_label(bars, fmt="%.0f%%")
    ax.set_ylim(0, 105)
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"{results['env_id']} ({results['protocol']['episodes']} episodes)")
    if panels == 2:
        rows = metrics
        ax = axes[0, 1]
        steps = [int(r["step"]) for r in rows]
        for key in ("train_pred_loss", "val_pred_loss", "train_sigreg_loss"):
            vals = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
            ax.plot(steps, vals, marker="o", label=key)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title("training losses")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """An mp4 (or a gif if no ffmpeg is available) of side-by-side agent view | goal frames."""
    import imageio.v2 as imageio

    frames = [np.repeat(np.repeat(f, 4, axis=0), 4, axis=1) if f.shape[0] < 128 else f for f in frames]
    try:
        imageio.mimwrite(path.with_suffix(".mp4"), frames, fps=fps, macro_block_size=1)
        return path.with_suffix(".mp4")
    except (ImportError, ValueError, RuntimeError):
        imageio.mimwrite(path.with_suffix(".gif"), frames, duration=1000 / fps, loop=0)
        return path.with_suffix(".gif")


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")
