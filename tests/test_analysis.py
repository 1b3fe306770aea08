"""Probes, surprise and straightness: known answers, no test episode in a fit, online equals offline,
a trained model is surprised by teleports, and bad input is refused before any work."""

import gymnasium as gym
import lewm_envs  # noqa: F401  (registers the lewm/ ids)
import numpy as np
import pytest
import torch

from lewm_agent.analysis import SurpriseTracker, probe, rollout_error, surprise_experiment, surprise_series
from lewm_agent.analysis.probe import Quantity, cross_validated, env_quantities, episode_folds, scores
from lewm_agent.data.store import EpisodeWriter
from lewm_agent.model import LeWM
from lewm_agent.model.straightness import temporal_straightness
from lewm_agent.runs import Run
from lewm_agent.spaces import ActionCodec, ActionSpec
from lewm_agent.wrappers import SurpriseWrapper

SMALL = {"image_size": 32, "patch_size": 8, "enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "enc_mlp_dim": 64,
         "embed_dim": 8, "proj_hidden": 32, "pred_depth": 1, "pred_heads": 2, "pred_dim_head": 8,
         "pred_mlp_dim": 32, "sigreg_num_proj": 32}
SPEC = ActionSpec("continuous", 2, (-1.0, -1.0), (1.0, 1.0))


def random_run(path, env_id="lewm/TwoRoom-v0", seed=0):
    torch.manual_seed(seed)
    model = LeWM.from_preset("tiny", action_dim=2, **SMALL).eval()
    codec = ActionCodec.fit(SPEC, np.random.default_rng(0).uniform(-1, 1, (100, 2)))
    Run(path).save(model, codec, data={"env_id": env_id, "frameskip": 5, "image_size": 32})
    return model, codec


def write_store(path, episodes=6, length=12, env_id="lewm/TwoRoom-v0", state=True):
    rng = np.random.default_rng(1)
    with EpisodeWriter(path, action_spec=SPEC, env_id=env_id) as w:
        for _ in range(episodes):
            cols = {"pixels": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8),
                    "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32)}
            if state:
                cols["state"] = rng.uniform(0, 200, (length, 4)).astype(np.float32)
            w.add_episode(cols)
    return path


# -- open-loop rollouts ---------------------------------------------------------------------------------


def test_rollout_error_is_the_distance_of_the_imagined_to_the_encoded_frames(tmp_path):
    model, codec = random_run(tmp_path / "run")
    for block in model.predictor.blocks:  # AdaLN-zero blocks start as the identity: make them act
        torch.nn.init.normal_(block.adaLN_modulation[1].weight, std=0.1)
    Run(tmp_path / "run").save(model, codec, data={"env_id": "lewm/TwoRoom-v0", "frameskip": 5, "image_size": 32})
    data = write_store(tmp_path / "data.h5", episodes=1, length=21)  # 4 blocks: starts 0 and 1 for 2 ahead
    report = rollout_error(tmp_path / "run", data, blocks=2)
    assert report["starts"] == 2 and [h["env_steps"] for h in report["horizons"]] == [5, 10]
    with torch.no_grad():
        from lewm_agent.data.store import EpisodeStore
        from lewm_agent.images import resize_images

        with EpisodeStore(data) as store:
            ep = store.episode(0)
        emb = model.encode(resize_images(ep["pixels"][::5], 32)[None])[0]
        acts = codec.encode(ep["action"][:20]).reshape(4, -1)
        # Start 1 sees the real frame and action before it, as the agent does when planning.
        pred = [model.rollout(emb[None, :1], acts[None, :0], acts[None, None, 0:2])[0, 0],
                model.rollout(emb[None, :2], acts[None, :1], acts[None, None, 1:3])[0, 0]]
    for k in (1, 2):
        error = np.mean([float((pred[t][k - 1] - emb[t + k]).square().sum()) for t in (0, 1)])  # median of two
        move = np.mean([float((emb[t] - emb[t + k]).square().sum()) for t in (0, 1)])
        np.testing.assert_allclose(report["horizons"][k - 1]["error"], error, rtol=1e-5)
        np.testing.assert_allclose(report["horizons"][k - 1]["move"], move, rtol=1e-5)
    assert {p.name for p in (tmp_path / "run" / "rollout").iterdir()} == {"rollout.json", "rollout.md"}
    assert "first_block_by_action" not in report  # continuous actions: no breakdown


def test_rollout_error_breaks_one_block_down_by_discrete_action(tmp_path):
    torch.manual_seed(0)
    spec = ActionSpec("discrete", 3, None, None)
    model = LeWM.from_preset("tiny", action_dim=3, action_block=1, **SMALL).eval()
    for block in model.predictor.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[1].weight, std=0.1)
    codec = ActionCodec.fit(spec, np.zeros((10, 1), np.float32))
    Run(tmp_path / "run").save(model, codec, data={"env_id": "lewm/MiniGrid-MultiRoom-v0", "frameskip": 1,
                                                  "image_size": 32})
    rng = np.random.default_rng(2)
    actions = np.array([0, 2, 2, 1, 2, 0, 1, 2, 2], np.float32)[:, None]
    pixels = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    with EpisodeWriter(tmp_path / "mg.h5", action_spec=spec, env_id="lewm/MiniGrid-MultiRoom-v0") as w:
        w.add_episode({"pixels": pixels, "action": actions})
    report = rollout_error(tmp_path / "run", tmp_path / "mg.h5", blocks=1)
    with torch.no_grad():
        emb = model.encode(torch.as_tensor(pixels).permute(0, 3, 1, 2)[None])[0]
        acts = codec.encode(actions)
        errors = {}
        for t in range(report["starts"]):  # each start with its real history, up to 3 frames
            h = min(t + 1, 3)
            pred = model.rollout(emb[None, t - h + 1:t + 1], acts[None, t - h + 1:t], acts[None, None, t:t + 1])
            errors.setdefault(int(actions[t, 0]), []).append(float((pred[0, 0, 0] - emb[t + 1]).square().sum()))
    rows = report["first_block_by_action"]
    assert [r["action"] for r in rows] == sorted(errors) and sum(r["starts"] for r in rows) == report["starts"]
    for r in rows:
        np.testing.assert_allclose(r["error"], np.median(errors[r["action"]]), rtol=1e-5)
    assert "by the action taken" in (tmp_path / "run" / "rollout" / "rollout.md").read_text()


def test_rollout_error_refuses_bad_input(tmp_path):
    random_run(tmp_path / "run")
    with pytest.raises(ValueError, match="lasts more than 4 blocks"):
        rollout_error(tmp_path / "run", write_store(tmp_path / "short.h5", length=21), blocks=4)
    with pytest.raises(ValueError, match="trained on lewm/TwoRoom-v0 but .* holds lewm/Reacher-v0"):
        rollout_error(tmp_path / "run", write_store(tmp_path / "reacher.h5", env_id="lewm/Reacher-v0"))
    with pytest.raises(ValueError, match="blocks"):
        rollout_error(tmp_path / "run", write_store(tmp_path / "ok.h5"), blocks=0)


# -- probes --------------------------------------------------------------------------------------------


def test_linear_probe_recovers_a_linear_code_and_not_a_shuffled_target():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 30)
    position = rng.uniform(-1, 1, (600, 2))
    features = position @ rng.normal(size=(2, 16)) + 0.01 * rng.normal(size=(600, 16))
    folds = episode_folds(groups, 5, seed=0)
    assert scores(cross_validated(features, position, groups, folds, "linear"))["r"] > 0.999
    shuffled = rng.permutation(position)
    assert abs(scores(cross_validated(features, shuffled, groups, folds, "linear"))["r"]) < 0.1
    assert scores(cross_validated(features, position, groups, folds, "mlp", mlp_steps=300))["r"] > 0.95


def test_probes_never_see_test_episodes():
    # Each episode's target is a constant only its own one-hot feature can tell: a probe that saw the
    # test episode would predict it perfectly; one that did not cannot.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(25), 10)
    features = np.eye(25)[groups]
    target = rng.normal(size=(25, 1))[groups]
    folds = episode_folds(groups, 5, seed=0)
    for test in folds:
        assert not set(groups[test]) & set(groups[~test])  # whole episodes per fold
    assert sum(f.sum() for f in folds) == len(groups)
    for kind in ("linear", "mlp"):
        assert abs(scores(cross_validated(features, target, groups, folds, kind, mlp_steps=200))["r"]) < 0.5


def test_periodic_quantities_are_probed_as_sin_and_cos():
    q = Quantity("angle", "state", (0,), period=2 * np.pi)
    t = q.targets(np.array([[0.0], [2 * np.pi], [np.pi / 2]]))
    np.testing.assert_allclose(t[0], t[1], atol=1e-12)
    np.testing.assert_allclose(t[2], [1.0, 0.0], atol=1e-12)
    assert [x.name for x in env_quantities("lewm/PushT-v0")] == ["agent position", "block position", "block angle"]


def test_probe_writes_its_files_and_reports_both_encoders(tmp_path):
    random_run(tmp_path / "run")
    data = write_store(tmp_path / "data.h5")
    report = probe(tmp_path / "run", data, folds=3, mlp_steps=20)
    assert set(report["results"]["agent position"]) == {"LeWM", "random init"}
    assert report["straightness"]["LeWM"] is not None
    assert {p.name for p in (tmp_path / "run" / "probe").iterdir()} == {"probe.json", "probe.md", "probe.png"}


def test_probe_refuses_bad_input_before_any_work(tmp_path):
    random_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"no column\(s\) \['state'\]"):
        probe(tmp_path / "run", write_store(tmp_path / "nostate.h5", state=False))
    with pytest.raises(ValueError, match="trained on lewm/TwoRoom-v0 but .* holds lewm/Reacher-v0"):
        probe(tmp_path / "run", write_store(tmp_path / "reacher.h5", env_id="lewm/Reacher-v0"))
    with pytest.raises(ValueError, match="needs at least 5 episodes, the data has 3"):
        probe(tmp_path / "run", write_store(tmp_path / "few.h5", episodes=3))
    with pytest.raises(ValueError, match=r"reads state\[7\] but state has 4 values"):
        probe(tmp_path / "run", write_store(tmp_path / "d.h5"), quantities=[Quantity("x", "state", (7,))])
    assert not (tmp_path / "run" / "probe").exists()


# -- surprise --------------------------------------------------------------------------------------------


def test_online_wrapper_equals_offline_surprise(tmp_path):
    model, codec = random_run(tmp_path / "run")
    for wrapped in (SurpriseWrapper(gym.make("lewm/TwoRoom-v0", image_size=32), tmp_path / "run"),
                    SurpriseWrapper(gym.make("lewm/TwoRoom-v0", image_size=32), model, codec)):
        obs, info = wrapped.reset(seed=3)
        frames, actions, online = [obs["pixels"]], [], [info["surprise"]]
        rng = np.random.default_rng(0)
        for _ in range(23):
            action = rng.uniform(-1, 1, 2).astype(np.float32)
            obs, _, terminated, truncated, info = wrapped.step(action)
            frames.append(obs["pixels"])
            actions.append(action)
            online.append(info["surprise"])
        offline = surprise_series(model, codec, np.stack(frames), actions)
        assert np.isnan(online[:5]).all() and np.isnan(offline[:5]).all()  # no prediction before a frameskip
        np.testing.assert_allclose(online[5:], offline[5:], rtol=1e-4, atol=1e-7)


def test_tracker_needs_reset():
    model, codec = LeWM.from_preset("tiny", action_dim=2, **SMALL), ActionCodec.fit(SPEC, np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="before reset"):
        SurpriseTracker(model, codec).step(np.zeros(2), np.zeros((32, 32, 3), np.uint8))


class _NoPerturbEnv(gym.Env):
    observation_space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)})
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, image_size=32):
        pass

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return {"pixels": np.zeros((32, 32, 3), np.uint8)}, {}

    def step(self, action):
        return {"pixels": np.zeros((32, 32, 3), np.uint8)}, 0.0, False, False, {}


def test_surprise_refuses_bad_input_before_any_episode(tmp_path):
    random_run(tmp_path / "run")
    with pytest.raises(ValueError, match="trained on lewm/TwoRoom-v0, not lewm/Reacher-v0"):
        surprise_experiment(tmp_path / "run", env_id="lewm/Reacher-v0")
    with pytest.raises(ValueError, match="perturb_step 50 must lie in the episode"):
        surprise_experiment(tmp_path / "run", perturb_step=50, length=30)
    with pytest.raises(ValueError, match="perturb_step 2 must lie in the episode"):
        surprise_experiment(tmp_path / "run", perturb_step=2)
    with pytest.raises(ValueError, match="episodes must be >= 2"):
        surprise_experiment(tmp_path / "run", episodes=1)
    gym.register("test/NoPerturb-v0", entry_point=_NoPerturbEnv)
    random_run(tmp_path / "other", env_id="test/NoPerturb-v0")
    with pytest.raises(ValueError, match="has no perturb"):
        surprise_experiment(tmp_path / "other", policy="random")
    assert not (tmp_path / "run" / "surprise").exists()


def test_trained_model_is_surprised_by_teleports(tmp_path):
    from lewm_agent.data.collector import collect
    from lewm_agent.train import TrainConfig, train

    data = collect("lewm/TwoRoom-v0", 120, policy="expert:1.0", out=tmp_path / "d.h5", image_size=32,
                   progress=False)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), preset="tiny", steps=400, batch_size=32,
                            lr=1e-3, image_size=32, progress=False,
                            model_overrides={k: v for k, v in SMALL.items() if k != "image_size"}))
    report = surprise_experiment(run, episodes=16, progress=False)
    assert report["tests"]["teleport"]["p_value"] < 0.01
    assert report["tests"]["teleport"]["mean_perturbed"] > 2 * report["tests"]["teleport"]["mean_unperturbed"]
    assert {p.name for p in (run / "surprise").iterdir()} == {"surprise.json", "surprise.md", "surprise.png"}


# -- straightness -------------------------------------------------------------------------------------------


def test_straightness_of_lines_and_zigzags():
    t = torch.arange(6.0)[None, :, None]
    line = torch.cat([t, 2 * t], dim=-1)
    assert temporal_straightness(line) == pytest.approx(1.0)
    zigzag = torch.tensor([[[0.0], [1.0], [0.0], [1.0], [0.0]]])
    assert temporal_straightness(zigzag) == pytest.approx(-1.0)
    model = LeWM.from_preset("tiny", action_dim=2, **SMALL)
    out = model.loss({"pixels": torch.randint(0, 256, (4, 4, 3, 32, 32), dtype=torch.uint8),
                      "action": torch.randn(4, 4, 10)})
    assert -1 <= float(out["straightness"]) <= 1 and not out["straightness"].requires_grad


def test_history_one_trains_and_logs_no_straightness():
    # Windows of two frames have one latent velocity: the loss trains, straightness is NaN.
    model = LeWM.from_preset("tiny", action_dim=2, **{**SMALL, "history": 1})
    out = model.loss({"pixels": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8),
                      "action": torch.randn(4, 2, 10)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isnan(out["straightness"])
