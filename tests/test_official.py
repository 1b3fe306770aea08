"""`lewm import`: official releases (weights.pt + config.json, both transformers layouts) become run
folders that plan, describe, evaluate and fine-tune; bad releases are refused and nothing is written.

The official files are built here from the official module layout (key names and shapes of the
JEPA / ARPredictor / Embedder / MLP modules and of transformers' ViTModel), independently of the
mapping under test; the encoder's numerics are checked against transformers' own ViTModel.
"""

import json

import h5py
import numpy as np
import pytest
import torch

from lewm_agent.model import LeWM
from lewm_agent.official import ReleaseError, import_release, map_official_state
from lewm_agent.runs import Run

transformers = pytest.importorskip("transformers")

# transformers 5 ViT names -> transformers 4 names (the inverse of transformers' own ViTModel renames).
V5_TO_V4 = [("layers.", "encoder.layer."), ("attention.q_proj", "attention.attention.query"),
            ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
            ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense")]
PAPER_CONFIG = {
    "_target_": "jepa.JEPA",
    "encoder": {"_target_": "stable_pretraining.backbone.utils.vit_hf", "size": "tiny", "patch_size": 14,
                "image_size": 224, "pretrained": False, "use_mask_token": False},
    "predictor": {"_target_": "module.ARPredictor", "num_frames": 3, "input_dim": 192, "hidden_dim": 192,
                  "output_dim": 192, "depth": 6, "heads": 16, "mlp_dim": 2048, "dim_head": 64, "dropout": 0.1,
                  "emb_dropout": 0.0},
    "action_encoder": {"_target_": "module.Embedder", "input_dim": 10, "emb_dim": 192},
    "projector": {"_target_": "module.MLP", "input_dim": 192, "output_dim": 192, "hidden_dim": 2048},
    "pred_proj": {"_target_": "module.MLP", "input_dim": 192, "output_dim": 192, "hidden_dim": 2048},
}


def small_config(depth=1, image=28, action_in=10):
    """An official config with a small predictor and 28-px frames (the ViT-Tiny itself is fixed)."""
    cfg = json.loads(json.dumps(PAPER_CONFIG))
    cfg["encoder"]["image_size"] = image
    cfg["predictor"].update(input_dim=16, hidden_dim=16, output_dim=16, depth=depth, heads=2, mlp_dim=32,
                            dim_head=8)
    cfg["action_encoder"].update(input_dim=action_in, emb_dim=16)
    cfg["projector"].update(output_dim=16, hidden_dim=32)
    cfg["pred_proj"].update(input_dim=16, output_dim=16, hidden_dim=32)
    return cfg


def hf_vit(cfg, seed=0):
    enc = cfg["encoder"]
    torch.manual_seed(seed)
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                    intermediate_size=768, image_size=enc["image_size"], patch_size=enc["patch_size"])
    return transformers.ViTModel(config, add_pooling_layer=False, use_mask_token=False).eval()


def official_state(cfg, layout="v5", seed=0) -> dict[str, torch.Tensor]:
    """A state_dict with the official JEPA's key names and shapes for ``cfg``, random values."""
    vit = hf_vit(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    enc = {}
    for k, v in vit.state_dict().items():
        if layout == "v4":
            for new, old in V5_TO_V4:
                k = k.replace(new, old)
        enc[f"encoder.{k}"] = v
    p, a, pr, pp = cfg["predictor"], cfg["action_encoder"], cfg["projector"], cfg["pred_proj"]
    d, inner = p["hidden_dim"], p["heads"] * p["dim_head"]
    shapes = {"predictor.pos_embedding": (1, p["num_frames"], d),
              "predictor.transformer.norm.weight": (d,), "predictor.transformer.norm.bias": (d,)}
    for i in range(p["depth"]):
        b = f"predictor.transformer.layers.{i}."
        shapes.update({
            b + "attn.norm.weight": (d,), b + "attn.norm.bias": (d,), b + "attn.to_qkv.weight": (3 * inner, d),
            b + "attn.to_out.0.weight": (d, inner), b + "attn.to_out.0.bias": (d,),
            b + "mlp.net.0.weight": (d,), b + "mlp.net.0.bias": (d,),
            b + "mlp.net.1.weight": (p["mlp_dim"], d), b + "mlp.net.1.bias": (p["mlp_dim"],),
            b + "mlp.net.4.weight": (d, p["mlp_dim"]), b + "mlp.net.4.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,),
        })
    smooth, emb = a.get("smoothed_dim", 10), a["emb_dim"]
    shapes.update({"action_encoder.patch_embed.weight": (smooth, a["input_dim"], 1),
                   "action_encoder.patch_embed.bias": (smooth,),
                   "action_encoder.embed.0.weight": (4 * emb, smooth), "action_encoder.embed.0.bias": (4 * emb,),
                   "action_encoder.embed.2.weight": (emb, 4 * emb), "action_encoder.embed.2.bias": (emb,)})
    for name, m in (("projector", pr), ("pred_proj", pp)):
        h = m["hidden_dim"]
        shapes.update({f"{name}.net.0.weight": (h, m["input_dim"]), f"{name}.net.0.bias": (h,),
                       f"{name}.net.1.weight": (h,), f"{name}.net.1.bias": (h,),
                       f"{name}.net.1.running_mean": (h,), f"{name}.net.3.weight": (m["output_dim"], h),
                       f"{name}.net.3.bias": (m["output_dim"],)})
    state = {k: 0.05 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    for name in ("projector", "pred_proj"):
        h = cfg[name]["hidden_dim"]
        state[f"{name}.net.1.running_var"] = 0.5 + torch.rand(h, generator=gen)
        state[f"{name}.net.1.num_batches_tracked"] = torch.tensor(7)
    return {**enc, **state}


def write_release(folder, cfg, layout="v5", state=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(official_state(cfg, layout) if state is None else state, folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write_store(path, width=2, episodes=4, length=30, size=28):
    """An official-layout store (no env attributes), continuous actions with a NaN last row."""
    rng = np.random.default_rng(0)
    n = episodes * length
    action = rng.normal(0.3, 2.0, (n, width)).astype(np.float32)
    action[length - 1 :: length] = np.nan
    with h5py.File(path, "w") as f:
        f["pixels"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        f["action"] = action
        f["ep_len"] = np.full(episodes, length, np.int32)
        f["ep_offset"] = np.arange(0, n, length, dtype=np.int64)
    return path, action


@pytest.mark.parametrize("layout", ["v4", "v5"])
def test_both_transformers_layouts_map_onto_the_paper_preset(layout):
    state, _ = map_official_state(official_state(PAPER_CONFIG, layout))
    expected = LeWM.from_preset("paper", action_dim=2).state_dict()
    assert sorted(state) == sorted(expected)  # no missing, no unexpected key
    assert all(state[k].shape == v.shape for k, v in expected.items())


def test_encoder_gives_the_cls_features_of_transformers_vit():
    cfg = json.loads(json.dumps(PAPER_CONFIG))
    official = official_state(cfg)
    mapped, _ = map_official_state(official)
    model = LeWM.from_preset("paper", action_dim=2)
    model.load_state_dict(mapped)
    vit = hf_vit(cfg)  # the same seed, so the same encoder weights as in `official`
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs = vit(pixel_values=images).last_hidden_state[:, 0]
        ours = model.encoder.eval()(images)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_import_writes_a_run_that_plans_describes_and_fine_tunes(tmp_path, capsys):
    from lewm_agent.agent import LeWMAgent
    from lewm_agent.cli import main

    cfg = small_config()
    release = write_release(tmp_path / "release", cfg, layout="v4")
    data, action = write_store(tmp_path / "data.h5")
    assert main(["import", str(release), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--env", "lewm/TwoRoom-v0"]) == 0
    run = Run(tmp_path / "run")
    model, codec, config = run.load(device="cpu")
    valid = action[~np.isnan(action).any(1)]
    np.testing.assert_allclose(codec.mean, valid.mean(0), rtol=1e-5)  # NaN rows excluded
    np.testing.assert_allclose(codec.std, valid.std(0), rtol=1e-5)
    assert config["data"]["env_id"] == "lewm/TwoRoom-v0" and config["model"]["action_block"] == 5
    assert config["train"]["config"]["preset"] == "custom"
    official = torch.load(release / "weights.pt", weights_only=True)
    assert torch.equal(model.predictor.pos_embed, official["predictor.pos_embedding"])
    assert torch.equal(model.projector.net[1].running_var, official["projector.net.1.running_var"])

    assert main(["info", str(run.path)]) == 0
    assert "imported:   from" in capsys.readouterr().out

    agent = LeWMAgent.load(run.path, device="cpu", num_samples=8, iterations=2, topk=2)
    obs = {"pixels": np.zeros((28, 28, 3), np.uint8), "goal": np.full((28, 28, 3), 255, np.uint8)}
    assert agent.act(obs).shape == (2,)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    common = ["train", str(data), "--out", str(run.path), "--batch-size", "4", "--lr", "1e-3"]
    assert main([*common, "--steps", "2"]) == 0
    assert "fine-tuning the model imported from" in capsys.readouterr().out
    tuned, codec2, config = run.load(device="cpu")
    assert config["train"]["step"] == 2 and config["train"]["imported_from"]
    assert codec2.state_dict() == codec.state_dict()  # the normaliser the model was trained with stays
    assert not torch.equal(tuned.predictor.pos_embed, before["predictor.pos_embed"])
    assert main([*common, "--steps", "3"]) == 0  # and then resumes like any run
    assert run.read_config()["train"]["step"] == 3


def test_bare_weights_need_and_take_a_config(tmp_path, capsys):
    from lewm_agent.cli import main

    release = write_release(tmp_path / "release", small_config(), layout="v5")
    (release / "config.json").rename(tmp_path / "model_config.json")
    data, _ = write_store(tmp_path / "data.h5")
    args = ["import", str(release / "weights.pt"), "--data", str(data), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "pass its config.json with --config" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*args, "--config", str(tmp_path / "model_config.json")]) == 0


def _refused(tmp_path, match, cfg=None, state=None, width=2, store_size=28, source=None):
    cfg = cfg or small_config()
    release = source or write_release(tmp_path / "release", cfg, state=state)
    data, _ = write_store(tmp_path / "data.h5", width=width, size=store_size)
    with pytest.raises((ReleaseError, FileNotFoundError, FileExistsError), match=match):
        import_release(release, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_refuses_a_pickled_object(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    torch.save(torch.nn.Linear(2, 2), release / "weights.pt")  # a whole module, not a state_dict
    (release / "config.json").write_text(json.dumps(small_config()))
    _refused(tmp_path, "not a plain tensor state_dict.*never loaded", source=release)


def test_refuses_a_config_that_does_not_describe_the_weights(tmp_path):
    state = official_state(small_config(depth=1))
    _refused(tmp_path, r"does not match.*config needs but the weights lack \(\d+\): predictor\.blocks\.1",
             cfg=small_config(depth=2), state=state)
    wider = small_config()
    wider["projector"]["hidden_dim"] = wider["pred_proj"]["hidden_dim"] = 64
    _refused(tmp_path, r"shapes in the weights vs the config.*projector\.net\.0\.weight: \(32, 192\) vs \(64, 192\)",
             cfg=wider, state=official_state(small_config()))


def test_refuses_extra_tensors(tmp_path):
    state = {**official_state(small_config()), "encoder.pooler.dense.weight": torch.zeros(192, 192)}
    _refused(tmp_path, r"no place for \(1\): encoder\.pooler\.dense\.weight", state=state)


def test_refuses_another_architecture(tmp_path):
    cfg = small_config()
    cfg["predictor"]["hidden_dim"] = 32  # the official code then adds input/output projections
    _refused(tmp_path, "predictor.hidden_dim is 32, this package's LeWM needs 16", cfg=cfg)
    not_lewm = {"encoder": {"size": "tiny"}, "decoder": {}}
    _refused(tmp_path, r"not an official LeWM model config: it lacks the section\(s\) \['predictor'", cfg=not_lewm,
             state=official_state(small_config()))


def test_refuses_a_store_of_another_action_width(tmp_path):
    _refused(tmp_path, "input_dim=10.*store's actions are 3 wide", width=3)


def test_refuses_missing_files_and_an_existing_out(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, "no weights.pt", source=tmp_path / "empty")
    release = write_release(tmp_path / "release", small_config())
    (release / "config.json").unlink()
    _refused(tmp_path, "no config.json", source=release)
    data, _ = write_store(tmp_path / "data.h5")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        import_release(release, data, tmp_path / "taken")
