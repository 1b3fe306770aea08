"""The trainer: run folder contents, exact resume after an interruption, input checks that touch nothing."""

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from lewm_agent.runs import Run
from lewm_agent.train import TrainConfig, Trainer, train
from lewm_agent.train.trainer import METRIC_COLUMNS, epoch_batches, lr_factor

# A model small enough that an epoch of a few steps takes well under a second on a CPU.
TINY = {"image_size": 16, "patch_size": 8, "enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "enc_mlp_dim": 64,
        "embed_dim": 16, "proj_hidden": 32, "pred_depth": 1, "pred_heads": 2, "pred_dim_head": 8, "pred_mlp_dim": 32,
        "sigreg_num_proj": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are far too small to gain from intra-op threads, and on a busy machine the
    # threads' spin-waiting makes each step many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_store(path, episodes=6, length=30, size=16, seed=0):
    """An episode store in the official layout: concatenated columns indexed by ep_len / ep_offset,
    pixels (N, H, W, 3) uint8, action (N, 2) float32 with a NaN last row per episode."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    action = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    action[length - 1 :: length] = np.nan
    with h5py.File(path, "w") as f:
        f["pixels"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        f["action"] = action
        f["ep_len"] = np.full(episodes, length, np.int32)
        f["ep_offset"] = np.arange(0, n, length, dtype=np.int64)
    return str(path)


def make_cfg(tmp_path, out="run", **kw):
    data = tmp_path / "data.h5"
    if not data.exists():
        write_store(data)
    base = {"data": str(data), "out": str(tmp_path / out), "preset": "tiny", "epochs": 2, "batch_size": 8,
            "frameskip": 2, "val_fraction": 0.2, "progress": False, "model_overrides": dict(TINY)}
    return TrainConfig(**{**base, **kw})


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_folder_and_metrics(tmp_path):
    run = train(make_cfg(tmp_path))
    names = {p.name for p in run.iterdir()}
    assert {Run.CONFIG, Run.WEIGHTS, Run.TRAINER_STATE, Run.METRICS} <= names
    with open(run / Run.METRICS) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("train_loss", "val_loss", "lr"))
    _, codec, config = Run(run).load(device="cpu")
    assert config["train"]["epoch"] == 2 and config["data"]["frameskip"] == 2
    assert config["model"]["sigreg_weight"] == 0.09 and codec.spec.dim == 2
    state = torch.load(run / Run.TRAINER_STATE, weights_only=True)
    assert state["step"] == config["train"]["step"] == int(rows[-1]["step"])
    assert "2 epochs" in Run(run).describe()


def test_history_one_leaves_straightness_out_of_the_files(tmp_path, capsys):
    # Two-frame windows have no straightness: its cells stay empty and config.json stays strict JSON.
    run = train(make_cfg(tmp_path, history=1, epochs=1))
    with open(run / Run.METRICS) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["train_straightness"] == rows[0]["val_straightness"] == ""
    assert np.isfinite(float(rows[0]["val_loss"]))
    config = json.loads((run / Run.CONFIG).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in config.json"))
    assert "straightness" not in config["train"]["val_loss"] and config["model"]["history"] == 1
    said = capsys.readouterr()
    assert "straightness" not in said.out + said.err and "nan" not in (said.out + said.err).lower()


def test_resume_after_interrupt_is_exact(tmp_path, monkeypatch):
    straight = train(make_cfg(tmp_path, out="straight"))
    cfg = make_cfg(tmp_path, out="resumed")
    steps_per_epoch = json.loads((straight / Run.CONFIG).read_text())["train"]["step"] // 2

    real_step = Trainer._train_step

    def interrupt_in_epoch_two(self, batch):
        if self.step == steps_per_epoch + 1:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert json.loads((tmp_path / "resumed" / Run.CONFIG).read_text())["train"]["epoch"] == 1
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    resumed = train(cfg)

    a, _, _ = Run(straight).load(device="cpu")
    b, _, _ = Run(resumed).load(device="cpu")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    with open(resumed / Run.METRICS) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_more_epochs_continue_and_finished_run_is_left_alone(tmp_path):
    run = train(make_cfg(tmp_path, epochs=1))
    before = snapshot(run)
    train(make_cfg(tmp_path, epochs=1))  # nothing left to do
    assert snapshot(run) == before
    train(make_cfg(tmp_path, epochs=2))
    assert json.loads((run / Run.CONFIG).read_text())["train"]["epoch"] == 2


def test_steps_override_epochs_and_extend_mid_epoch(tmp_path):
    run = train(make_cfg(tmp_path, steps=3, epochs=50))
    config = json.loads((run / Run.CONFIG).read_text())
    assert (config["train"]["step"], config["train"]["epoch"], config["train"]["epoch_step"]) == (3, 0, 3)
    train(make_cfg(tmp_path, steps=20, tensorboard=True))  # continues inside epoch 1
    config = json.loads((run / Run.CONFIG).read_text())
    assert config["train"]["step"] == 20
    with open(run / Run.METRICS) as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3, 14, 20]
    assert any((run / "tensorboard").iterdir())


def test_different_settings_refused_without_touching_files(tmp_path):
    run = train(make_cfg(tmp_path, epochs=1))
    before = snapshot(run)
    for change, message in [({"lr": 1e-3}, "lr=5e-05 vs 0.001"),
                            ({"model_overrides": {**TINY, "embed_dim": 8}}, "embed_dim=16 vs 8"),
                            ({"frameskip": 3}, "frameskip=2 vs 3")]:
        with pytest.raises(ValueError, match=message):
            train(make_cfg(tmp_path, epochs=2, **change))
    other = tmp_path / "other.h5"
    write_store(other, seed=1)
    with pytest.raises(ValueError, match="action normaliser"):
        train(make_cfg(tmp_path, epochs=2, data=str(other)))
    assert snapshot(run) == before


def test_bad_inputs(tmp_path):
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a LeWM run"):
        train(make_cfg(tmp_path))
    assert snapshot(foreign) == {foreign.relative_to(foreign) / "notes.txt": b"mine"}

    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*paper"):
        train(make_cfg(tmp_path, out="a", preset="huge"))
    with pytest.raises(ValueError, match="action_dim=3"):
        train(make_cfg(tmp_path, out="a", model_overrides={**TINY, "action_dim": 3}))
    with pytest.raises(ValueError, match="longest selected episode: 30"):
        train(make_cfg(tmp_path, out="a", frameskip=10))
    with pytest.raises((FileNotFoundError, OSError)):
        train(make_cfg(tmp_path, out="a", data=str(tmp_path / "missing.h5")))
    assert not (tmp_path / "a").exists()


def test_tensorboard_missing_is_explained(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match=r"pip install \"lewm-agent\[tensorboard\]\""):
        train(make_cfg(tmp_path, tensorboard=True))
    assert not (tmp_path / "run").exists()


def test_lr_schedule_warmup_then_cosine_to_zero():
    total, warmup = 100, 10
    assert lr_factor(0, total, warmup) == pytest.approx(0.01)
    assert lr_factor(warmup, total, warmup) == pytest.approx(1.0)
    assert lr_factor(55, total, warmup) == pytest.approx(0.5)
    assert lr_factor(total, total, warmup) == pytest.approx(0.0)


def test_global_batches_do_not_depend_on_process_count():
    single = epoch_batches(50, 8, seed=0, epoch=3)
    ranks = [epoch_batches(50, 8, seed=0, epoch=3, rank=r, world=2) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single
    assert epoch_batches(50, 8, seed=0, epoch=4) != single


DDP_WORKER = """
import sys
from lewm_agent.train import TrainConfig, train
data, out, overrides = sys.argv[1], sys.argv[2], eval(sys.argv[3])
train(TrainConfig(data=data, out=out, preset="tiny", epochs=2, batch_size=8, frameskip=2, val_fraction=0.2,
                  progress=False, model_overrides=overrides))
"""


@pytest.mark.distributed
def test_torchrun_two_processes(tmp_path):
    import os
    import subprocess
    import sys

    data = write_store(tmp_path / "data.h5")
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port (--master_port=0 hung here on some runs).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), data, str(tmp_path / "ddp"), repr(TINY)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(make_cfg(tmp_path, out="single"))
    ddp = json.loads((tmp_path / "ddp" / Run.CONFIG).read_text())["train"]
    assert ddp["world_size"] == 2 and ddp["epoch"] == 2
    assert ddp["step"] == json.loads((single / Run.CONFIG).read_text())["train"]["step"]
    assert np.isfinite(ddp["val_loss"]["loss"])
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.suffix == ".tmp") == []


def test_precise_bn_makes_eval_mode_match_train_mode():
    """After recalibration the eval-mode BatchNorm statistics are the average batch statistics."""
    import torch

    from lewm_agent.model import LeWM
    from lewm_agent.train.precise_bn import recompute_batchnorm

    torch.manual_seed(0)
    model = LeWM.from_preset("tiny", action_dim=2, enc_depth=1, sigreg_num_proj=16)
    batches = [{"pixels": torch.randint(0, 256, (8, 4, 3, 64, 64), dtype=torch.uint8) // (k + 1),
                "action": torch.randn(8, 4, 10)} for k in range(3)]
    bn = model.projector.net[1]
    assert torch.all(bn.running_mean == 0)
    assert recompute_batchnorm(model, batches) == 3
    with torch.no_grad():
        hidden = [model.projector.net[0](model.encoder(
            (b["pixels"].flatten(0, 1).float() / 255 - model.pixel_mean) / model.pixel_std)) for b in batches]
    expected = torch.stack([h.mean(0) for h in hidden]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.1 and model.training  # momentum and mode are restored


def test_cli_train_takes_model_settings(tmp_path, capsys):
    from lewm_agent.cli import main

    data = write_store(tmp_path / "data.h5")
    tiny = [f"--set={k}={v}" for k, v in TINY.items()]
    common = [data, "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--frameskip", "2"]
    assert main(["train", *common, "--out", str(tmp_path / "run"), *tiny, "--set", "embed_dim=8"]) == 0
    assert Run(tmp_path / "run").read_config()["model"]["embed_dim"] == 8

    assert main(["train", *common, "--out", str(tmp_path / "bad"), "--set", "embed_size=8"]) == 2
    assert "unknown LeWMConfig settings ['embed_size']" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        main(["train", *common, "--out", str(tmp_path / "bad"), "--set", "embed_dim"])
    assert "KEY=VALUE" in capsys.readouterr().err
