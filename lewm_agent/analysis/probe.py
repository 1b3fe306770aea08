"""Probing: how much of an env's physical state a frozen LeWM encoder's embedding holds.

For every quantity the env names (``lewm_envs`` envs declare ``quantities``: TwoRoom's agent position,
PushT's agent and block position and block angle, ...), a linear probe (closed-form ridge, its
strength chosen on held-out training episodes) and a small MLP probe regress the quantity from the
embedding of each frame. Episodes are split into ``folds`` groups; each group is predicted by probes
fitted on the others, so no frame of a test episode is ever in a fit. Reported per quantity, on targets
standardised with the fit's statistics: MSE as mean ± std over frames (the paper's tables) and Pearson
r (mean over the quantity's dimensions), for the trained encoder and for a randomly initialised one of
the same architecture (what training added). Angles are probed as their sine and cosine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lewm_agent.checks import check_int
from lewm_agent.config import ProbeConfig

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # relative to the number of fit frames


@dataclass
class Quantity:
    """One probed quantity: ``column`` of the store, its ``indices``, and an optional ``period``
    (angles: probed as sin and cos of 2 pi value / period)."""

    name: str
    column: str
    indices: tuple[int, ...]
    period: float | None = None

    def targets(self, values: np.ndarray) -> np.ndarray:
        """Stored rows ``[N, width]`` -> probe targets ``[N, k]``."""
        x = values[:, list(self.indices)].astype(np.float64)
        if self.period is None:
            return x
        angle = 2 * np.pi * x / self.period
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def env_quantities(env_id: str | None) -> list[Quantity]:
    """The quantities ``env_id``'s env class declares (``quantities``); [] when it declares none."""
    if not env_id:
        return []
    import gymnasium as gym

    if env_id.startswith("lewm/"):
        import lewm_envs  # noqa: F401  (registers the ids)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        return []
    entry = spec.entry_point
    cls = entry if not isinstance(entry, str) else gym.envs.registration.load_env_creator(entry)
    declared = getattr(cls, "quantities", {}) or {}
    return [Quantity(name, column, tuple(idx), period) for name, (column, idx, period) in declared.items()]


def parse_quantity(text: str) -> Quantity:
    """``NAME=COLUMN:I,J`` (e.g. ``agent=state:0,1``); ``NAME=COLUMN:I@PERIOD`` for an angle."""
    try:
        name, rest = text.split("=", 1)
        column, spec = rest.split(":", 1)
        spec, _, period = spec.partition("@")
        return Quantity(name, column, tuple(int(i) for i in spec.split(",")), float(period) if period else None)
    except ValueError:
        raise ValueError(f"a quantity is NAME=COLUMN:I,J[@PERIOD] (e.g. agent=state:0,1), got {text!r}") from None


# -- the probes --------------------------------------------------------------------------------------


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std[std < 1e-8] = 1.0
    return [(a - mean) / std for a in (train, *others)]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge ``y ~ x @ w + b`` (``alpha`` times the frame count, intercept unpenalised)."""
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    gram = xc.T @ xc + alpha * len(x) * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ (y - ym))
    return w, ym - xm @ w


def linear_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Ridge predictions for ``x_test``; the strength is chosen on held-out fit episodes (``groups``)."""
    ids = np.unique(groups)
    held = np.isin(groups, ids[::5]) if len(ids) >= 4 else np.zeros(len(groups), bool)  # a fifth of them
    best = RIDGE_GRID[2]
    if held.any() and (~held).any():
        errors = [((x_fit[held] @ w + b - y_fit[held]) ** 2).mean()
                  for w, b in (ridge_fit(x_fit[~held], y_fit[~held], a) for a in RIDGE_GRID)]
        best = RIDGE_GRID[int(np.argmin(errors))]
    w, b = ridge_fit(x_fit, y_fit, best)
    return x_test @ w + b


def mlp_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, steps: int, seed: int,
              hidden: int = 256) -> np.ndarray:
    """A one-hidden-layer ReLU MLP trained with full-batch Adam for ``steps`` steps."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x_fit.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, y_fit.shape[1]))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=gen) / np.sqrt(p.shape[-1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.as_tensor(x_fit, dtype=torch.float32), torch.as_tensor(y_fit, dtype=torch.float32)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    with torch.no_grad():
        return net(torch.as_tensor(x_test, dtype=torch.float32)).double().numpy()


def fold_episodes(ids, folds: int, seed: int) -> list[np.ndarray]:
    """Episode ids ``ids`` split at random into ``folds`` groups (too few episodes raise)."""
    ids = np.unique(ids)
    folds = check_int("folds", folds, minimum=2)
    if len(ids) < folds:
        raise ValueError(f"probing with {folds} held-out folds needs at least {folds} episodes, the data has "
                         f"{len(ids)}; collect more episodes or lower --folds")
    return np.array_split(np.random.default_rng(seed).permutation(ids), folds)


def episode_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` boolean test masks over frames that split the episodes (``groups``) at random."""
    return [np.isin(groups, part) for part in fold_episodes(groups, folds, seed)]


def cross_validated(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, folds: list[np.ndarray],
                    kind: str, mlp_steps: int = 500, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of standardised ``targets`` (each fold standardised by its fit frames);
    returns ``[N, 2, k]``: the standardised truth and the prediction for every frame."""
    out = np.zeros((len(targets), 2, targets.shape[1]))
    for i, test in enumerate(folds):
        fit = ~test
        x_fit, x_test = _standardise(features[fit], features[test])
        y_fit, y_test = _standardise(targets[fit], targets[test])
        if kind == "linear":
            pred = linear_probe(x_fit, y_fit, x_test, groups[fit])
        else:
            pred = mlp_probe(x_fit, y_fit, x_test, mlp_steps, seed + i)
        out[test, 0], out[test, 1] = y_test, pred
    return out


def scores(truth_pred: np.ndarray) -> dict:
    """MSE (mean, std over frames) and Pearson r (mean over dimensions) of ``[N, 2, k]``."""
    truth, pred = truth_pred[:, 0], truth_pred[:, 1]
    per_frame = ((pred - truth) ** 2).mean(1)
    rs = [np.corrcoef(truth[:, j], pred[:, j])[0, 1] if truth[:, j].std() > 0 and pred[:, j].std() > 0 else 0.0
          for j in range(truth.shape[1])]
    return {"mse_mean": float(per_frame.mean()), "mse_std": float(per_frame.std()), "r": float(np.mean(rs))}


# -- the command ---------------------------------------------------------------------------------------


@torch.no_grad()
def embed_episodes(model, store, episodes: list[int], max_frames: int, batch: int = 256) -> dict:
    """Projector embeddings and CLS features of up to ``max_frames`` frames spread evenly over
    ``episodes``, with their rows and episode ids, and the straightness of each episode's trajectory
    at the model's frameskip."""
    from lewm_agent.images import resize_images

    lens = store.ep_len[episodes]
    stride = max(1, int(np.ceil(lens.sum() / max_frames)))
    rows = np.concatenate([store.ep_offset[e] + np.arange(0, store.ep_len[e], stride) for e in episodes])
    groups = np.concatenate([np.full(len(range(0, store.ep_len[e], stride)), e) for e in episodes])
    z, cls = [], []
    for start in range(0, len(rows), batch):
        pixels = resize_images(store.read("pixels", rows[start:start + batch]), model.config.image_size)
        c = model.encode_cls(pixels[:, None])
        cls.append(c[:, 0].double().numpy())
        z.append(model.projector(c[:, 0]).double().numpy())
    return {"rows": rows, "groups": groups, "z": np.concatenate(z), "cls": np.concatenate(cls),
            "straightness": _episode_straightness(model, store, episodes)}


@torch.no_grad()
def _episode_straightness(model, store, episodes: list[int]) -> float | None:
    from lewm_agent.images import resize_images
    from lewm_agent.model.straightness import straightness_terms

    f = model.config.action_block
    terms = []
    for e in episodes:
        rows = store.ep_offset[e] + np.arange(0, store.ep_len[e], f)
        if len(rows) >= 3:
            z = model.encode(resize_images(store.read("pixels", rows), model.config.image_size)[None])
            terms.append(straightness_terms(z)[0])
    return float(torch.cat(terms).mean()) if terms else None


def probe(run_dir: str | Path, data: str | Path, out: str | Path | None = None, quantities: list[Quantity] | None = None,
          folds: int = ProbeConfig.folds, mlp_steps: int = ProbeConfig.mlp_steps,
          max_frames: int = ProbeConfig.max_frames, cls: bool = ProbeConfig.cls, seed: int = ProbeConfig.seed,
          device: str = ProbeConfig.device) -> dict:
    """Probe the run's frozen encoder (and a random one) on the episodes of ``data``; writes
    ``probe.json``, ``probe.md`` and ``probe.png`` to ``out`` (default ``RUN/probe``) and returns the
    report. ``cls`` also probes the pre-projector CLS features."""
    from lewm_agent.data.store import EpisodeStore
    from lewm_agent.model import LeWM
    from lewm_agent.runs import Run

    run = Run(run_dir)
    model, _, config = run.load(device=device)
    run_env = config.get("data", {}).get("env_id")
    check_int("mlp_steps", mlp_steps, minimum=0)
    check_int("max_frames", max_frames)
    with EpisodeStore(data) as store:
        if run_env and store.env_id and store.env_id != run_env:
            raise ValueError(f"{run_dir} was trained on {run_env} but {data} holds {store.env_id} episodes; "
                             "probe a run on data of its own env")
        quantities = quantities or env_quantities(run_env or store.env_id)
        if not quantities:
            raise ValueError(f"no quantities to probe: {run_env or store.env_id or 'this env'} declares none; "
                             "name them with --quantity NAME=COLUMN:I,J (e.g. agent=state:0,1)")
        missing = sorted({q.column for q in quantities} - set(store.columns))
        if missing:
            raise ValueError(f"{data} has no column(s) {missing} to probe (it has {store.columns}); collect the "
                             "data with `lewm collect`, which stores proprio and state")
        for q in quantities:
            width = store.schema[q.column][0][0] if store.schema[q.column][0] else 1
            if max(q.indices) >= width:
                raise ValueError(f"quantity {q.name!r} reads {q.column}[{max(q.indices)}] but {q.column} has "
                                 f"{width} values per row")
        episodes = list(range(store.num_episodes))
        parts = fold_episodes(episodes, folds, seed)  # before any work: too few episodes raise here
        torch.manual_seed(seed)
        random_model = LeWM(model.config).eval()
        trained = embed_episodes(model, store, episodes, max_frames)
        untrained = embed_episodes(random_model, store, episodes, max_frames)
        values = {q.column: store.read(q.column, trained["rows"]) for q in quantities}
    groups = trained["groups"]
    test_folds = [np.isin(groups, part) for part in parts]
    features = {"LeWM": trained["z"], "random init": untrained["z"]}
    if cls:
        features.update({"LeWM (CLS)": trained["cls"], "random init (CLS)": untrained["cls"]})
    results, scatter = {}, {}
    for q in quantities:
        y = q.targets(values[q.column])
        results[q.name] = {}
        for name, x in features.items():
            results[q.name][name] = {}
            for kind in ("linear", "mlp"):
                tp = cross_validated(x, y, groups, test_folds, kind, mlp_steps, seed)
                results[q.name][name][kind] = scores(tp)
                if name == "LeWM" and kind == "linear":
                    scatter[q.name] = tp
    report = {"run_dir": str(run_dir), "data": str(data), "env_id": run_env or store.env_id,
              "frames": int(len(groups)), "episodes": len(episodes), "folds": folds, "mlp_steps": mlp_steps,
              "quantities": {q.name: {"column": q.column, "indices": list(q.indices), "period": q.period}
                             for q in quantities},
              "straightness": {"LeWM": trained["straightness"], "random init": untrained["straightness"]},
              "results": results}
    out = Path(out) if out else run.file(Run.PROBE)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "probe.md").write_text(probe_table(report))
    _plot(out / "probe.png", scatter, report)
    return report


def probe_table(report: dict) -> str:
    lines = [f"Probes of {report['run_dir']} on {report['data']} ({report['frames']} frames of "
             f"{report['episodes']} episodes, {report['folds']} episode folds). Each cell: MSE on standardised "
             "targets (mean ± std over frames) / Pearson r.", "",
             "| quantity | encoder | linear | MLP |", "|---|---|---|---|"]
    for q, by_encoder in report["results"].items():
        for name, by_kind in by_encoder.items():
            cells = [f"{s['mse_mean']:.3f} ± {s['mse_std']:.3f} / {s['r']:.3f}" for s in (by_kind["linear"], by_kind["mlp"])]
            lines.append(f"| {q} | {name} | {cells[0]} | {cells[1]} |")
    s = report["straightness"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines += ["", f"Temporal straightness (mean cosine of consecutive latent velocities at the model's frameskip): "
                  f"LeWM {fmt(s['LeWM'])}, random init {fmt(s['random init'])}."]
    return "\n".join(lines) + "\n"


def _plot(path: Path, scatter: dict[str, np.ndarray], report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(q, j) for q, tp in scatter.items() for j in range(tp.shape[2])]
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (q, j) in zip(axes.flat, panels):
        tp = scatter[q]
        ax.scatter(tp[:, 0, j], tp[:, 1, j], s=3, alpha=0.3)
        lo, hi = tp[:, :, j].min(), tp[:, :, j].max()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        r = report["results"][q]["LeWM"]["linear"]["r"]
        ax.set_title(f"{q} [{j}]: linear r {r:.3f}", fontsize=9)
        ax.set_xlabel("true (standardised)")
        ax.set_ylabel("predicted")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
