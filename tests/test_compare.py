"""The comparison: every agent kind on the same episodes, counts that match a direct run, SB3 models
that SB3 itself reloads, GCBC that resumes exactly, a resumable compare, and bad input refused early."""

import json
import shutil

import gymnasium as gym
import lewm_envs  # noqa: F401  (registers the lewm/ ids)
import numpy as np
import pytest
import safetensors.torch
from stable_baselines3 import PPO

from lewm_agent.baselines import PolicyAgent
from lewm_agent.baselines.gcbc import GCBCAgent, train_gcbc
from lewm_agent.baselines.sb3 import SB3Agent, make_baseline_env, train_sb3
from lewm_agent.config import BaselineConfig, GCBCConfig, Protocol
from lewm_agent.data.collector import collect
from lewm_agent.data.store import EpisodeStore
from lewm_agent.evaluation import compare as compare_module
from lewm_agent.evaluation import dataset_episodes, make_env_factory, run_episodes
from lewm_agent.evaluation.compare import compare, parse_agent, wilson_interval
from lewm_agent.wrappers import DenseGoalReward

TWOROOM, MINIGRID = "lewm/TwoRoom-v0", "lewm/MiniGrid-MultiRoom-v0"
PROTOCOL = Protocol(episodes=4, goal_offset=5, budget=8, seed=3)
TINY_PPO = {"n_steps": 32, "batch_size": 32, "n_epochs": 1}


@pytest.fixture(scope="module")
def tworoom_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tworoom")
    train = collect(TWOROOM, 6, policy="expert:0.5", out=root / "train.h5", seed=0, progress=False)
    held = collect(TWOROOM, 6, policy="expert:0.5", out=root / "held.h5", seed=99, progress=False)
    return train, held


@pytest.fixture(scope="module")
def ppo_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    train_sb3(BaselineConfig(algo="ppo", env=TWOROOM, out=str(out), steps=64, n_envs=2, save_every=32,
                             progress=False, algo_kwargs=TINY_PPO))
    return out / "model.zip"


@pytest.fixture(scope="module")
def gcbc_run(tmp_path_factory, tworoom_data):
    out = tmp_path_factory.mktemp("gcbc") / "run"
    train_gcbc(GCBCConfig(data=str(tworoom_data[0]), out=str(out), steps=4, batch_size=8, image_size=32,
                          save_every=2, progress=False))
    return out


def test_parse_agent_forms(tmp_path, ppo_zip, gcbc_run):
    assert parse_agent("random") == ("random", "policy", "random")
    assert parse_agent("noisy=expert:0.3") == ("noisy", "policy", "expert:0.3")
    assert parse_agent(str(ppo_zip)) == (ppo_zip.parent.name, "sb3", str(ppo_zip))
    assert parse_agent(str(gcbc_run))[1:] == ("gcbc", str(gcbc_run))
    with pytest.raises(ValueError, match="unknown agent 'dqn'"):
        parse_agent("dqn")
    with pytest.raises(ValueError, match="does not exist"):
        parse_agent(f"sb3:{tmp_path / 'missing.zip'}")


def test_wilson_interval_known_values():
    low, high = wilson_interval(40, 50)
    assert (round(low, 1), round(high, 1)) == (67.0, 88.8)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 100


def test_sb3_model_saves_reloads_with_sb3_and_resumes(tmp_path):
    out = tmp_path / "ppo"
    cfg = dict(algo="ppo", env=TWOROOM, out=str(out), n_envs=2, save_every=32, progress=False, algo_kwargs=TINY_PPO)
    train_sb3(BaselineConfig(steps=64, reward="dense", **cfg))
    model = PPO.load(out / "model.zip")  # SB3's own loader
    assert model.num_timesteps == 64 and set(model.observation_space.spaces) == {"pixels", "goal"}
    record = json.loads((out / "baseline.json").read_text())
    assert record["env_steps"] == 64 and record["settings"]["reward"] == "dense"
    train_sb3(BaselineConfig(steps=128, reward="dense", **cfg))  # continues: 64 more steps, not 128
    assert PPO.load(out / "model.zip").num_timesteps == 128
    assert json.loads((out / "baseline.json").read_text())["seconds"] > record["seconds"]
    before = (out / "model.zip").read_bytes()
    with pytest.raises(ValueError, match="other settings"):  # another reward into the same folder
        train_sb3(BaselineConfig(steps=192, reward="sparse", **cfg))
    assert (out / "model.zip").read_bytes() == before


def test_dense_reward_is_the_scaled_distance_plus_success():
    env = DenseGoalReward(gym.make(TWOROOM, image_size=32))
    env.reset(seed=0, options={"state": np.array([30.0, 150.0]), "goal_state": np.array([60.0, 150.0])})
    _, reward, *_ = env.step(np.array([1.0, 0.0], np.float32))  # 30 -> 25 px from the goal
    assert reward == pytest.approx(-25.0 / env.scale, rel=1e-3)
    assert env.scale == pytest.approx(np.hypot(224, 224), rel=1e-3)


def test_every_agent_kind_runs_on_the_same_episodes_and_counts_match(tmp_path, tworoom_data, ppo_zip, gcbc_run,
                                                                      monkeypatch):
    seen = []
    real = compare_module.run_episodes

    def spy(policy, make_env, specs, *args, **kwargs):
        seen.append([(s.source, s.reset_seed) for s in specs])
        return real(policy, make_env, specs, *args, **kwargs)

    monkeypatch.setattr(compare_module, "run_episodes", spy)
    held = tworoom_data[1]
    report = compare(["random", "expert", str(ppo_zip), f"bc={gcbc_run}"], tmp_path / "cmp", data=held,
                     protocol=PROTOCOL, videos=2, progress=False)
    assert len(seen) == 4 and all(s == seen[0] for s in seen)  # the very same start/goal pairs for all
    assert list(report["agents"]) == ["random", "expert", ppo_zip.parent.name, "bc"]
    # The counts equal a direct run of the same policy on the same episodes.
    with EpisodeStore(held) as store:
        specs = dataset_episodes(store, PROTOCOL)
    make_env = make_env_factory(TWOROOM, 64)
    env = make_env()
    direct, _ = run_episodes(PolicyAgent.make("expert", env, env_id=TWOROOM, seed=PROTOCOL.seed), make_env, specs,
                             PROTOCOL.budget, progress=False)
    expert = report["agents"]["expert"]
    assert expert["successes"] == sum(r.success for r in direct)
    assert [e["success"] for e in expert["per_episode"]] == [r.success for r in direct]
    assert tuple(expert["ci95"]) == wilson_interval(expert["successes"], 4)
    on_disk = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert on_disk["agents"]["bc"]["kind"] == "gcbc" and on_disk["agents"]["bc"]["offline_transitions"] > 0
    assert on_disk["agents"][ppo_zip.parent.name]["env_steps"] == 64
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert f"| expert | expert | {expert['success_rate']:.0f}% ({expert['successes']}/4)" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    assert len(report["videos"]) == 2

    # Resuming: agents already evaluated on this protocol are not run again; a new one is.
    seen.clear()
    again = compare(["random", "expert", str(ppo_zip), f"bc={gcbc_run}", "expert:0.5"], tmp_path / "cmp", data=held,
                    protocol=PROTOCOL, videos=2, progress=False)
    assert len(seen) == 1 and again["agents"]["expert"] == json.loads(json.dumps(expert))
    with pytest.raises(ValueError, match="another env, protocol or data: its protocol, episodes differ"):
        compare(["random"], tmp_path / "cmp", data=held, protocol=Protocol(episodes=3, goal_offset=5, budget=8),
                progress=False)


def test_an_agent_trained_further_is_evaluated_again(tmp_path, tworoom_data, gcbc_run, monkeypatch, capsys):
    # A stored result stands for the agent as it was: after more training (another describe(), here
    # its training seconds) the comparison runs it again instead of keeping the stale number.
    runs = []
    real = compare_module.run_episodes
    monkeypatch.setattr(compare_module, "run_episodes", lambda policy, *a, **k: runs.append(policy) or real(policy, *a, **k))
    run = tmp_path / "gcbc"
    shutil.copytree(gcbc_run, run)
    agents = ["random", f"bc={run}"]
    first = compare(agents, tmp_path / "cmp", data=tworoom_data[1], protocol=PROTOCOL, videos=0, progress=False)
    compare(agents, tmp_path / "cmp", data=tworoom_data[1], protocol=PROTOCOL, videos=0, progress=False)
    assert len(runs) == 2  # nothing changed: nothing run again
    train_gcbc(GCBCConfig(data=str(tworoom_data[0]), out=str(run), steps=6, batch_size=8, image_size=32,
                          save_every=2, progress=False))
    again = compare(agents, tmp_path / "cmp", data=tworoom_data[1], protocol=PROTOCOL, videos=0, progress=False)
    assert len(runs) == 3 and "bc changed since" in capsys.readouterr().out
    assert again["agents"]["bc"]["train_seconds"] != first["agents"]["bc"]["train_seconds"]
    assert again["agents"]["random"] == json.loads(json.dumps(first["agents"]["random"]))


def test_a_moved_comparison_keeps_its_results_and_other_data_is_refused(tmp_path, tworoom_data, monkeypatch):
    runs = []
    real = compare_module.run_episodes
    monkeypatch.setattr(compare_module, "run_episodes", lambda policy, *a, **k: runs.append(policy) or real(policy, *a, **k))
    compare(["random", "expert"], tmp_path / "a" / "cmp", data=tworoom_data[1], protocol=PROTOCOL, videos=0,
            progress=False)
    shutil.copytree(tmp_path / "a" / "cmp", tmp_path / "b" / "cmp")
    shutil.copy(tworoom_data[1], tmp_path / "b" / "held.h5")
    moved = compare(["random", "expert"], tmp_path / "b" / "cmp", data=tmp_path / "b" / "held.h5", protocol=PROTOCOL,
                    videos=0, progress=False)
    assert len(runs) == 2  # the same episodes in another place: nothing evaluated again
    assert moved["data"] == str((tmp_path / "b" / "held.h5").resolve())
    # A report written before digests were stored can only be matched by the data's path.
    old = json.loads((tmp_path / "a" / "cmp" / "results.json").read_text())
    del old["data_digest"]
    (tmp_path / "c" / "cmp").mkdir(parents=True)
    (tmp_path / "c" / "cmp" / "results.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="its data differ .*written before data digests"):
        compare(["random"], tmp_path / "c" / "cmp", data=tmp_path / "b" / "held.h5", protocol=PROTOCOL, progress=False)
    # Other episodes under the same name are other data.
    (tmp_path / "b" / "held.h5").unlink()
    collect(TWOROOM, 6, policy="expert:0.5", out=tmp_path / "b" / "held.h5", seed=7, progress=False)
    with pytest.raises(ValueError, match="another env, protocol or data: its data_digest"):
        compare(["random"], tmp_path / "b" / "cmp", data=tmp_path / "b" / "held.h5", protocol=PROTOCOL, progress=False)


def test_gcbc_resumes_exactly_and_acts_in_the_action_space(tmp_path, tworoom_data):
    cfg = dict(data=str(tworoom_data[0]), batch_size=8, image_size=32, save_every=2, progress=False)
    train_gcbc(GCBCConfig(out=str(tmp_path / "once"), steps=6, **cfg))
    train_gcbc(GCBCConfig(out=str(tmp_path / "twice"), steps=2, **cfg))
    train_gcbc(GCBCConfig(out=str(tmp_path / "twice"), steps=6, **cfg))
    a = safetensors.torch.load_file(tmp_path / "once" / "model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "twice" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    agent = GCBCAgent(tmp_path / "once")
    env = gym.make(TWOROOM)
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(agent.act(obs))
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    assert agent.act(batch).shape == (2, 2)
    with pytest.raises(ValueError, match="other settings"):  # another store into the same run
        train_gcbc(GCBCConfig(out=str(tmp_path / "once"), steps=8, **{**cfg, "data": str(tworoom_data[1])}))


def test_discrete_minigrid_baselines(tmp_path):
    data = collect(MINIGRID, 4, policy="random", out=tmp_path / "mg.h5", seed=0, progress=False)
    train_gcbc(GCBCConfig(data=str(data), out=str(tmp_path / "bc"), steps=2, batch_size=8, image_size=32,
                          save_every=2, progress=False))
    out = tmp_path / "ppo"
    train_sb3(BaselineConfig(algo="ppo", env=MINIGRID, out=str(out), steps=32, n_envs=1, progress=False,
                             algo_kwargs=TINY_PPO))
    report = compare(["random", str(tmp_path / "bc"), str(out / "model.zip")], tmp_path / "cmp",
                     protocol=Protocol(episodes=3, budget=5, seed=0), videos=0, progress=False)
    assert [r["episodes"] for r in report["agents"].values()] == [3, 3, 3]
    env = make_baseline_env(MINIGRID)
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(int(SB3Agent(out / "model.zip").act(obs)))


def test_bad_input_is_refused_before_any_work(tmp_path, tworoom_data, ppo_zip, gcbc_run):
    held = tworoom_data[1]
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="unknown agent"):
        compare(["random", "a2c"], out, data=held, protocol=PROTOCOL, progress=False)
    with pytest.raises(ValueError, match=f"trained on {TWOROOM}, not {MINIGRID}"):
        compare(["random", str(gcbc_run)], out, env_id=MINIGRID, protocol=PROTOCOL, progress=False)
    with pytest.raises(ValueError, match=f"trained on {TWOROOM}"):
        compare(["random", f"sb3:{ppo_zip}"], out, env_id=MINIGRID, protocol=PROTOCOL, progress=False)
    bare = tmp_path / "bare" / "model.zip"  # a TwoRoom SB3 model without its record: its spaces tell
    bare.parent.mkdir()
    bare.write_bytes(ppo_zip.read_bytes())
    with pytest.raises(ValueError, match="acts in"):
        compare(["random", str(bare)], out, env_id=MINIGRID, protocol=PROTOCOL, progress=False)
    with pytest.raises(ValueError, match="fewer than the 500 evaluation episodes"):
        compare(["random", "expert"], out, data=held, protocol=Protocol(episodes=500), progress=False)
    with pytest.raises(ValueError, match="share a label"):
        compare(["random", "random"], out, data=held, protocol=PROTOCOL, progress=False)
    with pytest.raises(ValueError, match="unknown baseline algorithm"):
        train_sb3(BaselineConfig(algo="dqn", env=TWOROOM, out=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="cannot make env"):
        train_sb3(BaselineConfig(algo="ppo", env="lewm/Nope-v0", out=str(tmp_path / "b")))
    assert not out.exists() and not (tmp_path / "b").exists()
