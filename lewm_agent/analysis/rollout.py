"""How far ahead the predictor sees: open-loop rollouts along recorded actions.

From a frame of a held-out episode (with the real history before it, as when planning), the model
imagines k blocks ahead under the actions the episode really took, and the prediction is compared with
the embedding of the frame k blocks later. Two references put the error in scale: the frame's true
move (the distance from the start embedding to that later one: the error of predicting "nothing
changes") and the distance between random frames. A model the planner can trust has an error well
below the true move at the planning horizon; one near it predicts little of the dynamics, and better
planning will not fix what the model cannot see.

For discrete actions at one env step per block (MiniGrid's recipe), the one-block error is also
broken down by the action taken: a model that predicts what "forward" does but not what "turn left"
does fails in a way the overall median hides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lewm_agent.checks import check_int
from lewm_agent.config import RolloutConfig


@torch.no_grad()
def rollout_error(run_dir: str | Path, data: str | Path, out: str | Path | None = None,
                  blocks: int = RolloutConfig.blocks, episodes: int = RolloutConfig.episodes,
                  seed: int = RolloutConfig.seed, device: str = RolloutConfig.device) -> dict:
    """Median squared latent distances, k = 1 .. ``blocks`` blocks ahead, between the open-loop prediction and
    the encoded frame (``error``), between the start and that frame (``move``), and between random frames
    (``random_pairs``), over up to ``episodes`` episodes of ``data``. Writes ``rollout.json`` and
    ``rollout.md`` to ``out`` (default ``RUN/rollout``) and returns the report."""
    from lewm_agent.data.store import EpisodeStore
    from lewm_agent.images import resize_images
    from lewm_agent.runs import Run

    deepest = check_int("blocks", blocks)
    check_int("episodes", episodes)
    run = Run(run_dir)
    model, codec, config = run.load(device=device)
    c = model.config
    run_env = config.get("data", {}).get("env_id")
    horizons = range(1, deepest + 1)
    errors, moves, embeddings = {k: [] for k in horizons}, {k: [] for k in horizons}, []
    per_action = codec.spec.kind == "discrete" and c.action_block == 1
    first_actions = []  # the action index of every start, beside errors[1] and moves[1]
    with EpisodeStore(data) as store:
        if run_env and store.env_id and store.env_id != run_env:
            raise ValueError(f"{run_dir} was trained on {run_env} but {data} holds {store.env_id} episodes; "
                             "roll a run out on data of its own env")
        usable = [e for e in range(store.num_episodes) if (store.ep_len[e] - 1) // c.action_block > deepest]
        if not usable:
            raise ValueError(f"no episode of {data} lasts more than {deepest} blocks of {c.action_block} steps "
                             f"({deepest * c.action_block + 1} frames); pass a smaller blocks (--blocks)")
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(usable, size=min(episodes, len(usable)), replace=False).tolist())
        for e in chosen:
            ep = store.episode(e, ["pixels", "action"])
            n = (len(ep["action"]) - 1) // c.action_block  # whole blocks followed by a frame
            frames = resize_images(ep["pixels"][: n * c.action_block + 1 : c.action_block], c.image_size)
            emb = model.encode(frames[None])[0]  # [n + 1, D]
            acts = codec.encode(ep["action"][: n * c.action_block]).reshape(n, -1).to(emb.device)  # [n, A]
            embeddings.append(emb.cpu())
            # Each start sees the real history before it, as when planning: up to `history` frames.
            # Starts with the same history length are rolled out together.
            starts = np.arange(n - deepest)
            lengths = np.minimum(starts + 1, c.history)
            for h in np.unique(lengths):
                ts = starts[lengths == h]
                pred = model.rollout(torch.stack([emb[t - h + 1:t + 1] for t in ts]),
                                     torch.stack([acts[t - h + 1:t] for t in ts]),
                                     torch.stack([acts[t:t + deepest] for t in ts])[:, None])[:, 0]  # [T, deepest, D]
                ahead = torch.stack([emb[t + 1:t + deepest + 1] for t in ts])
                err = (pred - ahead).square().sum(-1)
                move = (ahead - emb[ts][:, None]).square().sum(-1)
                for k in horizons:
                    errors[k] += err[:, k - 1].tolist()
                    moves[k] += move[:, k - 1].tolist()
                if per_action:
                    first_actions += ep["action"][ts, 0].astype(int).tolist()
    pool = torch.cat(embeddings)
    pairs = torch.as_tensor(rng.integers(len(pool), size=(2, 2000)))
    random_pairs = float((pool[pairs[0]] - pool[pairs[1]]).square().sum(-1).median())
    report = {
        "run_dir": str(run_dir), "data": str(data), "env_id": run_env or store.env_id,
        "episodes": len(chosen), "starts": len(errors[1]), "frameskip": c.action_block,
        "random_pairs": random_pairs,
        "horizons": [{"blocks": k, "env_steps": k * c.action_block,
                      **_summary(errors[k], moves[k])} for k in horizons],
    }
    if per_action:
        taken, err1, move1 = np.array(first_actions), np.array(errors[1]), np.array(moves[1])
        report["first_block_by_action"] = [
            {"action": int(a), "starts": int((taken == a).sum()), **_summary(err1[taken == a], move1[taken == a])}
            for a in np.unique(taken)]
    out = Path(out) if out else run.file(Run.ROLLOUT)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "rollout.md").write_text(rollout_table(report))
    return report


def _summary(errors, moves) -> dict:
    return {"error": float(np.median(errors)), "move": float(np.median(moves)),
            "error_over_move": float(np.median(np.array(errors) / np.maximum(moves, 1e-12)))}


def rollout_table(report: dict) -> str:
    lines = [f"Open-loop rollouts of {report['run_dir']} along the recorded actions of {report['episodes']} "
             f"episodes of {report['data']} ({report['starts']} starts, {report['frameskip']} env steps per "
             "block). Median squared latent distances; random frames lie "
             f"{report['random_pairs']:.2f} apart.", "",
             "| blocks ahead | env steps | prediction error | true move | error / move |", "|---|---|---|---|---|"]
    for h in report["horizons"]:
        lines.append(f"| {h['blocks']} | {h['env_steps']} | {h['error']:.2f} | {h['move']:.2f} "
                     f"| {h['error_over_move']:.2f} |")
    if "first_block_by_action" in report:
        lines += ["", "One block ahead, by the action taken:", "",
                  "| action | starts | prediction error | true move | error / move |", "|---|---|---|---|---|"]
        for a in report["first_block_by_action"]:
            lines.append(f"| {a['action']} | {a['starts']} | {a['error']:.2f} | {a['move']:.2f} "
                         f"| {a['error_over_move']:.2f} |")
    return "\n".join(lines) + "\n"
