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

Files: every file of the run folder is read and written through :class:`lewm_agent.runs.Run`
(checkpoint, ``trainer_state.pt`` with the optimizer, scheduler, step counters and RNG states,
``metrics.csv``, ``tensorboard/``). Training a run made by ``lewm import`` fine-tunes it: the
architecture and action normaliser come from the run, the schedule starts at step 0.

Multi-GPU / multi-node: launch with ``torchrun``. ``batch_size`` is the *global* batch; each of the N
processes gets ``batch_size / N`` windows. The global batch of each step is the same slice of the
same permutation whatever N is, so a run's data order does not depend on the number of GPUs and
lambda keeps its meaning (SIGReg gathers the embeddings of all ranks). Only rank 0 writes files.
The run folder must be visible to every node for resuming.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lewm_agent.config import LeWMConfig, TrainConfig, config_from_dict, preset_config
from lewm_agent.model import LeWM
from lewm_agent.runs import Run
from lewm_agent.spaces import ActionCodec
from lewm_agent.train import distributed
from lewm_agent.train.precise_bn import recompute_batchnorm
from lewm_agent.utils import seed_everything

LOSS_KEYS = ("loss", "pred_loss", "sigreg_loss", "straightness")  # what LeWM.loss reports
METRIC_COLUMNS = ["epoch", "step", *(f"train_{k}" for k in LOSS_KEYS), *(f"val_{k}" for k in LOSS_KEYS),
                  "lr", "seconds"]


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


def _defined(losses: dict[str, float]) -> dict[str, float]:
    """``losses`` without a NaN straightness (windows of two frames have none)."""
    return {k: v for k, v in losses.items() if not (k == "straightness" and math.isnan(v))}


class Trainer:
    """Builds everything from a :class:`TrainConfig`, checking all inputs first (nothing is written
    before :meth:`fit`), then trains with :meth:`fit`."""

    def __init__(self, cfg: TrainConfig):
        from lewm_agent.data.dataset import SequenceDataset, split_episodes
        from lewm_agent.data.store import EpisodeStore

        cfg.check()
        self.cfg = cfg
        self.run = Run(cfg.out)
        self.run_dir = self.run.path
        self.existing = self.run.resumable_config()
        # A run made by `lewm import` keeps its architecture and action normaliser: training it fine-tunes.
        self.imported = (self.existing or {}).get("train", {}).get("imported_from")
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
        base_codec = ActionCodec.from_state_dict(self.existing["action_codec"]) if self.imported else None
        self.train_set = SequenceDataset(store, episodes=train_idx, codec=base_codec, **data_kw)
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
            "env_id": store.env_id, "env_kwargs": store.env_kwargs, "path": str(Path(cfg.data).resolve()),
            "frameskip": cfg.frameskip,
            "history": cfg.history, "image_size": self.model_config.image_size,
            "num_episodes": int(store.num_episodes), "train_episodes": len(train_idx), "val_episodes": len(val_idx),
            "train_transitions": int(store.ep_len[train_idx].sum()),
        }
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = cfg.warmup if cfg.warmup >= 1 else cfg.warmup * self.total_steps
        self.warmup_steps = int(warmup)
        self.fine_tune_start = bool(self.imported) and not self.run.file(Run.TRAINER_STATE).exists()
        if self.existing is not None and not self.fine_tune_start:
            self.run.check_resume(self.existing, asdict(self.model_config), self._train_record(),
                                  self.data_meta, self.codec.state_dict())

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

    def _train_record(self) -> dict:
        """``asdict(cfg)`` as compared on resume; a fine-tuned import is recorded as its own preset."""
        record = asdict(self.cfg)
        if self.imported:
            record["preset"] = self.existing.get("train", {}).get("config", {}).get("preset", "imported")
        return record

    def _model_config(self) -> LeWMConfig:
        cfg = self.cfg
        if self.imported:
            model = config_from_dict(self.existing["model"])
            if (model.action_block, model.history) != (cfg.frameskip, cfg.history):
                raise ValueError(
                    f"{self.run_dir} was imported with action blocks of {model.action_block} steps and a history "
                    f"of {model.history}; fine-tune it with --frameskip {model.action_block} "
                    f"--history {model.history}")
            if model.action_dim != self.spec.feature_dim:
                raise ValueError(
                    f"{self.run_dir} was imported for {model.action_dim}-wide actions but {cfg.data} has "
                    f"{self.spec.feature_dim}-wide ones; fine-tune it on data of the same env")
            return model
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
        self.run.load_weights(self.model, self.device)
        if self.fine_tune_start:
            return  # fine-tuning an import starts its own schedule at step 0
        state = self.run.load_trainer_state(self.existing["train"]["step"])
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
        try:
            if self.step >= self.total_steps:
                self._say(f"{self.run_dir} is already trained for {self.step} steps ({self.epoch} epochs); "
                          "ask for more epochs or steps to continue")
                return self.run_dir
            if self.world.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.run.trim_metrics(self.step, METRIC_COLUMNS)
            tb_dir = self.run.file(Run.TENSORBOARD)
            self.tb = self.writer_cls(tb_dir, purge_step=self.step) if self.writer_cls else None
            if self.fine_tune_start:
                self._say(f"fine-tuning the model imported from {self.imported}: its architecture and action "
                          "normaliser come from the run folder (--preset and --set do not apply)")
            self._say(f"training {self._train_record()['preset']} LeWM ({self.model.num_parameters():,} parameters) on "
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
                bar.set_postfix({k: f"{v:.4f}" for k, v in _defined(dict(zip(LOSS_KEYS, means))).items()})
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
        # Straightness is NaN where a window cannot define it (history 1): leave it out of the files
        # (an empty metrics cell; config.json stays strict JSON) and of the messages. A NaN loss
        # (divergence) is kept, for the user to see.
        train, val = _defined(train), val and _defined(val)
        if self.tb and val:
            for k, v in val.items():
                self.tb.add_scalar(f"val/{k}", v, self.step)
        if self.world.is_main:
            row = {"epoch": epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                   "seconds": round(self.seconds, 3),
                   **{f"train_{k}": v for k, v in train.items()},
                   **{f"val_{k}": (val or {}).get(k, "") for k in LOSS_KEYS}}
            meta = {"data": self.data_meta, "train": {
                "config": self._train_record(), **({"imported_from": self.imported} if self.imported else {}),
                "epoch": self.epoch, "epoch_step": self.epoch_step,
                "step": self.step, "total_steps": self.total_steps, "world_size": self.world.size,
                "seconds": self.seconds, "train_loss": train, "val_loss": val}}
            with _sigint_deferred():
                self.run.append_metrics(row, METRIC_COLUMNS)
                self._save_state()
                kept = self.existing or {}  # the agent and planner sections stay as they were
                self.run.save(self.model, self.codec, **meta, agent=kept.get("agent"), planner=kept.get("planner"))
                self._saved_step = self.step
            if val:
                self._say(f"epoch {epoch}: step {self.step}, train loss {train['loss']:.4f}, "
                          f"val loss {val['loss']:.4f} (pred {val['pred_loss']:.4f}, sigreg {val['sigreg_loss']:.4f})"
                          + (f", straightness {val['straightness']:.3f}" if "straightness" in val else ""))
        distributed.barrier()

    def _save_state(self) -> None:
        state = {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step, "seconds": self.seconds,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        self.run.save_trainer_state(state)

    def _say(self, text: str) -> None:
        if self.world.is_main:
            tqdm.write(text)
