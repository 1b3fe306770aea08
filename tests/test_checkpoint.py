"""Checkpoint folders: round trip, refusal of other format versions, clear errors, info summary."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from lewm_agent.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    describe_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lewm_agent.model import LeWM
from lewm_agent.spaces import ActionCodec, ActionSpec

TINY = {"image_size": 32, "patch_size": 16, "enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "enc_mlp_dim": 64,
        "embed_dim": 16, "proj_hidden": 32, "pred_depth": 1, "pred_heads": 2, "pred_dim_head": 8, "pred_mlp_dim": 32,
        "sigreg_num_proj": 32}
META = {"data": {"env_id": "lewm/TwoRoom-v0", "path": "data.h5", "num_episodes": 3, "frameskip": 5},
        "train": {"config": {"preset": "tiny"}, "epoch": 2, "step": 10,
                  "val_loss": {"loss": 0.5, "pred_loss": 0.25, "sigreg_loss": 2.5}}}


def _model_and_codec(seed=0):
    torch.manual_seed(seed)
    model = LeWM.from_preset("tiny", action_dim=2, **TINY)
    # One train-mode pass so the BatchNorm running statistics differ from their initial values.
    model.loss({"pixels": torch.randint(0, 256, (4, 4, 3, 32, 32), dtype=torch.uint8),
                "action": torch.randn(4, 4, 10)})
    spec = ActionSpec("continuous", 2, (-1.0, -1.0), (1.0, 1.0))
    return model, ActionCodec.fit(spec, np.random.default_rng(0).normal(size=(50, 2)))


def test_round_trip_same_outputs_and_buffers(tmp_path):
    model, codec = _model_and_codec()
    save_checkpoint(tmp_path, model, codec, META)
    loaded, codec2, config = load_checkpoint(tmp_path, device="cpu")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert not loaded.training
    model.eval()
    pixels = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(model.encode(pixels), loaded.encode(pixels))
    assert codec2.state_dict() == codec.state_dict()
    assert config["data"]["env_id"] == "lewm/TwoRoom-v0" and config["format_version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left


def test_refuses_other_format_version(tmp_path):
    model, codec = _model_and_codec()
    save_checkpoint(tmp_path, model, codec, META)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config.update(format_version=7, package_version="9.9.9")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"format version 7.*9\.9\.9.*reads format version 1"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="format version 7"):
        describe_checkpoint(tmp_path)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_FILE} is missing"):
        load_checkpoint(tmp_path)
    model, codec = _model_and_codec()
    save_checkpoint(tmp_path, model, codec, META)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_checkpoint(tmp_path)


def test_mismatched_weights(tmp_path):
    model, codec = _model_and_codec()
    save_checkpoint(tmp_path, model, codec, META)
    other = LeWM.from_preset("tiny", action_dim=3, **TINY)  # a different action width
    safetensors.torch.save_file(other.state_dict(), tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="do not match.*wrong shape"):
        load_checkpoint(tmp_path)


def test_describe(tmp_path):
    model, codec = _model_and_codec()
    save_checkpoint(tmp_path, model, codec, META)
    text = describe_checkpoint(tmp_path)
    assert f"{model.num_parameters():,} parameters" in text
    assert "lewm/TwoRoom-v0" in text and "continuous, dim 2" in text
    assert "2 epochs" in text and "last val loss 0.5000" in text
