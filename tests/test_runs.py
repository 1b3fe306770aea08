"""Run folders: round trip, format versions, clear errors, the info summary, agent/planner sections."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from lewm_agent.model import LeWM
from lewm_agent.runs import CheckpointError, Run
from lewm_agent.spaces import ActionCodec, ActionSpec

TINY = {"image_size": 32, "patch_size": 16, "enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "enc_mlp_dim": 64,
        "embed_dim": 16, "proj_hidden": 32, "pred_depth": 1, "pred_heads": 2, "pred_dim_head": 8, "pred_mlp_dim": 32,
        "sigreg_num_proj": 32}
DATA = {"env_id": "lewm/TwoRoom-v0", "path": "data.h5", "num_episodes": 3, "frameskip": 5}
TRAIN = {"config": {"preset": "tiny"}, "epoch": 2, "step": 10,
         "val_loss": {"loss": 0.5, "pred_loss": 0.25, "sigreg_loss": 2.5}}


def _model_and_codec(seed=0):
    torch.manual_seed(seed)
    model = LeWM.from_preset("tiny", action_dim=2, **TINY)
    # One train-mode pass so the BatchNorm running statistics differ from their initial values.
    model.loss({"pixels": torch.randint(0, 256, (4, 4, 3, 32, 32), dtype=torch.uint8),
                "action": torch.randn(4, 4, 10)})
    spec = ActionSpec("continuous", 2, (-1.0, -1.0), (1.0, 1.0))
    return model, ActionCodec.fit(spec, np.random.default_rng(0).normal(size=(50, 2)))


def _saved(path, **sections):
    model, codec = _model_and_codec()
    Run(path).save(model, codec, data=DATA, train=TRAIN, **sections)
    return model, codec


def test_round_trip_same_outputs_and_buffers(tmp_path):
    model, codec = _saved(tmp_path)
    loaded, codec2, config = Run(tmp_path).load(device="cpu")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert not loaded.training
    model.eval()
    pixels = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(model.encode(pixels), loaded.encode(pixels))
    assert codec2.state_dict() == codec.state_dict()
    assert config["data"]["env_id"] == "lewm/TwoRoom-v0" and config["format_version"] == 2
    assert "agent" not in config and "planner" not in config  # defaults live in the agent and the planners
    assert sorted(p.name for p in tmp_path.iterdir()) == [Run.CONFIG, Run.WEIGHTS]  # no temp files left


def test_agent_and_planner_sections_are_separate(tmp_path):
    _saved(tmp_path, agent={"horizon": 4, "receding_horizon": 2}, planner={"name": "mppi", "num_samples": 64})
    config = Run(tmp_path).read_config()
    assert config["agent"] == {"horizon": 4, "receding_horizon": 2}
    assert config["planner"] == {"name": "mppi", "num_samples": 64}
    with pytest.raises(ValueError, match="not agent settings"):
        _saved(tmp_path / "bad", agent={"num_samples": 3})
    with pytest.raises(ValueError, match="needs a 'name'"):
        _saved(tmp_path / "bad", planner={"num_samples": 3})
    assert not (tmp_path / "bad").exists()


def test_format_1_is_read_with_its_planner_section_split(tmp_path):
    _saved(tmp_path)
    config = json.loads((tmp_path / Run.CONFIG).read_text())
    config.update(format_version=1, planner={"name": "cem", "horizon": 5, "num_samples": 300, "iterations": 30,
                                             "topk": 30, "receding_horizon": 5})
    (tmp_path / Run.CONFIG).write_text(json.dumps(config))
    config = Run(tmp_path).read_config()
    assert config["agent"] == {"horizon": 5, "receding_horizon": 5}
    assert config["planner"] == {"name": "cem", "num_samples": 300, "iterations": 30, "topk": 30}


def test_refuses_other_format_version(tmp_path):
    _saved(tmp_path)
    config = json.loads((tmp_path / Run.CONFIG).read_text())
    config.update(format_version=7, package_version="9.9.9")
    (tmp_path / Run.CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"format version 7.*9\.9\.9.*reads format versions \(1, 2\)"):
        Run(tmp_path).load()
    with pytest.raises(CheckpointError, match="format version 7"):
        Run(tmp_path).describe()


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Run(tmp_path / "nope").load()
    with pytest.raises(FileNotFoundError, match=f"{Run.CONFIG} is missing"):
        Run(tmp_path).load()
    _saved(tmp_path)
    (tmp_path / Run.WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=Run.WEIGHTS):
        Run(tmp_path).load()


def test_mismatched_weights(tmp_path):
    _saved(tmp_path)
    other = LeWM.from_preset("tiny", action_dim=3, **TINY)  # a different action width
    safetensors.torch.save_file(other.state_dict(), tmp_path / Run.WEIGHTS)
    with pytest.raises(CheckpointError, match="do not match.*wrong shape"):
        Run(tmp_path).load()


def test_truncated_weights_reported_by_load_and_info(tmp_path):
    _saved(tmp_path)
    path = tmp_path / Run.WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for call in (Run(tmp_path).load, Run(tmp_path).describe):
        with pytest.raises(CheckpointError, match="damaged"):
            call()


def test_cli_info_reports_damaged_weights(tmp_path, capsys):
    from lewm_agent.cli import main

    _saved(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    assert "weights read and match the config" in capsys.readouterr().out
    (tmp_path / Run.WEIGHTS).write_bytes(b"not safetensors")
    assert main(["info", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_describe(tmp_path):
    model, _ = _saved(tmp_path, planner={"name": "mppi"})
    text = Run(tmp_path).describe()
    assert f"{model.num_parameters():,} parameters" in text
    assert "lewm/TwoRoom-v0" in text and "continuous, dim 2" in text
    assert "2 epochs" in text and "last val loss 0.5000" in text
    assert "agent:      defaults" in text and "planner:    name=mppi" in text


def test_metrics_append_read_and_trim(tmp_path):
    run, columns = Run(tmp_path), ["epoch", "step", "loss"]
    assert run.metrics() == []
    for epoch in (1, 2, 3):
        run.append_metrics({"epoch": epoch, "step": 10 * epoch, "loss": 1 / epoch}, columns)
    run.trim_metrics(20, columns)
    assert [r["step"] for r in run.metrics()] == ["10", "20"]


def test_metrics_of_an_older_version_gain_the_new_columns(tmp_path):
    run = Run(tmp_path)
    run.append_metrics({"epoch": 1, "step": 10, "loss": 0.5}, ["epoch", "step", "loss"])
    run.append_metrics({"epoch": 2, "step": 20, "loss": 0.4, "straightness": 0.1},
                       ["epoch", "step", "loss", "straightness"])
    rows = run.metrics()
    assert [r["straightness"] for r in rows] == ["", "0.1"] and rows[0]["loss"] == "0.5"
