"""Released official LeWM checkpoints -> run folders (``lewm import``).

The authors publish each model as ``weights.pt``, a plain ``state_dict`` of their ``JEPA`` module
(``encoder``: a Hugging Face ``transformers`` ViTModel; ``predictor``: ``ARPredictor``;
``action_encoder``: ``Embedder``; ``projector`` / ``pred_proj``: BatchNorm MLPs), and ``config.json``,
the constructor arguments of those five parts. This package's LeWM is the same architecture under
other parameter names, so a release maps onto it tensor for tensor:

- the ViT's names changed between transformers 4 (``encoder.layer.N.attention.attention.query``,
  ``intermediate.dense``, ``output.dense``, ...) and 5 (``layers.N.attention.q_proj``, ``mlp.fc1``,
  ``mlp.fc2``, ...); both are read, and the separate query/key/value projections are stacked into
  this ViT's single ``qkv`` projection;
- ``predictor.transformer.layers.N`` -> ``predictor.blocks.N``, ``pos_embedding`` -> ``pos_embed``;
- ``action_encoder.patch_embed`` / ``embed`` -> ``action_encoder.smooth`` / ``mlp``.

The action normaliser is fitted on the given store's ``action`` column (NaN rows excluded), as the
official code fits it on the dataset. ``weights.pt`` is read with ``torch.load(weights_only=True)``:
anything but tensors (a pickled model, say) is refused, so importing never runs code from the file.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import asdict
from pathlib import Path

import torch

from lewm_agent.config import LeWMConfig, preset_config
from lewm_agent.runs import Run

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
SECTIONS = ("encoder", "predictor", "action_encoder", "projector", "pred_proj")
# stable-pretraining's vit_hf sizes: (hidden size, layers, heads); its MLP is 4 x hidden.
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
             "huge": (1280, 32, 16)}
# vit_hf's and ARPredictor's / Embedder's defaults, for arguments a config leaves out.
VIT_DEFAULTS = {"patch_size": 16, "image_size": 224}
PREDICTOR_DEFAULTS = {"dim_head": 64, "dropout": 0.0, "emb_dropout": 0.0}
EMBEDDER_DEFAULTS = {"smoothed_dim": 10, "mlp_scale": 4}

# One ViT layer's parameters, by transformers 4 and 5 name -> this ViT's (q / k / v are stacked).
_VIT_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
    "attention.output.dense": "proj", "attention.o_proj": "proj",
    "intermediate.dense": "mlp.0", "mlp.fc1": "mlp.0",
    "output.dense": "mlp.2", "mlp.fc2": "mlp.2",
}
_VIT_LAYER_KEY = re.compile(r"^encoder\.(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
_RENAMES = [  # (official prefix, this package's prefix), first match wins
    ("encoder.embeddings.cls_token", "encoder.cls_token"),
    ("encoder.embeddings.position_embeddings", "encoder.pos_embed"),
    ("encoder.embeddings.patch_embeddings.projection.", "encoder.patch_embed."),
    ("encoder.layernorm.", "encoder.norm."),
    ("predictor.pos_embedding", "predictor.pos_embed"),
    ("predictor.transformer.layers.", "predictor.blocks."),
    ("predictor.transformer.norm.", "predictor.norm."),
    ("action_encoder.patch_embed.", "action_encoder.smooth."),
    ("action_encoder.embed.", "action_encoder.mlp."),
    ("projector.", "projector."),
    ("pred_proj.", "pred_proj."),
]


class ReleaseError(ValueError):
    """An official release that cannot be imported; the message names the input and the fix."""


def map_official_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Official ``state_dict`` (either transformers layout) -> this package's LeWM names.

    Returns ``(state, origin)``: ``origin`` maps each new key to the official key(s) it came from.
    Keys that match no rule are kept under their own name (and then reported as unexpected)."""
    out, origin, qkv = {}, {}, {}
    for key, value in state.items():
        m = _VIT_LAYER_KEY.match(key)
        if m and m.group(2) in _VIT_LAYER:
            layer, part, kind = m.group(1), _VIT_LAYER[m.group(2)], m.group(3)
            if part in ("q", "k", "v"):
                qkv.setdefault((layer, kind), {})[part] = (key, value)
                continue
            new = f"encoder.blocks.{layer}.{part}.{kind}"
        else:
            new = next((ours + key[len(theirs):] for theirs, ours in _RENAMES if key.startswith(theirs)), key)
        out[new], origin[new] = value, key
    for (layer, kind), parts in qkv.items():
        new = f"encoder.blocks.{layer}.qkv.{kind}"
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ReleaseError(f"weights.pt has an incomplete attention in ViT layer {layer}: the {missing} "
                               f"projection {kind} is missing; the file is damaged or not an official release")
        out[new] = torch.cat([parts[p][1] for p in ("q", "k", "v")])
        origin[new] = " + ".join(parts[p][0] for p in ("q", "k", "v"))
    return out, origin


def config_from_official(cfg: dict, action_width: int, source: str = CONFIG_FILE) -> LeWMConfig:
    """The :class:`LeWMConfig` of an official ``config.json`` for a store whose env actions are
    ``action_width`` features wide. Architectures this package cannot express raise ReleaseError."""
    missing = [s for s in SECTIONS if not isinstance(cfg.get(s), dict)]
    if missing:
        raise ReleaseError(
            f"{source} is not an official LeWM model config: it lacks the section(s) {missing} "
            f"(it has {sorted(cfg)[:8]}); pass the config.json released beside weights.pt")
    enc, pred, act, proj, pproj = (cfg[s] for s in SECTIONS)
    pred = {**PREDICTOR_DEFAULTS, **pred}
    act = {**EMBEDDER_DEFAULTS, **act}
    size = enc.get("size", "tiny")
    if size not in VIT_SIZES:
        raise ReleaseError(f"{source}: encoder size {size!r} is not a ViT size of the official code "
                           f"({sorted(VIT_SIZES)})")
    width, depth, heads = VIT_SIZES[size]
    embed = proj.get("output_dim") or proj.get("input_dim", width)
    problems = []

    def need(what: str, value, expected) -> None:
        if value != expected:
            problems.append(f"{what} is {value!r}, this package's LeWM needs {expected!r}")

    need("projector.input_dim", proj.get("input_dim", width), width)
    need("pred_proj.hidden_dim", pproj.get("hidden_dim"), proj.get("hidden_dim"))
    need("pred_proj.input_dim", pproj.get("input_dim", embed), embed)
    need("pred_proj.output_dim", pproj.get("output_dim") or pproj.get("input_dim", embed), embed)
    for name in ("input_dim", "hidden_dim", "output_dim"):
        need(f"predictor.{name}", pred.get(name, embed), embed)
    need("predictor.emb_dropout", pred["emb_dropout"], 0.0)
    need("action_encoder.emb_dim", act.get("emb_dim"), embed)
    if problems:
        raise ReleaseError(f"{source} describes an architecture this package does not build: "
                           + "; ".join(problems) + ". Only the official LeWM layout can be imported.")
    in_dim = act.get("input_dim")
    if not isinstance(in_dim, int) or in_dim % action_width:
        raise ReleaseError(
            f"{source}: the action encoder takes input_dim={in_dim!r} values (frameskip x action width) but "
            f"the store's actions are {action_width} wide, which does not divide it; pass the store of the "
            "env this model was trained on (--data)")
    try:
        return LeWMConfig(
            action_dim=action_width, action_block=in_dim // action_width,
            image_size=enc.get("image_size", VIT_DEFAULTS["image_size"]),
            patch_size=enc.get("patch_size", VIT_DEFAULTS["patch_size"]),
            enc_dim=width, enc_depth=depth, enc_heads=heads, enc_mlp_dim=4 * width,
            embed_dim=embed, proj_hidden=proj["hidden_dim"],
            pred_depth=pred["depth"], pred_heads=pred["heads"], pred_dim_head=pred["dim_head"],
            pred_mlp_dim=pred["mlp_dim"], dropout=float(pred["dropout"]), history=pred["num_frames"],
            action_smoothed_dim=act["smoothed_dim"], action_mlp_ratio=act["mlp_scale"],
        )
    except KeyError as e:
        raise ReleaseError(f"{source} lacks the setting {e.args[0]!r}; pass the config.json released "
                           "beside weights.pt") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A plain tensor ``state_dict`` from ``path``; pickled objects and other layouts are refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ReleaseError(
            f"{path} is not a plain tensor state_dict ({str(e).splitlines()[0]}); it may be a pickled model "
            "object, which is never loaded here: re-save it with torch.save(model.state_dict(), 'weights.pt')"
        ) from e
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict of other things"
        raise ReleaseError(f"{path} holds {kind}, not a state_dict of tensors; pass the released weights.pt "
                           "(torch.save(model.state_dict(), ...))")
    return state


def _release_files(source: Path, config: str | Path | None) -> tuple[Path, Path]:
    if source.is_dir():
        weights = source / WEIGHTS_FILE
        cfg = Path(config) if config else source / CONFIG_FILE
    else:
        weights, cfg = source, Path(config) if config else None
    if not weights.is_file():
        found = sorted(p.name for p in source.iterdir()) if source.is_dir() else []
        raise FileNotFoundError(f"no {WEIGHTS_FILE} at {weights} (found: {found or 'nothing'}); pass the folder "
                                "of an official release (weights.pt + config.json) or the weights.pt itself")
    if cfg is None:
        raise ReleaseError(f"{weights} is a bare weights file: pass its config.json with --config")
    if not cfg.is_file():
        raise FileNotFoundError(f"no {cfg.name} at {cfg}: an official release has one beside weights.pt; "
                                "pass it with --config")
    return weights, cfg


def import_release(source: str | Path, data: str | Path, out: str | Path, config: str | Path | None = None,
                   env_id: str | None = None) -> Path:
    """Turn an official release into a run folder ``out`` and return it.

    ``source``: a folder with ``weights.pt`` and ``config.json``, or a ``weights.pt`` (then ``config``
    names its config). ``data``: an episode store of the model's env (official or collected here);
    its action column fits the action normaliser. ``env_id`` is recorded for evaluation (default: the
    store's). Everything is checked before ``out`` is created; an existing ``out`` is refused.
    """
    from lewm_agent.data.store import EpisodeStore
    from lewm_agent.model import LeWM
    from lewm_agent.spaces import ActionCodec

    source, out = Path(source), Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new folder for the imported run")
    weights_path, config_path = _release_files(source, config)
    try:
        official = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReleaseError(f"{config_path} is not valid JSON ({e})") from e
    if not isinstance(official, dict):
        raise ReleaseError(f"{config_path} holds {type(official).__name__}, not an official LeWM model config")
    with EpisodeStore(data) as store:
        spec = store.action_spec
        rows = int((store.ep_offset + store.ep_len).max()) if store.num_episodes else 0
        if rows == 0:
            raise ReleaseError(f"{data} holds no episode; the action normaliser needs its action column")
        actions = store.read("action", slice(0, rows))
        data_meta = {"env_id": env_id or store.env_id, "path": str(Path(data).resolve()),
                     "num_episodes": int(store.num_episodes)}
    model_config = config_from_official(official, spec.feature_dim, str(config_path))
    model = LeWM(model_config)
    state, origin = map_official_state(read_weights(weights_path))
    _check_keys(model, state, origin, weights_path, config_path)
    model.load_state_dict(state)
    codec = ActionCodec.fit(spec, actions)
    paper = asdict(preset_config("paper", model_config.action_dim, model_config.action_block))
    data_meta.update(frameskip=model_config.action_block, history=model_config.history,
                     image_size=model_config.image_size)
    train = {"imported_from": str(weights_path.resolve()),
             "config": {"preset": "paper" if paper == asdict(model_config) else "custom"}}
    return Run(out).save(model, codec, data=data_meta, train=train)


def _check_keys(model: torch.nn.Module, state: dict, origin: dict, weights: Path, config: Path) -> None:
    """Every tensor the config's architecture needs is in the weights with its shape, and no other."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(origin.get(k, k) for k in set(state) - set(expected))
    shapes = [f"{origin.get(k, k)}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("tensors the config needs but the weights lack", missing),
                                    ("tensors in the weights the config has no place for", unexpected),
                                    ("shapes in the weights vs the config", shapes)) if keys]
        raise ReleaseError(f"{weights} does not match {config}: " + "; ".join(parts)
                           + ". Pass the config.json released with these weights (--config).")
