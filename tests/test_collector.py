"""Collector and behaviour policies: frame/action alignment, determinism, shards, resume, errors."""

import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import h5py
import numpy as np
import pytest
from gymnasium import spaces

from lewm_agent.data import collector
from lewm_agent.data.collector import collect, episode_seeds, shard_episodes
from lewm_agent.data.policies import RandomPolicy, make_policy
from lewm_agent.data.store import EpisodeStore
from lewm_agent.images import resize_images
from lewm_agent.spaces import ActionSpec


class Dot(gym.Env):
    """A dot moving toward a goal on a tiny canvas, in the lewm_envs observation contract."""

    def __init__(self, size: int = 8, discrete: bool = False, announce: bool = False):
        self.size, self.announce = size, announce
        img = spaces.Box(0, 255, (size, size, 3), np.uint8)
        state = spaces.Box(-2, 2, (4,), np.float32)
        self.observation_space = spaces.Dict({"pixels": img, "goal": img, "state": state})
        self.action_space = spaces.Discrete(4) if discrete else spaces.Box(-1, 1, (2,), np.float32)

    def _image(self, p):
        image = np.zeros((self.size, self.size, 3), np.uint8)
        i, j = np.clip(np.round((p + 1) / 2 * (self.size - 1)).astype(int), 0, self.size - 1)
        image[i, j] = 255
        image[..., 2] = np.arange(self.size, dtype=np.uint8) * 9  # texture, so resizing is visible
        return image

    def _obs(self):
        state = np.r_[self.pos, self.goal].astype(np.float32)
        return {"pixels": self._image(self.pos), "goal": self._image(self.goal), "state": state}

    def _info(self):
        return {"is_success": self._success(), "goal_state": self.goal.astype(np.float32)}

    def _success(self):
        return bool(np.linalg.norm(self.pos - self.goal) < 0.25)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.announce:
            print("reset", flush=True)
        self.pos, self.goal = self.np_random.uniform(-1, 1, (2, 2))
        return self._obs(), self._info()

    def step(self, action):
        if isinstance(self.action_space, spaces.Discrete):
            action = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][int(action)], float)
        noise = self.np_random.normal(0, 0.01, 2)  # env randomness must replay from the seed
        self.pos = np.clip(self.pos + 0.3 * np.asarray(action, float) + noise, -1, 1)
        return self._obs(), float(self._success()), self._success(), False, self._info()


ENV_ID = "test_collector/Dot-v0"
for _id, _kw, _steps in [
    (ENV_ID, {}, 30),
    ("test_collector/DotDiscrete-v0", {"discrete": True}, 30),
    ("test_collector/DotNoLimit-v0", {}, None),
]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=Dot, kwargs=_kw, max_episode_steps=_steps)


def dot_factory(announce: bool = False) -> gym.Env:
    return gym.wrappers.TimeLimit(Dot(announce=announce), 30)


def columns(path) -> dict[str, np.ndarray]:
    with EpisodeStore(path) as store:
        return {c: store.read(c, slice(None)) for c in store.columns} | {"ep_len": store.ep_len}


def assert_same_data(a, b):
    a, b = columns(a), columns(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_episodes_replay_exactly(tmp_path):
    """Row t holds observation t and the action taken after it; nothing lost or duplicated."""
    path = collect(ENV_ID, 6, out=tmp_path / "d.h5", image_size=8, seed=3, progress=False)
    store = EpisodeStore(path)
    assert store.env_id == ENV_ID and store.action_spec == ActionSpec("continuous", 2, (-1, -1), (1, 1))
    assert sorted(store.columns) == ["action", "episode_idx", "goal_state", "pixels", "state"]
    for g in range(6):
        ep = store.episode(g)
        T = len(ep["pixels"])
        assert 2 <= T <= 31 and (ep["episode_idx"] == g).all()
        env = Dot()
        obs, info = env.reset(seed=episode_seeds(3, g)[0])
        terminated = False
        for t in range(T):
            np.testing.assert_array_equal(ep["pixels"][t], obs["pixels"])
            np.testing.assert_array_equal(ep["state"][t], obs["state"])
            np.testing.assert_array_equal(ep["goal_state"][t], info["goal_state"])
            if t == T - 1:
                assert np.isnan(ep["action"][t]).all()
                assert terminated or t == 30
                break
            assert np.abs(ep["action"][t]).max() <= 1.0
            obs, _, terminated, _, info = env.step(ep["action"][t])
            assert not terminated or t == T - 2


def test_parallel_envs_and_factories_give_identical_data(tmp_path):
    one = collect(ENV_ID, 7, out=tmp_path / "one.h5", image_size=8, seed=1, progress=False)
    three = collect(ENV_ID, 7, out=tmp_path / "three.h5", image_size=8, num_envs=3, seed=1, progress=False)
    assert_same_data(one, three)
    factory = collect(dot_factory, 7, out=tmp_path / "f.h5", image_size=8, num_envs=2, seed=1, progress=False)
    assert_same_data(one, factory)
    other_seed = collect(ENV_ID, 7, out=tmp_path / "s.h5", image_size=8, seed=2, progress=False)
    assert not np.array_equal(columns(one)["state"][0], columns(other_seed)["state"][0])


def test_shards_partition_the_episodes(tmp_path):
    full = EpisodeStore(collect(ENV_ID, 8, out=tmp_path / "full.h5", image_size=8, progress=False))
    assert shard_episodes(8, (1, 3)) == [1, 4, 7]
    seen = []
    for i in range(3):
        path = collect(ENV_ID, 8, out=tmp_path / f"s{i}.h5", image_size=8, shard=(i, 3), progress=False)
        with EpisodeStore(path) as shard:
            assert shard.num_episodes == len(shard_episodes(8, (i, 3)))
            for j in range(shard.num_episodes):
                ep = shard.episode(j)
                g = int(ep["episode_idx"][0])
                seen.append(g)
                for k, v in full.episode(g).items():
                    np.testing.assert_array_equal(ep[k], v)
    assert sorted(seen) == list(range(8))


def test_resume_continues_without_duplicates(tmp_path):
    reference = collect(ENV_ID, 7, out=tmp_path / "ref.h5", image_size=8, seed=5, progress=False)
    path = tmp_path / "d.h5"
    collect(ENV_ID, 3, out=path, image_size=8, seed=5, progress=False)
    collect(ENV_ID, 7, out=path, image_size=8, seed=5, num_envs=2, progress=False)
    assert_same_data(reference, path)
    before = path.read_bytes()
    collect(ENV_ID, 7, out=path, image_size=8, seed=5, progress=False)  # complete: nothing to do
    collect(ENV_ID, 4, out=path, image_size=8, seed=5, progress=False)  # fewer: never truncates
    assert EpisodeStore(path).num_episodes == 7
    assert_same_data(reference, path)
    assert len(path.read_bytes()) == len(before)


KILL_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("collector_test_env", {test_file!r})
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from lewm_agent.data.collector import collect
    collect(lambda: mod.dot_factory(announce=True), 40, out={out!r}, image_size=8, seed=9, progress=False)
    """
)


def test_killed_collection_resumes_identically(tmp_path, request):
    out = tmp_path / "d.h5"
    script = KILL_SCRIPT.format(test_file=str(request.path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(4):  # the 4th reset comes after episode 2 was written and flushed
        assert proc.stdout.readline().strip() == "reset"
    time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with EpisodeStore(out) as store:
        k = store.num_episodes
    assert 3 <= k < 40
    reference = collect(dot_factory, 40, out=tmp_path / "ref.h5", image_size=8, seed=9, progress=False)
    ref = columns(reference)
    partial = columns(out)
    rows = int(ref["ep_len"][:k].sum())
    for c in partial:
        np.testing.assert_array_equal(partial[c], ref[c][:k] if c == "ep_len" else ref[c][:rows], err_msg=c)
    collect(dot_factory, 40, out=out, image_size=8, seed=9, progress=False)
    assert_same_data(reference, out)


def test_bad_inputs_fail_before_any_work(tmp_path):
    out = tmp_path / "d.h5"
    with pytest.raises(ValueError, match=r"unknown env id 'lewm/Nope-v0'.*lewm/"):
        collect("lewm/Nope-v0", 2, out=out)
    for kw in ({"episodes": 0}, {"image_size": 0}, {"num_envs": 0}, {"shard": (3, 3)}, {"seed": -1}):
        with pytest.raises(ValueError):
            collect(ENV_ID, **{"episodes": 2, "out": out, **kw})
    with pytest.raises(ValueError, match="random"):
        collect(ENV_ID, 2, policy="nope", out=out)
    with pytest.raises(ValueError, match="time limit"):
        collect("test_collector/DotNoLimit-v0", 2, out=out)
    with pytest.raises(ValueError, match="pixels"):
        collect(lambda: gym.make("CartPole-v1"), 2, out=out)
    assert not out.exists()


def test_existing_output_of_another_env_or_layout_is_refused_untouched(tmp_path):
    out = collect(ENV_ID, 2, out=tmp_path / "d.h5", image_size=8, progress=False)
    before = columns(out)
    with pytest.raises(ValueError, match="test_collector/Dot-v0"):
        collect("test_collector/DotDiscrete-v0", 4, out=out, progress=False)
    with pytest.raises(ValueError, match="columns"):
        collect(ENV_ID, 4, out=out, image_size=16, progress=False)
    text = tmp_path / "notes.h5"
    text.write_text("keep me")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        collect(ENV_ID, 2, out=text, progress=False)
    assert text.read_text() == "keep me"
    after = columns(out)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_discrete_actions_and_resizing(tmp_path):
    path = collect("test_collector/DotDiscrete-v0", 3, out=tmp_path / "d.h5", image_size=8, progress=False)
    store = EpisodeStore(path)
    assert store.action_spec == ActionSpec("discrete", 4)
    action = store.episode(0)["action"]
    assert action.shape[1] == 1 and np.isnan(action[-1]).all()
    assert set(np.unique(action[:-1])) <= {0.0, 1.0, 2.0, 3.0}

    # an env rendering 16 px stored at 8 px goes through the shared resize
    path = collect(lambda: gym.wrappers.TimeLimit(Dot(size=16), 5), 1, out=tmp_path / "r.h5", image_size=8)
    first = EpisodeStore(path).episode(0)["pixels"][0]
    obs, _ = Dot(size=16).reset(seed=episode_seeds(0, 0)[0])
    np.testing.assert_array_equal(first, resize_images(obs["pixels"], 8).permute(1, 2, 0).numpy())


def test_policies(tmp_path):
    env = Dot()
    random = make_policy("random", env)
    assert isinstance(random, RandomPolicy)
    clone = random.clone()
    random.reset(4)
    clone.reset(4)
    first = [random({}) for _ in range(3)]
    np.testing.assert_array_equal(first, [clone({}) for _ in range(3)])  # same seed, own generators
    random.reset(4)
    np.testing.assert_array_equal(first, [random({}) for _ in range(3)])

    seen = []
    policy = make_policy(lambda obs: seen.append(obs) or np.array([0.5, -0.25]), env)
    assert policy({"state": 1}).tolist() == [0.5, -0.25] and seen == [{"state": 1}]
    path = collect(ENV_ID, 1, policy=lambda obs: np.array([2.0, -0.25]), out=tmp_path / "c.h5", image_size=8)
    np.testing.assert_array_equal(
        EpisodeStore(path).episode(0)["action"][0], [1.0, -0.25]
    )  # clipped to the Box

    with pytest.raises(ValueError, match="random.*expert.*sb3"):
        make_policy("greedy", env)
    with pytest.raises(ValueError, match="expert:NOISE"):
        make_policy("expert:lots", env, env_id="lewm/TwoRoom-v0")
    with pytest.raises(ValueError, match="no Stable-Baselines3 model"):
        make_policy(f"sb3:{tmp_path / 'missing.zip'}", env)


def test_sb3_policy(tmp_path):
    sb3 = pytest.importorskip("stable_baselines3")

    class StateEnv(gym.Env):  # what the model was trained on: the "state" entry alone
        observation_space = spaces.Box(-2, 2, (4,), np.float32)
        action_space = spaces.Box(-1, 1, (2,), np.float32)

    sb3.PPO("MlpPolicy", StateEnv(), n_steps=8, batch_size=8, device="cpu").save(tmp_path / "ppo.zip")
    obs = Dot().reset(seed=0)[0]
    for name in (f"sb3:{tmp_path / 'ppo.zip'}", f"sb3:PPO:{tmp_path / 'ppo.zip'}"):
        policy = make_policy(name, Dot())
        assert type(policy.model).__name__ == "PPO"
        policy.reset(7)
        actions = [policy(obs) for _ in range(3)]
        policy.reset(7)
        np.testing.assert_array_equal(actions, [policy(obs) for _ in range(3)])  # seeded per episode
        assert actions[0].shape == (2,) and not np.array_equal(actions[0], actions[1])


def test_two_room_expert(tmp_path):
    pytest.importorskip("lewm_envs")
    path = collect(
        "lewm/TwoRoom-v0", 3, policy="expert", out=tmp_path / "tr.h5", image_size=32, progress=False
    )
    with EpisodeStore(path) as store:
        assert store.env_id == "lewm/TwoRoom-v0" and store.num_episodes == 3
        assert {"pixels", "action", "proprio", "state", "goal_state"} <= set(store.columns)
        assert store.schema["pixels"][0] == (32, 32, 3)
    with h5py.File(path, "r") as f:
        assert ActionSpec.from_json(f.attrs["action_space"]).kind == "continuous"
    with pytest.raises(ValueError, match="no scripted expert"):
        collect(ENV_ID, 1, policy="expert", out=tmp_path / "x.h5")


def test_parallel_collection_after_mujoco_rendering_in_the_parent(tmp_path):
    # Forked workers inherit the parent's EGL context and hang inside Mesa (measured: a 60 s timeout);
    # once this process has rendered MuJoCo frames the collector spawns them instead.
    script = tmp_path / "collect_after_render.py"
    script.write_text(
        "import sys, gymnasium as gym, lewm_envs\n"
        "from lewm_agent.data.collector import collect\n"
        "if __name__ == '__main__':\n"
        "    env = gym.make('lewm/Reacher-v0'); env.reset(seed=0); env.close()\n"
        "    collect('lewm/Reacher-v0', 4, out=sys.argv[1], num_envs=2, max_episode_steps=10, progress=False)\n"
    )
    out = tmp_path / "d.h5"
    subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=180, check=True)
    with h5py.File(out) as f:
        assert len(f["ep_len"]) == 4


def test_spawned_workers_make_an_env_registered_only_in_the_parent(tmp_path, monkeypatch):
    # After MuJoCo rendering the collector spawns its workers (a fresh interpreter each); an id this
    # process registered at run time must still be made there, with the same data as one env.
    monkeypatch.setattr(collector, "_vector_context", lambda: "spawn")
    one = collect(ENV_ID, 4, out=tmp_path / "one.h5", image_size=8, seed=1, progress=False)
    two = collect(ENV_ID, 4, out=tmp_path / "two.h5", image_size=8, num_envs=2, seed=1, progress=False)
    with h5py.File(one) as a, h5py.File(two) as b:
        assert np.array_equal(a["action"][:], b["action"][:], equal_nan=True)
        assert np.array_equal(a["pixels"][:], b["pixels"][:])
