"""The offline learner: train a LeWM on an episode store, checkpoint every epoch, resume exactly.

Recipe (the official LeWM one, ``paper.md`` section 3): AdamW (lr 5e-5, weight decay 1e-3), gradient
clipping at norm 1.0, batch 128, bf16 autocast on CUDA (fp32 elsewhere), loss = next-embedding MSE +
lambda * SIGReg with lambda = 0.09, windows of history + 1 = 4 frames at frameskip 5, a 90/10 split of
*episodes* (seed 3072) so no validation window shares an episode with training.

Learning-rate schedule: linear warm-up from 1% of ``lr`` to ``lr`` over ``warmup`` (a fraction of the
total steps when < 1, else a number of steps), then cosine annealing to 0 at the last step. The
official code uses stable-pretraining's ``LinearWarmupCosineAnnealing`` (start factor 0.01, 1%
warm-up, cosine to 0) stepped once per *epoch*; we step it once per *optimizer step*, which is the same
curve sampled finely and does not jump at epoch boundaries.

Determinism and exact resume: the data order of epoch e is a permutation drawn from a generator seeded
by (seed, e), and torch's global RNG (dropout; SIGReg's random directions) is reseeded from
(seed, e, rank) at each epoch start, so every epoch is a function of the weights and optimizer state at
its start. A checkpoint is written at the end of every epoch (and at the last step); a run that is
interrupted and started again with the same ``TrainConfig`` redoes the unfinished epoch from its start
and ends with exactly the parameters of an uninterrupted run (on the same device and thread count).
Validation runs under a forked RNG with a fixed seed so it neither perturbs training nor varies
between epochs.

Files in the run folder: ``config.json`` + ``model.safetensors`` (the checkpoint, see
:mod:`lewm_agent.checkpoint`), ``trainer_state.pt`` (optimizer, scheduler, epoch, step, RNG states),
``metrics.csv`` (a row per epoch) and, optionally, ``tensorboard/``. ``trainer_state.pt`` is written
with ``torch.save`` but holds only tensors, numbers, strings, lists and dicts and is read with
``torch.load(weights_only=True)``, which refuses anything else, so resuming never executes code from
the file.

Multi-GPU / multi-node: launch with ``torchrun``. ``batch_size`` is the *global* batch; each of the N
processes gets ``batch_size / N`` windows. The global batch of each step is the same slice of the
same permutation whatever N is, so a run's data order does not depend on the number of GPUs and
lambda keeps its meaning (SIGReg gathers the embeddings of all ranks). Only rank 0 writes files.
The run folder must be visible to every node for resuming.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lewm_agent.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    atomic_write,
    read_config,
    save_checkpoint,
)
from lewm_agent.model import PRESETS, LeWM, preset_config
from lewm_agent.train import distributed
from lewm_agent.train.precise_bn import recompute_batchnorm
from lewm_agent.utils import seed_everything

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
LOSS_KEYS = ("loss", "pred_loss", "sigreg_loss")
METRIC_COLUMNS = ["epoch", "step", *(f"train_{k}" for k in LOSS_KEYS), *(f"val_{k}" for k in LOSS_KEYS),
                  "lr", "seconds"]
# Settings that change what a step computes; a run can only be resumed with the same values.
# (epochs / steps may grow, device / workers / logging may change.)
RESUME_KEYS = ("batch_size", "lr", "weight_decay", "warmup", "grad_clip", "seed", "split_seed", "val_fraction")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``data`` is an episode store (HDF5); ``out`` the run folder."""

    data: str
    out: str
    preset: str = "small"
    epochs: int = 10
    steps: int | None = None  # total optimizer steps; overrides ``epochs`` when set
    batch_size: int = 128  # global batch (split across torchrun processes)
    lr: float = 5e-5
    weight_decay: float = 1e-3
    warmup: float = 0.01  # < 1: fraction of the total steps; >= 1: steps
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    sigreg_weight: float = 0.09  # lambda
    frameskip: int = 5
    history: int = 3
    image_size: int | None = None  # None: the preset's
    val_fraction: float = 0.1
    split_seed: int = 3072
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None  # None: 0 on CPU (the cores are busy training), 2 on accelerators
    tensorboard: bool = False
    progress: bool = True
    # Batches over which BatchNorm statistics are re-estimated before each checkpoint; 0 keeps the
    # official moving averages, which lag the weights at the high learning rates of short CPU runs.
    precise_bn_batches: int = 20
    model_overrides: dict = field(default_factory=dict)  # any LeWMConfig setting

    def check(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "frameskip": self.frameskip,
                    "history": self.history, "steps": 1 if self.steps is None else self.steps,
                    "image_size": 1 if self.image_size is None else self.image_size}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.precise_bn_batches, int) or self.precise_bn_batches < 0:
            raise ValueError(f"TrainConfig.precise_bn_batches must be an integer >= 0, got {self.precise_bn_batches!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("lr", "weight_decay", "warmup", "grad_clip", "sigreg_weight"):
            if getattr(self, name) < 0 or (name == "lr" and self.lr == 0):
                raise ValueError(f"TrainConfig.{name} must be {'> 0' if name == 'lr' else '>= 0'}, "
                                 f"got {getattr(self, name)}")


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the run folder."""
    return Trainer(cfg).fit()


def lr_factor(step: int, total: int, warmup: int, start: float = 0.01) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return start + (1 - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def mix_seed(*values: int) -> int:
    """A well-spread 32-bit seed from integers (so nearby (seed, epoch) pairs give unrelated streams)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Index lists of this rank's batches in epoch ``epoch``: a seeded permutation of ``range(n)`` cut
    into global batches of ``batch_size`` (the incomplete last one dropped), each split evenly across
    the ``world`` ranks."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    steps = n // batch_size
    return perm[: steps * batch_size].view(steps, world, batch_size // world)[:, rank].tolist()


def eval_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """In-order batches covering ``range(n)``; the last one wraps around to the start so every rank
    gets equally many equal batches (SIGReg's all-gather needs the ranks in lockstep)."""
    steps = math.ceil(n / batch_size)
    idx = torch.arange(steps * batch_size) % n
    return idx.view(steps, world, batch_size // world)[:, rank].tolist()


class _LossModule(torch.nn.Module):
    """Routes ``forward`` to ``LeWM.loss`` so DistributedDataParallel's forward hooks see the step."""

    def __init__(self, model: LeWM):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


@contextmanager
def _sigint_deferred():
    """Hold Ctrl-C while a checkpoint is written so its files always come from the same step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class Trainer:
    """Builds everything from a :class:`TrainConfig`, checking all inputs first (nothing is written
    before :meth:`fit`), then trains with :meth:`fit`."""

    def __init__(self, cfg: TrainConfig):
        from lewm_agent.data.dataset import SequenceDataset, split_episodes
        from lewm_agent.data.store import EpisodeStore

        cfg.check()
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.existing = self._existing_run()
        self.world, self.device = distributed.setup(cfg.device)
        if cfg.batch_size % self.world.size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {self.world.size} "
                             "processes; use a multiple of the process count")
        self.writer_cls = self._tensorboard_writer() if cfg.tensorboard and self.world.is_main else None

        store = self.store = EpisodeStore(cfg.data)
        self.spec = store.action_spec
        self.model_config = self._model_config()

        train_idx, val_idx = split_episodes(store.num_episodes, cfg.val_fraction, cfg.split_seed)
        num_steps = cfg.history + 1
        data_kw = {"num_steps": num_steps, "frameskip": cfg.frameskip, "image_size": self.model_config.image_size}
        self.train_set = SequenceDataset(store, episodes=train_idx, **data_kw)
        self.codec = self.train_set.codec
        # Validation is skipped rather than refused when no validation episode fits a window.
        val_fits = len(val_idx) and (store.ep_len[val_idx] >= num_steps * cfg.frameskip).any()
        self.val_set = SequenceDataset(store, episodes=val_idx, codec=self.codec, **data_kw) if val_fits else None
        if len(self.train_set) < cfg.batch_size:
            raise ValueError(
                f"{cfg.data}: the {len(train_idx)} training episodes hold only {len(self.train_set)} windows of "
                f"{num_steps} frames at frameskip {cfg.frameskip}, fewer than one batch of {cfg.batch_size}; "
                "lower --batch-size, or collect more or longer episodes"
            )
        self.data_meta = {
            "env_id": store.env_id, "path": str(Path(cfg.data).resolve()), "frameskip": cfg.frameskip,
            "history": cfg.history, "image_size": self.model_config.image_size,
            "num_episodes": int(store.num_episodes), "train_episodes": len(train_idx), "val_episodes": len(val_idx),
        }
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = cfg.warmup if cfg.warmup >= 1 else cfg.warmup * self.total_steps
        self.warmup_steps = int(warmup)
        if self.existing is not None:
            self._check_compatible(self.existing)

        seed_everything(cfg.seed)
        self.model = LeWM(self.model_config).to(self.device)
        self.step_module: torch.nn.Module = _LossModule(self.model)
        if self.world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = torch.nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, self.warmup_steps))
        self.epoch, self.epoch_step, self.step, self.seconds = 0, 0, 0, 0.0
        self._saved_step: int | None = None
        self.tb = None
        if self.existing is not None:
            self._load_state()
            self._saved_step = self.step

    # -- checks before any work -------------------------------------------------------------------

    def _existing_run(self) -> dict | None:
        """The config of the run to resume in ``cfg.out``, or None for a new run. A folder that holds
        anything else is refused rather than touched."""
        d = self.run_dir
        if not d.exists():
            return None
        if not d.is_dir():
            raise FileExistsError(f"--out {d} is a file, not a folder; choose another --out")
        names = {p.name for p in d.iterdir()}
        if CONFIG_FILE not in names:
            if names - {TENSORBOARD_DIR, METRICS_FILE}:  # leftovers of a run stopped in its first epoch are fine
                raise FileExistsError(
                    f"--out {d} already exists and holds files that are not a LeWM run "
                    f"({', '.join(sorted(names)[:5])}); choose a new --out or empty the folder")
            return None
        config = read_config(d)
        missing = [n for n in (WEIGHTS_FILE, STATE_FILE) if n not in names]
        if missing:
            raise FileExistsError(
                f"--out {d} holds a checkpoint without {' and '.join(missing)}, so training cannot resume "
                "from it; choose a new --out (the checkpoint itself can still be loaded by the agent)")
        return config

    def _model_config(self):
        cfg = self.cfg
        overrides = dict(cfg.model_overrides)
        feature_dim = self.spec.feature_dim
        if overrides.get("action_dim", feature_dim) != feature_dim:
            raise ValueError(
                f"the model was asked for action_dim={overrides['action_dim']} but {cfg.data} has "
                f"{self.spec.kind} actions of feature width {feature_dim}; drop the action_dim override")
        if overrides.get("action_block", cfg.frameskip) != cfg.frameskip:
            raise ValueError(f"model action_block={overrides['action_block']} must equal frameskip="
                             f"{cfg.frameskip}; set frameskip instead")
        overrides.pop("action_dim", None)
        overrides.pop("action_block", None)
        overrides.update(sigreg_weight=cfg.sigreg_weight, history=cfg.history)
        if cfg.image_size is not None:
            overrides["image_size"] = cfg.image_size
        return preset_config(cfg.preset, feature_dim, cfg.frameskip, **overrides)

    def _check_compatible(self, existing: dict) -> None:
        """Refuse to resume a run with settings that would make it a different run."""
        old_train = existing.get("train", {}).get("config", {})
        new_model = json.loads(json.dumps(asdict(self.model_config)))
        if old_train.get("preset") != self.cfg.preset:  # the model settings then differ too; name only the cause
            problems = [f"preset {old_train.get('preset')!r} vs {self.cfg.preset!r}"]
        else:
            problems = [f"model {k}={v!r} vs {new_model.get(k)!r}" for k, v in existing["model"].items()
                        if new_model.get(k) != v]
        problems += [f"{k}={old_train.get(k)!r} vs {getattr(self.cfg, k)!r}" for k in RESUME_KEYS
                     if old_train.get(k) != getattr(self.cfg, k)]
        old_data = existing.get("data", {})
        problems += [f"data {k}={old_data.get(k)!r} vs {self.data_meta[k]!r}"
                     for k in ("env_id", "frameskip", "history", "image_size", "num_episodes")
                     if old_data.get(k) != self.data_meta[k]]
        if not problems and existing["action_codec"] != json.loads(json.dumps(self.codec.state_dict())):
            problems.append("the action normaliser fitted on the data differs (different data file?)")
        if problems:
            raise ValueError(
                f"--out {self.run_dir} holds a run with different settings (existing vs requested): "
                + "; ".join(problems) + ". Resume with the same settings, or choose a new --out.")

    @staticmethod
    def _tensorboard_writer():
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                'TensorBoard logging needs the tensorboard package: pip install "lewm-agent[tensorboard]"'
            ) from e
        return SummaryWriter

    def _load_state(self) -> None:
        state = torch.load(self.run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        step = self.existing["train"]["step"]
        if state["step"] != step:
            raise CheckpointError(
                f"{self.run_dir}: {STATE_FILE} is from step {state['step']} but {CONFIG_FILE} from step "
                f"{step} (the process died while saving); resume is not possible, choose a new --out")
        import safetensors.torch

        self.model.load_state_dict(safetensors.torch.load_file(self.run_dir / WEIGHTS_FILE, device=str(self.device)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.epoch_step, self.step = state["epoch"], state["epoch_step"], state["step"]
        self.seconds = state["seconds"]
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    # -- training ---------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train until ``cfg.steps`` (or ``cfg.epochs``) are done; returns the run folder. On Ctrl-C the
        last complete checkpoint is left intact and the command to resume is printed."""
        cfg = self.cfg
        try:
            if self.step >= self.total_steps:
                self._say(f"{self.run_dir} is already trained for {self.step} steps ({self.epoch} epochs); "
                          "ask for more epochs or steps to continue")
                return self.run_dir
            if self.world.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._trim_metrics()
            self.tb = self.writer_cls(self.run_dir / TENSORBOARD_DIR, purge_step=self.step) if self.writer_cls else None
            self._say(f"training {cfg.preset} LeWM ({self.model.num_parameters():,} parameters) on "
                      f"{self.device} x {self.world.size}: {len(self.train_set)} windows, "
                      f"{self.steps_per_epoch} steps/epoch, steps {self.step} -> {self.total_steps}")
            while self.step < self.total_steps:
                self._train_epoch()
            return self.run_dir
        except KeyboardInterrupt:
            if self._saved_step is None:
                self._say("\ninterrupted before the first checkpoint; nothing was saved")
            else:
                self._say(f"\ninterrupted; the checkpoint of step {self._saved_step} in {self.run_dir} is intact. "
                          "Run the same command again (same --out and settings) to resume from it.")
            raise
        finally:
            if self.tb:
                self.tb.close()
            self.store.close()  # so the caller may append to the data file right away
            distributed.teardown()

    def _train_epoch(self) -> None:
        cfg, world = self.cfg, self.world
        epoch, start = self.epoch, self.epoch_step
        if start == 0:  # mid-epoch resumes keep the RNG state restored from the checkpoint
            seed_everything(mix_seed(cfg.seed, epoch, world.rank))
        batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, epoch, world.rank, world.size)
        batches = batches[start: start + self.total_steps - self.step]
        loader = self._loader(self.train_set, batches, epoch)
        self.model.train()
        sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        t0 = time.perf_counter()
        bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch + 1}/{self.num_epochs}",
                   disable=not (cfg.progress and world.is_main), dynamic_ncols=True)
        for i, batch in enumerate(bar):
            out = self._train_step(batch)
            sums += torch.stack([out[k].detach().float() for k in LOSS_KEYS])
            if (i + 1) % 10 == 0 or i + 1 == len(batches):  # .item() syncs the GPU, so not every step
                means = (sums / (i + 1)).tolist()
                bar.set_postfix({k: f"{v:.4f}" for k, v in zip(LOSS_KEYS, means)})
                if self.tb:
                    for k, v in zip(LOSS_KEYS, means):
                        self.tb.add_scalar(f"train/{k}", v, self.step)
                    self.tb.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
        bar.close()
        train_means = (distributed.all_reduce_sum(sums) / (len(batches) * world.size)).tolist()
        self.epoch_step = start + len(batches)
        if self.epoch_step == self.steps_per_epoch:
            self.epoch, self.epoch_step = epoch + 1, 0
        self._recalibrate_batchnorm(epoch)
        self.seconds += time.perf_counter() - t0
        val = self.validate()
        self._end_epoch(epoch + 1, dict(zip(LOSS_KEYS, train_means)), val)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.step_module(batch)
        out["loss"].backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return out

    def _recalibrate_batchnorm(self, epoch: int) -> None:
        """Precise BN before each checkpoint (see :mod:`lewm_agent.train.precise_bn`): the eval-mode
        embeddings the planner uses then match the weights being saved. Uses its own RNG stream so
        training randomness, and hence exact resume, is unaffected."""
        n = self.cfg.precise_bn_batches
        if n == 0:
            return
        batches = epoch_batches(len(self.train_set), self.cfg.batch_size, self.cfg.seed, 10**6 + epoch,
                                self.world.rank, self.world.size)[:n]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(mix_seed(self.cfg.seed, epoch, 2))
            moved = ({k: v.to(self.device) for k, v in b.items()} for b in self._loader(self.train_set, batches, epoch))
            recompute_batchnorm(self.model, moved)
        self.model.train()

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Mean loss terms over the validation windows (eval mode, fixed SIGReg directions), or None
        without a validation set."""
        if self.val_set is None or len(self.val_set) == 0:
            return None
        world = self.world
        batches = eval_batches(len(self.val_set), self.cfg.batch_size, world.rank, world.size)
        sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed)
            for batch in self._loader(self.val_set, batches, 0):
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    out = self.model.loss(batch)
                sums += torch.stack([out[k].float() for k in LOSS_KEYS])
        self.model.train()
        means = (distributed.all_reduce_sum(sums) / (len(batches) * world.size)).tolist()
        return dict(zip(LOSS_KEYS, means))

    def _loader(self, dataset, batches: list[list[int]], epoch: int) -> DataLoader:
        workers = self.cfg.num_workers
        if workers is None:
            workers = 0 if self.device.type == "cpu" else 2
        # An explicit generator keeps the loader from drawing worker seeds out of torch's global RNG.
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch, 1)))

    # -- files --------------------------------------------------------------------------------------

    def _end_epoch(self, epoch: int, train: dict[str, float], val: dict[str, float] | None) -> None:
        if self.tb and val:
            for k, v in val.items():
                self.tb.add_scalar(f"val/{k}", v, self.step)
        if self.world.is_main:
            row = {"epoch": epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                   "seconds": round(self.seconds, 3),
                   **{f"train_{k}": v for k, v in train.items()},
                   **{f"val_{k}": (val or {}).get(k, "") for k in LOSS_KEYS}}
            meta = {"data": self.data_meta, "train": {
                "config": asdict(self.cfg), "epoch": self.epoch, "epoch_step": self.epoch_step,
                "step": self.step, "total_steps": self.total_steps, "world_size": self.world.size,
                "seconds": self.seconds, "train_loss": train, "val_loss": val}}
            with _sigint_deferred():
                self._append_metrics(row)
                self._save_state()
                save_checkpoint(self.run_dir, self.model, self.codec, meta)
                self._saved_step = self.step
            if val:
                self._say(f"epoch {epoch}: step {self.step}, train loss {train['loss']:.4f}, "
                          f"val loss {val['loss']:.4f} (pred {val['pred_loss']:.4f}, sigreg {val['sigreg_loss']:.4f})")
        distributed.barrier()

    def _save_state(self) -> None:
        state = {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step, "seconds": self.seconds,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.run_dir / STATE_FILE, buf.getvalue())

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / METRICS_FILE
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)

    def _trim_metrics(self) -> None:
        """Drop rows after the checkpoint being resumed (written by a run that died before saving)."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["step"]) <= self.step]
        if len(keep) != len(rows):
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            w.writerows(keep)
            atomic_write(path, buf.getvalue().encode())

    def _say(self, text: str) -> None:
        if self.world.is_main:
            tqdm.write(text)
