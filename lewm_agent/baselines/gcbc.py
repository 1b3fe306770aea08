"""Goal-conditioned behaviour cloning (GCBC) from pixels, on LeWM's own episode store.

The offline baseline of the comparison: what imitating the data gives without a world model or a
planner. A sample is a frame, a goal frame taken 1 to ``max_goal_offset`` steps later in the same
episode (hindsight relabelling) and the action taken at the frame. The network encodes frame and goal
with one ViT of a LeWM preset's encoder size (shared weights, CLS features), and an MLP maps the
two feature vectors to the action: z-scored features (MSE) for a Box, logits (cross-entropy) for a
Discrete action space, with the same :class:`ActionCodec` LeWM uses.

Run folder: ``config.json`` (``"kind": "gcbc"``, settings, action normaliser, data, progress),
``model.safetensors``, ``trainer_state.pt`` (optimizer) and ``metrics.csv``. Batch ``s`` is drawn from
a generator seeded by ``(seed, s)``, so a run interrupted and started again ends with exactly the
weights of an uninterrupted one (checkpoints every ``save_every`` steps and at the end).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lewm_agent.agent import Agent
from lewm_agent.config import GCBCConfig, preset_config
from lewm_agent.images import resize_images
from lewm_agent.model.vit import ViTEncoder
from lewm_agent.runs import Run, atomic_write, load_state
from lewm_agent.spaces import ActionCodec
from lewm_agent.train.trainer import _sigint_deferred, mix_seed
from lewm_agent.utils import pick_device, seed_everything

KIND = "gcbc"
METRIC_COLUMNS = ["step", "loss", "seconds"]
_READ_BLOCK = 2048


class GCBCNet(nn.Module):
    """(frame, goal) uint8 ``[N, 3, S, S]`` pair -> action features ``[N, out_dim]``."""

    def __init__(self, encoder: dict, out_dim: int, hidden: int = 512):
        super().__init__()
        self.encoder_config = dict(encoder)
        self.encoder = ViTEncoder(**encoder)
        dim = encoder["dim"]
        self.head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, out_dim))

    def forward(self, frames: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        n = len(frames)
        both = torch.cat([frames, goals]).float() / 255.0
        feats = self.encoder(both)
        return self.head(torch.cat([feats[:n], feats[n:]], dim=1))


def encoder_settings(preset: str, image_size: int | None) -> dict:
    """The ViT settings of ``preset``'s LeWM encoder."""
    c = preset_config(preset, action_dim=1, **({"image_size": image_size} if image_size else {}))
    return {"image_size": c.image_size, "patch_size": c.patch_size, "dim": c.enc_dim, "depth": c.enc_depth,
            "heads": c.enc_heads, "mlp_dim": c.enc_mlp_dim}


class GoalSamples:
    """Every frame of a store (resized, in RAM), its encoded action and where its episode ends."""

    def __init__(self, path: str, image_size: int, codec: ActionCodec | None = None):
        from lewm_agent.data.store import EpisodeStore

        with EpisodeStore(path) as store:
            self.env_id, self.num_episodes = store.env_id, int(store.num_episodes)
            self.spec = store.action_spec
            n = int(store.ep_len.sum())
            self.frames = torch.cat([resize_images(store.read("pixels", slice(a, min(a + _READ_BLOCK, n))), image_size)
                                     for a in range(0, n, _READ_BLOCK)])
            raw = store.read("action", slice(0, n)).astype(np.float32).reshape(n, -1)
            ends = np.repeat(store.ep_offset + store.ep_len - 1, store.ep_len)  # last row of each row's episode
        self.codec = codec or ActionCodec.fit(self.spec, raw)
        self.actions = self.codec.encode(raw)
        self.ends = ends.astype(np.int64)
        self.rows = np.flatnonzero((np.arange(n) < self.ends) & ~np.isnan(raw).any(axis=1))  # rows with a next frame
        if len(self.rows) == 0:
            raise ValueError(f"{path} has no step with an action and a later frame; collect episodes of 2+ steps")

    def batch(self, seed: int, step: int, size: int, max_offset: int):
        rng = np.random.default_rng(mix_seed(seed, step))
        rows = self.rows[rng.integers(len(self.rows), size=size)]
        reach = np.minimum(self.ends[rows] - rows, max_offset)
        goals = rows + 1 + (rng.random(size) * reach).astype(np.int64)  # uniform in rows + 1 .. rows + reach
        return self.frames[rows], self.frames[goals], self.actions[rows]


def _loss(net: GCBCNet, discrete: bool, frames, goals, actions) -> torch.Tensor:
    out = net(frames, goals)
    return F.cross_entropy(out, actions.argmax(-1)) if discrete else F.mse_loss(out, actions)


def train_gcbc(cfg: GCBCConfig) -> Path:
    """Train (or resume) the GCBC run in ``cfg.out``; returns the folder."""
    cfg.check()
    run = Run(cfg.out)
    encoder = encoder_settings(cfg.preset, cfg.image_size)
    existing = read_gcbc_config(run.path) if run.file(Run.CONFIG).exists() else None
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "progress", "save_every", "steps")}
    if existing is not None and existing["settings"] != settings:
        diff = {k: (existing["settings"].get(k), v) for k, v in settings.items() if existing["settings"].get(k) != v}
        raise ValueError(f"--out {run.path} holds a GCBC run with other settings (stored, asked): {diff}; use the "
                         "stored settings to continue it, or another --out")
    codec = ActionCodec.from_state_dict(existing["action_codec"]) if existing else None
    data = GoalSamples(cfg.data, encoder["image_size"], codec)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    discrete = data.spec.kind == "discrete"
    net = GCBCNet(encoder, data.spec.feature_dim, cfg.hidden).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, seconds = 0, 0.0
    if existing is not None:
        load_state(net, safetensors.torch.load_file(run.file(Run.WEIGHTS), device=str(device)), run.file(Run.WEIGHTS))
        state = run.load_trainer_state(existing["step"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = state["step"], state["seconds"]
    if step >= cfg.steps:
        tqdm.write(f"{run.path} is already trained for {step} steps; ask for more --steps to continue")
        return run.path
    run.path.mkdir(parents=True, exist_ok=True)
    meta = {"kind": KIND, "format_version": 1, "env_id": data.env_id, "settings": settings, "encoder": encoder,
            "out_dim": data.spec.feature_dim, "action_codec": data.codec.state_dict(),
            "data": {"path": str(Path(cfg.data).resolve()), "num_episodes": data.num_episodes,
                     "train_transitions": int(len(data.rows))}}

    def save() -> None:
        with _sigint_deferred():
            run.save_trainer_state({"step": step, "seconds": seconds, "optimizer": optimizer.state_dict()})
            atomic_write(run.file(Run.WEIGHTS), safetensors.torch.save({k: v.contiguous() for k, v in net.state_dict().items()}))
            atomic_write(run.file(Run.CONFIG), (json.dumps({**meta, "step": step, "seconds": round(seconds, 2)},
                                                           indent=2) + "\n").encode())

    bar = tqdm(total=cfg.steps, initial=step, desc="train gcbc", disable=not cfg.progress, dynamic_ncols=True)
    net.train()
    total, count, t0 = 0.0, 0, time.perf_counter()
    try:
        while step < cfg.steps:
            frames, goals, actions = (x.to(device) for x in data.batch(cfg.seed, step, cfg.batch_size, cfg.max_goal_offset))
            loss = _loss(net, discrete, frames, goals, actions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total, count = total + loss.item(), count + 1
            bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                seconds, t0 = seconds + now - t0, now
                run.append_metrics({"step": step, "loss": round(total / count, 6), "seconds": round(seconds, 2)},
                                   METRIC_COLUMNS)
                bar.set_postfix(loss=f"{total / count:.4f}")
                total, count = 0.0, 0
                save()
    except KeyboardInterrupt:
        tqdm.write(f"\ninterrupted; the last checkpoint in {run.path} is intact. Run the same command again to resume.")
        raise
    finally:
        bar.close()
    return run.path


def read_gcbc_config(folder: str | Path) -> dict:
    path = Path(folder) / Run.CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} ({err}); pass a folder written by `lewm gcbc`") from err
    if config.get("kind") != KIND:
        raise ValueError(f"{folder} is not a GCBC run (its config.json has no \"kind\": \"gcbc\")")
    return config


class GCBCAgent(Agent):
    """A trained GCBC network behind the agent protocol: one forward pass per step, no state."""

    name = KIND

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        self.config = read_gcbc_config(run_dir)
        self.device = pick_device(device)
        self.codec = ActionCodec.from_state_dict(self.config["action_codec"])
        self.net = GCBCNet(self.config["encoder"], self.config["out_dim"], self.config["settings"]["hidden"])
        weights = Path(run_dir) / Run.WEIGHTS
        load_state(self.net, safetensors.torch.load_file(weights), weights)
        self.net.to(self.device).eval()
        self.image_size = self.config["encoder"]["image_size"]
        self.action_space = self.codec.spec.to_space()

    @torch.inference_mode()
    def act(self, obs: dict):
        pixels, goals = np.asarray(obs["pixels"]), np.asarray(obs["goal"])
        single = pixels.ndim == 3
        frames = resize_images(pixels[None] if single else pixels, self.image_size).to(self.device)
        goal_frames = resize_images(goals[None] if single else goals, self.image_size).to(self.device)
        actions = self.codec.to_env(self.codec.decode(self.net(frames, goal_frames)))
        return actions[0] if single else actions

    def describe(self) -> dict:
        return {**super().describe(), "kind": KIND, "offline_transitions": self.config["data"]["train_transitions"],
                "train_seconds": self.config.get("seconds"),
                "parameters": sum(p.numel() for p in self.net.parameters())}


__all__ = ["GCBCAgent", "GCBCNet", "GoalSamples", "read_gcbc_config", "train_gcbc"]
