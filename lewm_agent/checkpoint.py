"""Checkpoint folders: ``config.json`` + ``model.safetensors``, read by the trainer and the agent.

``config.json`` holds everything needed to rebuild the model and use it in an env::

    {"format_version": 1, "package_version": "0.1.0", "num_parameters": 1234567,
     "model": asdict(LeWMConfig), "action_codec": ActionCodec.state_dict(),
     "data": {"env_id", "frameskip", "history", "image_size", "path", ...},
     "planner": {...planner defaults...}, "train": {...what the trainer records...}}

``model.safetensors`` holds the model's ``state_dict`` (parameters and BatchNorm buffers). Loading
reads JSON and safetensors only, so it never executes code from the files (no pickle). Writes are
atomic per file: each goes to a temporary file in the same folder, is fsynced, then ``os.replace``-d
over the old one, so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

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

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# The paper's CEM settings (5.2 of the paper digest); the agent may override them at load time.
PLANNER_DEFAULTS = {
    "name": "cem",
    "horizon": 5,
    "num_samples": 300,
    "iterations": 30,
    "topk": 30,
    "receding_horizon": 5,
}


class CheckpointError(ValueError):
    """A checkpoint folder exists but cannot be used (wrong format version, mismatched weights...)."""


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


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, codec: ActionCodec, meta: dict) -> Path:
    """Write ``model`` (a ``LeWM``), its action codec and ``meta`` (keys ``data``, ``train``, optional
    ``planner``) to ``run_dir``, creating the folder if needed. Weights are written before the config,
    so a complete ``config.json`` never points at missing weights. Returns the folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    step = str(meta.get("train", {}).get("step", ""))
    atomic_write(run_dir / WEIGHTS_FILE, safetensors.torch.save(state, metadata={"step": step}))
    config = {
        "format_version": FORMAT_VERSION,
        "package_version": lewm_agent.__version__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "model": asdict(model.config),
        "action_codec": codec.state_dict(),
        "planner": dict(PLANNER_DEFAULTS),
        **meta,
    }
    atomic_write(run_dir / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return run_dir


def read_config(run_dir: str | Path) -> dict:
    """Read and check ``config.json`` of a checkpoint folder (no weights are loaded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {run_dir} does not exist: pass the folder that `lewm train --out` wrote"
        )
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a LeWM checkpoint: {CONFIG_FILE} is missing "
            f"(found: {sorted(p.name for p in run_dir.iterdir()) or 'nothing'}); "
            "a run writes it at the end of its first epoch"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from e
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        writer = config.get("package_version", "an unknown version") if isinstance(config, dict) else "?"
        raise CheckpointError(
            f"{run_dir} has checkpoint format version {version!r} (written by lewm-agent {writer}); "
            f"this lewm-agent {lewm_agent.__version__} reads format version {FORMAT_VERSION}. "
            f"Load it with lewm-agent {writer} (pip install 'lewm-agent=={writer}') or retrain."
        )
    return config


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "auto"):
    """Load a checkpoint folder -> ``(model, codec, config)``; the model is in eval mode on ``device``
    (``"auto"``: cuda, then mps, then cpu)."""
    from lewm_agent.model import LeWM, config_from_dict

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} is missing: the checkpoint folder {run_dir} is incomplete; copy the whole folder"
        )
    try:
        model_config = config_from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE}: {e} (written by lewm-agent {config.get('package_version')}, "
            f"this is {lewm_agent.__version__}); load it with the version that wrote it"
        ) from e
    model = LeWM(model_config)
    try:
        state = safetensors.torch.load_file(weights)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read {weights} ({e}); the file is damaged or not safetensors") from e
    _load_state(model, state, weights)
    codec = ActionCodec.from_state_dict(config["action_codec"])
    return model.to(pick_device(device)).eval(), codec, config


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
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
            f"the weights in {source} do not match the model described by its {CONFIG_FILE}: "
            + "; ".join(parts) + ". The two files come from different runs; copy both from the same run."
        )
    model.load_state_dict(state)


def describe_checkpoint(run_dir: str | Path) -> str:
    """A human-readable summary of a checkpoint folder (``lewm info RUN_DIR``); loads no weights."""
    config = read_config(run_dir)
    m, data, train = config["model"], config.get("data", {}), config.get("train", {})
    spec = config["action_codec"]["spec"]
    space = f"{spec['kind']}, dim {spec['dim']}"
    if spec.get("low") is not None:
        space += f", low {spec['low']}, high {spec['high']}"
    lines = [
        f"LeWM checkpoint {run_dir} (format {config['format_version']}, lewm-agent {config.get('package_version')})",
        (f"  preset:     {train.get('config', {}).get('preset', 'custom')}, "
         f"{config.get('num_parameters', 0):,} parameters"),
        (f"  model:      {m['image_size']} px / patch {m['patch_size']}, encoder {m['enc_depth']} x {m['enc_dim']}, "
         f"latent {m['embed_dim']}, predictor {m['pred_depth']} x {m['pred_heads']} heads, "
         f"history {m['history']}, lambda {m['sigreg_weight']}"),
        f"  actions:    {space}; blocks of {m['action_block']} steps",
        f"  env:        {data.get('env_id') or 'unknown'}",
    ]
    if "path" in data:
        lines.append(f"  data:       {data['path']} ({data.get('num_episodes')} episodes, "
                     f"frameskip {data.get('frameskip')})")
    if train:
        val = train.get("val_loss")
        val_text = "no validation set" if not val else (
            f"last val loss {val['loss']:.4f} (pred {val['pred_loss']:.4f}, sigreg {val['sigreg_loss']:.4f})")
        lines.append(f"  training:   {train.get('epoch', 0)} epochs, {train.get('step', 0)} steps, {val_text}")
    planner = config.get("planner")
    if planner:
        lines.append("  planner:    " + ", ".join(f"{k}={v}" for k, v in planner.items()))
    return "\n".join(lines)
