"""The run folder: every file a training run, an import or an evaluation leaves, and the one place
that reads and writes them.

    runs/tworoom/
      config.json          the checkpoint's description (below)
      model.safetensors    the LeWM state_dict (parameters and BatchNorm buffers)
      trainer_state.pt     optimizer, scheduler, step counters and RNG states (resuming only)
      metrics.csv          one row per epoch
      tensorboard/         optional event files
      eval/ probe/ surprise/   what `lewm eval`, `lewm probe` and `lewm surprise` write by default

``config.json`` (format 2)::

    {"format_version": 2, "package_version": "0.1.0", "num_parameters": 1234567,
     "model": asdict(LeWMConfig), "action_codec": ActionCodec.state_dict(),
     "data": {"env_id", "frameskip", "history", "image_size", "path", ...},
     "train": {"config": asdict(TrainConfig), "epoch", "step", ...},
     "agent": {"horizon": 5, "receding_horizon": 5},            # optional: LeWMAgent's defaults
     "planner": {"name": "mppi", "num_samples": 300, ...}}       # optional: the default planner

Format 1 (one "planner" section holding the agent's horizons too) is read and converted in memory.
Loading reads JSON and safetensors only (``trainer_state.pt`` is read with
``torch.load(weights_only=True)``), so it never executes code from the files. Writes are atomic per
file: each goes to a temporary file in the same folder, is fsynced, then ``os.replace``-d over the old
one, so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import safetensors
import safetensors.torch
import torch

import lewm_agent
from lewm_agent.spaces import ActionCodec
from lewm_agent.utils import pick_device

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
AGENT_KEYS = ("horizon", "receding_horizon", "goal_cost")
# Settings that change what a training step computes: a run resumes only with the same values and
# preset (epochs / steps may grow; device, workers and logging may change).
RESUME_KEYS = ("batch_size", "lr", "weight_decay", "warmup", "grad_clip", "seed", "split_seed",
               "val_fraction")
RESUME_DATA_KEYS = ("env_id", "frameskip", "history", "image_size", "num_episodes")


class CheckpointError(ValueError):
    """A run folder exists but cannot be used (wrong format version, damaged or mismatched files...)."""


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every OS (e.g. Windows), where it is skipped.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict`` with an error that lists what does not match, instead of torch's wall."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                 if keys]
        raise CheckpointError(
            f"the weights in {source} do not match the model described by its config: " + "; ".join(parts)
            + ". The two files come from different runs; copy both from the same run."
        )
    model.load_state_dict(state)


class Run:
    """One run folder (see the module docstring). Creating a ``Run`` touches nothing on disk."""

    CONFIG = "config.json"
    WEIGHTS = "model.safetensors"
    TRAINER_STATE = "trainer_state.pt"
    METRICS = "metrics.csv"
    TENSORBOARD = "tensorboard"
    EVAL = "eval"  # `lewm eval` output
    PROBE = "probe"  # `lewm probe` output
    SURPRISE = "surprise"  # `lewm surprise` output
    ROLLOUT = "rollout"  # `lewm rollout` output

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def has_checkpoint(self) -> bool:
        return self.file(self.CONFIG).is_file()

    # -- the checkpoint ------------------------------------------------------------------------------

    def read_config(self) -> dict:
        """``config.json``, checked and converted to the current format (no weights are read)."""
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"run folder {self.path} does not exist: pass the folder that `lewm train --out` "
                "or `lewm import --out` wrote"
            )
        path = self.file(self.CONFIG)
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a LeWM run: {self.CONFIG} is missing "
                f"(found: {sorted(p.name for p in self.path.iterdir()) or 'nothing'}); "
                "a run writes it at the end of its first epoch"
            )
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from e
        version = config.get("format_version") if isinstance(config, dict) else None
        if version not in READABLE_VERSIONS:
            writer = config.get("package_version", "an unknown version") if isinstance(config, dict) else "?"
            raise CheckpointError(
                f"{self.path} has checkpoint format version {version!r} (written by lewm-agent {writer}); "
                f"this lewm-agent {lewm_agent.__version__} reads format versions {READABLE_VERSIONS}. "
                f"Load it with lewm-agent {writer} (pip install 'lewm-agent=={writer}') or retrain."
            )
        for key in ("model", "action_codec"):
            if not isinstance(config.get(key), dict):
                raise CheckpointError(f"{path} has no '{key}' section; the checkpoint is damaged")
        if version == 1:  # one "planner" section held the agent's horizons and the planner's arguments
            old = dict(config.pop("planner", {}))
            config["agent"] = {k: old.pop(k) for k in AGENT_KEYS if k in old}
            config["planner"] = old
            config["format_version"] = FORMAT_VERSION
        return config

    def save(self, model: torch.nn.Module, codec: ActionCodec, data: dict, train: dict | None = None,
             agent: dict | None = None, planner: dict | None = None) -> Path:
        """Write ``model`` (a ``LeWM``) and its description, creating the folder if needed.

        ``agent`` (``horizon``, ``receding_horizon``, ``goal_cost``) and ``planner`` (``name`` and arguments) are the
        settings :meth:`LeWMAgent.load` starts from; left out, it uses its own defaults. Weights are
        written before the config, so a complete ``config.json`` never points at missing weights.
        """
        _check_sections(agent, planner)
        self.path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        step = str((train or {}).get("step", ""))
        atomic_write(self.file(self.WEIGHTS), safetensors.torch.save(state, metadata={"step": step}))
        config = {
            "format_version": FORMAT_VERSION,
            "package_version": lewm_agent.__version__,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "model": asdict(model.config),
            "action_codec": codec.state_dict(),
            "data": data,
            "train": train or {},
        }
        if agent:
            config["agent"] = dict(agent)
        if planner:
            config["planner"] = dict(planner)
        atomic_write(self.file(self.CONFIG), (json.dumps(config, indent=2) + "\n").encode())
        return self.path

    def set_defaults(self, agent: dict | None = None, planner: dict | None = None) -> None:
        """Make ``planner`` (``{"name": ..., settings}``) and ``agent`` (horizons) the run's defaults for
        ``LeWMAgent.load``; training keeps them when it resumes."""
        _check_sections(agent, planner)
        config = self.read_config()
        if agent is not None:
            config["agent"] = dict(agent)
        if planner is not None:
            config["planner"] = dict(planner)
        atomic_write(self.file(self.CONFIG), (json.dumps(config, indent=2) + "\n").encode())

    def read_weights(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The state dict in ``model.safetensors``; a missing or damaged file raises a clear error."""
        path = self.file(self.WEIGHTS)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the run folder {self.path} is incomplete; copy the whole folder"
            )
        try:
            return safetensors.torch.load_file(path, device=str(device))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(
                f"cannot read {path} ({e}); the file is damaged (truncated by an interrupted copy?) "
                "or not safetensors: copy it again from the run that wrote it"
            ) from e

    def build_model(self, config: dict | None = None):
        """A freshly initialised ``LeWM`` of the architecture that ``config.json`` describes."""
        from lewm_agent.model import LeWM, config_from_dict

        config = config or self.read_config()
        try:
            return LeWM(config_from_dict(config["model"]))
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{self.file(self.CONFIG)}: {e} (written by lewm-agent {config.get('package_version')}, "
                f"this is {lewm_agent.__version__}); load it with the version that wrote it"
            ) from e

    def load_weights(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        """Load ``model.safetensors`` into ``model``, reporting any key or shape mismatch."""
        load_state(model, self.read_weights(device), self.file(self.WEIGHTS))

    def load(self, device: str | torch.device = "auto"):
        """``(model, codec, config)``: the model in eval mode on ``device`` (``"auto"``: cuda, then
        mps, then cpu), its action codec and the converted ``config.json``."""
        config = self.read_config()
        model = self.build_model(config)
        self.load_weights(model)
        codec = ActionCodec.from_state_dict(config["action_codec"])
        return model.to(pick_device(device)).eval(), codec, config

    # -- resuming ------------------------------------------------------------------------------------

    def resumable_config(self) -> dict | None:
        """The config of the run to resume here, or None for a new run (no folder, or the leftovers
        of a run stopped in its first epoch). A folder holding anything else is refused, not touched."""
        if not self.path.exists():
            return None
        if not self.path.is_dir():
            raise FileExistsError(f"--out {self.path} is a file, not a folder; choose another --out")
        names = {p.name for p in self.path.iterdir()}
        if self.CONFIG not in names:
            if names - {self.TENSORBOARD, self.METRICS}:
                raise FileExistsError(
                    f"--out {self.path} already exists and holds files that are not a LeWM run "
                    f"({', '.join(sorted(names)[:5])}); choose a new --out or empty the folder")
            return None
        config = self.read_config()
        missing = [n for n in (self.WEIGHTS, self.TRAINER_STATE) if n not in names]
        if missing and config.get("train", {}).get("imported_from"):
            missing = [n for n in missing if n != self.TRAINER_STATE]  # fine-tuning starts a new schedule
        if missing:
            raise FileExistsError(
                f"--out {self.path} holds a checkpoint without {' and '.join(missing)}, so training cannot "
                "resume from it; choose a new --out (the checkpoint itself can still be loaded by the agent)")
        return config

    def check_resume(self, existing: dict, model: dict, train: dict, data: dict, codec: dict) -> None:
        """Refuse to continue ``existing`` with settings that would make it a different run. Arguments
        are the requested run's ``config.json`` sections (``train`` = ``asdict(TrainConfig)``)."""
        old_train = existing.get("train", {}).get("config", {})
        model = json.loads(json.dumps(model))
        if old_train.get("preset") != train.get("preset"):  # the model settings then differ too; name the cause
            problems = [f"preset {old_train.get('preset')!r} vs {train.get('preset')!r}"]
        else:
            problems = [f"model {k}={v!r} vs {model.get(k)!r}" for k, v in existing["model"].items()
                        if model.get(k) != v]
        problems += [f"{k}={old_train.get(k)!r} vs {train.get(k)!r}" for k in RESUME_KEYS
                     if old_train.get(k) != train.get(k)]
        old_data = existing.get("data", {})
        problems += [f"data {k}={old_data.get(k)!r} vs {data.get(k)!r}" for k in RESUME_DATA_KEYS
                     if old_data.get(k) != data.get(k)]
        if not problems and existing["action_codec"] != json.loads(json.dumps(codec)):
            problems.append("the action normaliser fitted on the data differs (different data file?)")
        if problems:
            raise ValueError(
                f"--out {self.path} holds a run with different settings (existing vs requested): "
                + "; ".join(problems) + ". Resume with the same settings, or choose a new --out.")

    def save_trainer_state(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.file(self.TRAINER_STATE), buf.getvalue())

    def load_trainer_state(self, step: int) -> dict:
        """``trainer_state.pt``, checked to belong to the checkpoint of optimizer step ``step``."""
        path = self.file(self.TRAINER_STATE)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read {path} ({e}); resume is not possible, choose a new --out") from e
        if state.get("step") != step:
            raise CheckpointError(
                f"{self.path}: {self.TRAINER_STATE} is from step {state.get('step')} but {self.CONFIG} from "
                f"step {step} (the process died while saving); resume is not possible, choose a new --out")
        return state

    # -- metrics ------------------------------------------------------------------------------------

    def append_metrics(self, row: dict, columns: list[str]) -> None:
        """Append ``row``; a file written with other columns (an older version) is rewritten with
        these, its old rows keeping their values and leaving new columns empty."""
        path = self.file(self.METRICS)
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != columns:
                self._write_metrics(self.metrics(), columns)
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            if new:
                w.writeheader()
            w.writerow(row)

    def metrics(self) -> list[dict]:
        """Rows of ``metrics.csv`` as dicts of strings (empty without the file)."""
        path = self.file(self.METRICS)
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def trim_metrics(self, step: int, columns: list[str]) -> None:
        """Drop rows after optimizer step ``step`` (written by a run that died before saving)."""
        rows = self.metrics()
        keep = [r for r in rows if int(r["step"]) <= step]
        if len(keep) != len(rows):
            self._write_metrics(keep, columns)

    def _write_metrics(self, rows: list[dict], columns: list[str]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.file(self.METRICS), buf.getvalue().encode())

    # -- people ---------------------------------------------------------------------------------------

    def describe(self) -> str:
        """A summary for ``lewm info``. Loads the weights too, so a damaged or mismatched weights file
        is reported here rather than at the first plan."""
        config = self.read_config()
        self.load_weights(self.build_model(config))
        m, data, train = config["model"], config.get("data", {}), config.get("train", {})
        spec = config["action_codec"]["spec"]
        space = f"{spec['kind']}, dim {spec['dim']}"
        if spec.get("low") is not None:
            space += f", low {spec['low']}, high {spec['high']}"
        lines = [
            f"LeWM run {self.path} (format {config['format_version']}, lewm-agent {config.get('package_version')})",
            (f"  preset:     {train.get('config', {}).get('preset', 'custom')}, "
             f"{config.get('num_parameters', 0):,} parameters; weights read and match the config"),
            (f"  model:      {m['image_size']} px / patch {m['patch_size']}, encoder {m['enc_depth']} x "
             f"{m['enc_dim']}, latent {m['embed_dim']}, predictor {m['pred_depth']} x {m['pred_heads']} heads, "
             f"history {m['history']}, lambda {m['sigreg_weight']}"),
            f"  actions:    {space}; blocks of {m['action_block']} steps",
            f"  env:        {data.get('env_id') or 'unknown'}",
        ]
        if "path" in data:
            lines.append(f"  data:       {data['path']} ({data.get('num_episodes')} episodes, "
                         f"frameskip {data.get('frameskip')})")
        if train.get("imported_from"):
            lines.append(f"  imported:   from {train['imported_from']}")
        if "step" in train:
            val = train.get("val_loss")
            val_text = "no validation set" if not val else (
                f"last val loss {val['loss']:.4f} (pred {val['pred_loss']:.4f}, sigreg {val['sigreg_loss']:.4f})"
                + (f", straightness {val['straightness']:.3f}" if "straightness" in val else ""))
            lines.append(f"  training:   {train.get('epoch', 0)} epochs, {train.get('step', 0)} steps, {val_text}")
        agent, planner = config.get("agent"), config.get("planner")
        lines.append("  agent:      " + (", ".join(f"{k}={v}" for k, v in agent.items()) if agent else "defaults"))
        lines.append("  planner:    " + (", ".join(f"{k}={v}" for k, v in planner.items()) if planner
                                         else "defaults (cem, or categorical_cem for discrete actions)"))
        return "\n".join(lines)


def _check_sections(agent: dict | None, planner: dict | None) -> None:
    """Refuse agent sections with other keys than AGENT_KEYS and planner sections without a name."""
    bad = sorted(set(agent or {}) - set(AGENT_KEYS))
    if bad:
        raise ValueError(f"agent settings {bad} are not agent settings {AGENT_KEYS}; planner arguments "
                         "go in the planner section")
    if planner is not None and "name" not in planner:
        raise ValueError("the planner section needs a 'name' (e.g. {'name': 'cem', 'num_samples': 300})")
