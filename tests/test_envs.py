"""lewm_envs: env checkers, the observation contract, placement, success rules, seeding, errors,
perturbations, optional extras and scripted experts against a random policy."""

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from lewm_envs.experts import make_expert
from stable_baselines3.common.env_checker import check_env as sb3_check_env

FAST_IDS = ["lewm/TwoRoom-v0", "lewm/PushT-v0", "lewm/Reacher-v0", "lewm/MiniGrid-MultiRoom-v0"]
ALL_IDS = FAST_IDS + ["lewm/Cube-v0"]


def make(env_id, **kwargs):
    if env_id == "lewm/Cube-v0":
        pytest.importorskip("ogbench")
    return gym.make(env_id, **kwargs)


# One valid (start state, goal) per env, in each env's documented layouts.
PLACEMENTS = {
    "lewm/TwoRoom-v0": ([60.0, 150.0], [170.0, 40.0]),
    "lewm/PushT-v0": (
        [100.0, 400.0, 300.0, 250.0, 1.0, 0.0, 0.0],
        [400.0, 100.0, 250.0, 300.0, 2.0, 0.0, 0.0],
    ),
    "lewm/Reacher-v0": ([0.3, -1.2, 0.0, 0.0], [-2.0, 1.5]),
    "lewm/MiniGrid-MultiRoom-v0": ([1.0, 1.0, 0.0], [9.0, 9.0]),
}


def run_episode(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        frames.append(obs)
    return frames


def test_ids_registered_on_import_without_heavy_modules():
    assert set(ALL_IDS) <= set(gym.registry)
    code = "import sys, lewm_envs; print(sorted(m for m in ('mujoco', 'pymunk', 'ogbench', 'torch', 'minigrid') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mujoco_env_in_async_vector_env():
    # AsyncVectorEnv makes a throw-away env in the parent, then forks: an EGL context made there
    # would hang the workers. A fresh interpreter, because this one has rendered MuJoCo already.
    code = (
        "import gymnasium as gym, lewm_envs\n"
        "envs = gym.make_vec('lewm/Reacher-v0', num_envs=2, vectorization_mode='async')\n"
        "obs, _ = envs.reset(seed=0)\n"
        "obs, *_ = envs.step(envs.action_space.sample())\n"
        "envs.close()\n"
        "print(obs['pixels'].shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "(2, 64, 64, 3)"


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_env_checkers_pass_without_warnings(env_id):
    env = make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped)
        sb3_check_env(env)
    env.close()


@pytest.mark.slow
def test_cube_env_checkers_pass():
    env = make("lewm/Cube-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        sb3_check_env(env)
    env.close()


@pytest.mark.parametrize("env_id", FAST_IDS)
@pytest.mark.parametrize("size", [32, 64])
def test_observation_contract(env_id, size):
    env = make(env_id, image_size=size)
    obs, info = env.reset(seed=0)
    obs2, *_, info2 = env.step(env.action_space.sample())
    for o in (obs, obs2):
        assert env.observation_space.contains(o)
        assert o["pixels"].shape == o["goal"].shape == (size, size, 3)
        assert o["pixels"].dtype == o["goal"].dtype == np.uint8
        assert o["state"].dtype == o["proprio"].dtype == np.float32
    for i in (info, info2):
        assert isinstance(i["is_success"], bool)
        np.testing.assert_array_equal(i["goal_state"], obs["state"][-len(i["goal_state"]) :])
    np.testing.assert_array_equal(env.render(), obs2["pixels"])
    assert not np.array_equal(obs["pixels"], obs["goal"])


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_reset_places_start_and_goal(env_id):
    env = make(env_id)
    state, goal = (np.array(v) for v in PLACEMENTS[env_id])
    obs, info = env.reset(seed=0, options={"state": state, "goal_state": goal})
    # PushT reports the block angle modulo 2 pi, which these placements already are.
    np.testing.assert_allclose(obs["state"], np.concatenate([state, goal]), atol=1e-4)
    np.testing.assert_allclose(info["goal_state"], goal, atol=1e-5)
    # A stored observation `state` is accepted as a start state (its goal part is ignored) and as a
    # goal (what it achieves), as dataset-driven evaluation needs.
    obs2, info2 = env.reset(seed=1, options={"state": obs["state"], "goal_state": obs["state"]})
    np.testing.assert_allclose(obs2["state"][: len(state)], state, atol=1e-4)
    np.testing.assert_allclose(info2["goal_state"], env.unwrapped.achieved_goal(state), atol=1e-5)
    assert info2["is_success"]
    # Omitted keys are sampled: same seed, same episode.
    a, _ = env.reset(seed=3, options={"goal_state": goal})
    b, _ = env.reset(seed=3, options={"goal_state": goal})
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_allclose(a["state"][len(state) :], goal, atol=1e-5)


def test_cube_reset_places_start_and_goal():
    env = make("lewm/Cube-v0")
    u = env.unwrapped
    first, _ = env.reset(seed=0)
    state = first["state"][: u.state_dim].copy()
    goal = np.array([0.45, 0.1, 0.02])
    obs, info = env.reset(seed=5, options={"state": state, "goal_state": goal})
    np.testing.assert_allclose(obs["state"], np.concatenate([state, goal]), atol=1e-5)
    np.testing.assert_allclose(info["goal_state"], goal, atol=1e-6)
    assert not np.array_equal(obs["pixels"], obs["goal"])


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_visited_states_are_valid_starts_and_goals(env_id):
    # Dataset-driven evaluation resets to stored float32 `state` rows, including ones at walls and
    # joint limits, so every state the env reaches must be accepted back.
    env = make(env_id, image_size=16)
    expert = make_expert(env_id, noise=0.5, seed=0)
    env.action_space.seed(0)
    rows = []
    for episode in range(2):
        obs, _ = env.reset(seed=episode)
        for t in range(60):
            obs, _, terminated, truncated, _ = env.step(expert(obs) if episode else env.action_space.sample())
            rows.append(obs["state"])
            if terminated or truncated:
                break
    for row in rows[::3]:
        obs, info = env.reset(options={"state": row, "goal_state": row})
        assert info["is_success"]


def test_reacher_shoulder_angles_wrap():
    env = make("lewm/Reacher-v0")
    obs, info = env.reset(seed=0, options={"state": [7.0, 0.0, 0.0, 0.0], "goal_state": [4.0, 0.5]})
    np.testing.assert_allclose(obs["proprio"][0], 7.0 - 2 * np.pi, atol=1e-6)
    np.testing.assert_allclose(info["goal_state"], [4.0 - 2 * np.pi, 0.5], atol=1e-6)


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_seeding_reproduces_an_episode(env_id):
    env_a, env_b = make(env_id), make(env_id)
    env_a.action_space.seed(7)
    actions = [env_a.action_space.sample() for _ in range(15)]
    for oa, ob in zip(run_episode(env_a, 11, actions), run_episode(env_b, 11, actions)):
        for key in oa:
            np.testing.assert_array_equal(oa[key], ob[key])
    other = run_episode(env_b, 12, actions)
    assert not np.array_equal(other[0]["state"], run_episode(env_a, 11, actions)[0]["state"])


# ---- success rules: states just inside and just outside each threshold -----------------------------


def assert_success(env, state, goal, expected, action):
    _, info = env.reset(seed=0, options={"state": state, "goal_state": goal})
    assert info["is_success"] is expected
    _, reward, terminated, _, info = env.step(action)
    assert info["is_success"] is expected and terminated is expected and reward == float(expected)


@pytest.mark.parametrize("offset, expected", [(15.9, True), (16.1, False)])
def test_two_room_success_radius(offset, expected):
    env = make("lewm/TwoRoom-v0")
    assert_success(env, [60.0 + offset, 60.0], [60.0, 60.0], expected, np.zeros(2))


def test_two_room_other_room_goals_put_the_wall_between_start_and_goal():
    env = make("lewm/TwoRoom-v0", goal_room="other")
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        agent_x, goal_x = obs["state"][0], obs["state"][2]
        assert (agent_x < 112) != (goal_x < 112)
    with pytest.raises(ValueError, match="goal_room must be one of"):
        make("lewm/TwoRoom-v0", goal_room="same")


@pytest.mark.parametrize(
    "block_offset, angle_offset, expected",
    [
        ((19.9, 0.0), 0.0, True),
        ((20.1, 0.0), 0.0, False),
        ((0.0, 0.0), np.pi / 9 - 0.01, True),
        ((0.0, 0.0), np.pi / 9 + 0.01, False),
    ],
)
def test_push_t_success_rule(block_offset, angle_offset, expected):
    env = make("lewm/PushT-v0")
    goal = np.array([400.0, 400.0, 250.0, 250.0, 0.05, 0.0, 0.0])
    state = goal.copy()
    state[:2] = [60.0, 60.0]  # the agent is far away and does not count
    state[2:4] += block_offset
    state[4] += angle_offset
    assert_success(env, state, goal, expected, np.zeros(2))


def test_push_t_dino_wm_rule_counts_the_agent():
    env = make("lewm/PushT-v0", dino_wm_success=True)
    goal = np.array([400.0, 400.0, 250.0, 250.0, 0.05, 0.0, 0.0])
    near, far = goal.copy(), goal.copy()
    near[:2] += [10.0, 10.0]  # sqrt(200) = 14.1 < 20 px
    far[:2] = [60.0, 60.0]
    assert_success(env, near, goal, True, np.zeros(2))
    assert_success(env, far, goal, False, np.zeros(2))


@pytest.mark.parametrize(
    "qpos, goal, expected",
    [
        ([0.549, -0.451], [0.5, -0.5], True),
        ([0.551, -0.5], [0.5, -0.5], False),
        ([0.5, -0.449], [0.5, -0.5], False),
        ([-np.pi + 0.02, 0.0], [np.pi - 0.02, 0.0], True),  # the shoulder angle wraps
    ],
)
def test_reacher_success_tolerance(qpos, goal, expected):
    env = make("lewm/Reacher-v0")
    # A step at rest with zero torque moves the joints by ~1e-6 rad, far below the margins used here.
    assert_success(env, [*qpos, 0.0, 0.0], goal, expected, np.zeros(2))


def test_minigrid_success_on_goal_cell():
    env = make("lewm/MiniGrid-MultiRoom-v0")
    assert_success(env, [3.0, 3.0, 0.0], [3.0, 3.0], True, 0)
    _, info = env.reset(seed=0, options={"state": [2.0, 3.0, 0.0], "goal_state": [3.0, 3.0]})
    assert not info["is_success"]
    _, reward, terminated, _, info = env.step(2)  # forward, east, onto the goal
    assert terminated and info["is_success"] and reward == 1.0


@pytest.mark.parametrize("offset, expected", [(0.039, True), (0.041, False)])
def test_cube_success_radius(offset, expected):
    env = make("lewm/Cube-v0")
    u = env.unwrapped
    obs, _ = env.reset(seed=0)
    state = obs["state"][: u.state_dim].astype(np.float64)
    goal = state[u._cube_qpos : u._cube_qpos + 3] + [offset, 0.0, 0.0]
    _, info = env.reset(seed=0, options={"state": state, "goal_state": goal})
    assert info["is_success"] is expected


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", FAST_IDS)
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_image_size(env_id, bad):
    with pytest.raises(ValueError, match="image_size"):
        make(env_id, image_size=bad)


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_bad_render_mode(env_id):
    # Not through gym.make, which wraps rgb_array envs in HumanRendering when asked for "human".
    env_class = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    with pytest.raises(ValueError, match="rgb_array"):
        env_class(render_mode="human")


@pytest.mark.parametrize(
    "env_id, state, goal, message",
    [
        ("lewm/TwoRoom-v0", [5.0, 100.0], None, r"options\['state'\].*valid range"),
        ("lewm/TwoRoom-v0", [112.0, 150.0], None, r"options\['state'\].*inside the wall"),
        ("lewm/TwoRoom-v0", None, [100.0, 300.0], r"options\['goal_state'\].*valid range"),
        (
            "lewm/PushT-v0",
            [600.0, 100.0, 300.0, 300.0, 0.0, 0.0, 0.0],
            None,
            r"options\['state'\].*valid range",
        ),
        ("lewm/Reacher-v0", [0.0, 3.0, 0.0, 0.0], None, r"options\['state'\] wrist qpos.*valid range"),
        ("lewm/Reacher-v0", None, [0.0, -3.5], r"options\['goal_state'\] wrist.*valid range"),
        ("lewm/MiniGrid-MultiRoom-v0", [0.0, 0.0, 0.0], None, r"options\['state'\].*wall"),
        ("lewm/MiniGrid-MultiRoom-v0", [1.5, 1.0, 0.0], None, r"options\['state'\].*integers"),
        ("lewm/MiniGrid-MultiRoom-v0", None, [5.0, 1.0], r"options\['goal_state'\].*wall"),
        ("lewm/TwoRoom-v0", [1.0, 2.0, 3.0], None, r"options\['state'\] must have length 2 or 4"),
        ("lewm/TwoRoom-v0", [np.nan, 60.0], None, r"options\['state'\] must be finite"),
    ],
)
def test_bad_reset_options_change_nothing(env_id, state, goal, message):
    env = make(env_id)
    obs, _ = env.reset(seed=0)
    before = env.render()
    options = {k: v for k, v in (("state", state), ("goal_state", goal)) if v is not None}
    with pytest.raises(ValueError, match=message):
        env.reset(seed=1, options=options)
    np.testing.assert_array_equal(env.render(), before)
    np.testing.assert_array_equal(env.unwrapped._observe()["state"], obs["state"])


def test_unknown_reset_option():
    env = make("lewm/TwoRoom-v0")
    with pytest.raises(ValueError, match="unknown reset option.*goal_sate"):
        env.reset(options={"goal_sate": [1.0, 2.0]})


def test_bad_minigrid_action_and_layout():
    env = make("lewm/MiniGrid-MultiRoom-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be 0"):
        env.unwrapped.step(5)
    with pytest.raises(ValueError, match="layout must be one of"):
        make("lewm/MiniGrid-MultiRoom-v0", layout="maze")


@pytest.mark.parametrize(
    "module, env_id, extra", [("pymunk", "lewm/PushT-v0", "pusht"), ("ogbench", "lewm/Cube-v0", "cube")]
)
def test_missing_extra_names_the_install(monkeypatch, module, env_id, extra):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import module` (and submodules) fail
    with pytest.raises(ImportError, match=rf'pip install "lewm-agent\[{extra}\]"'):
        gym.make(env_id)


# ---- perturbations -------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_perturbations_change_later_observations(env_id):
    env = make(env_id)
    obs, _ = env.reset(seed=0)
    u = env.unwrapped
    teleported = u.perturb("teleport")
    assert not np.array_equal(teleported["state"], obs["state"])
    assert not np.array_equal(teleported["pixels"], obs["pixels"])
    np.testing.assert_array_equal(teleported["goal"], obs["goal"])
    recolored = u.perturb("color", color=(0, 200, 255))
    np.testing.assert_array_equal(recolored["state"], teleported["state"])
    assert not np.array_equal(recolored["pixels"], teleported["pixels"])
    stepped, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(env.render(), stepped["pixels"])
    with pytest.raises(ValueError, match="perturb kind"):
        u.perturb("gravity")
    # The next reset undoes the colour change.
    again, _ = env.reset(seed=0)
    np.testing.assert_array_equal(again["pixels"], obs["pixels"])


def test_teleport_to_a_given_place():
    env = make("lewm/TwoRoom-v0")
    env.reset(seed=0)
    obs = env.unwrapped.perturb("teleport", position=(150.0, 180.0))
    np.testing.assert_allclose(obs["proprio"], [150.0, 180.0])
    with pytest.raises(ValueError, match="position.*wall"):
        env.unwrapped.perturb("teleport", position=(112.0, 150.0))
    push_t = make("lewm/PushT-v0")
    push_t.reset(seed=0)
    obs = push_t.unwrapped.perturb("teleport", agent=(100.0, 100.0), block=(300.0, 300.0, 1.0))
    np.testing.assert_allclose(obs["state"][:5], [100.0, 100.0, 300.0, 300.0, 1.0], atol=1e-4)


def test_cube_perturbations():
    env = make("lewm/Cube-v0")
    env.reset(seed=0)
    u = env.unwrapped
    moved = u.perturb("teleport", position=(0.5, 0.2, 0.02))
    np.testing.assert_allclose(moved["state"][u._cube_qpos : u._cube_qpos + 3], [0.5, 0.2, 0.02], atol=1e-6)
    recolored = u.perturb("color", color=(0, 255, 0))
    stepped, *_ = env.step(np.zeros(5))
    assert not np.array_equal(recolored["pixels"], moved["pixels"])
    assert (stepped["pixels"][..., 1].astype(int) - stepped["pixels"][..., 0]).max() > 100  # green stays


# ---- scripted experts ----------------------------------------------------------------------------


def success_rate(env_id, policy, episodes, seed=0):
    env = make(env_id, image_size=16)  # experts read the state; small frames keep this fast
    env.action_space.seed(seed)
    expert = make_expert(env_id, noise=0.2, seed=seed)
    wins = 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        while True:
            action = expert(obs) if policy == "expert" else env.action_space.sample()
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        wins += info["is_success"]
    return wins / episodes


@pytest.mark.parametrize(
    "env_id, episodes",
    [
        ("lewm/TwoRoom-v0", 50),
        ("lewm/MiniGrid-MultiRoom-v0", 50),
        ("lewm/Reacher-v0", 10),
        ("lewm/PushT-v0", 10),
    ],
)
def test_expert_beats_random(env_id, episodes):
    expert, random = success_rate(env_id, "expert", episodes), success_rate(env_id, "random", episodes)
    assert expert >= 0.5 and expert >= random + 0.4, (expert, random)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["lewm/Reacher-v0", "lewm/PushT-v0"])
def test_expert_beats_random_50_episodes(env_id):
    expert, random = success_rate(env_id, "expert", 50), success_rate(env_id, "random", 50)
    assert expert >= 0.6 and expert >= random + 0.5, (expert, random)


@pytest.mark.slow
def test_cube_expert_beats_random():
    expert, random = success_rate("lewm/Cube-v0", "expert", 5), success_rate("lewm/Cube-v0", "random", 5)
    assert expert >= 0.6 and expert >= random + 0.5, (expert, random)


def test_expert_is_seeded_and_validates():
    obs, _ = gym.make("lewm/TwoRoom-v0").reset(seed=0)
    a, b = make_expert("lewm/TwoRoom-v0", seed=3), make_expert("lewm/TwoRoom-v0", seed=3)
    np.testing.assert_array_equal(a(obs), b(obs))
    assert make_expert("lewm/TwoRoom-v0", noise=0.0)(obs).dtype == np.float32
    with pytest.raises(ValueError, match="no scripted expert.*lewm/TwoRoom-v0"):
        make_expert("CartPole-v1")
    with pytest.raises(ValueError, match="noise"):
        make_expert("lewm/TwoRoom-v0", noise=-0.1)


def test_push_t_block_squeezed_into_a_wall_stays_a_valid_state():
    # Replays the last steps of a noisy-expert episode (seed 4, noise 1.0) in which the agent drove the
    # block into the left wall: the thin wall segment let it through to x = -5.9, a state reset refused.
    env = make("lewm/PushT-v0", image_size=16)
    start = np.array([127.055, 206.026, 31.693, 210.714, 4.264, 375.451, 21.776])
    actions = [[-0.716, 1.0], [-1.0, 0.392], [-0.002, -1.0], [0.436, -1.0], [0.399, 0.873], [-1.0, -1.0],
               [0.196, -0.077], [-0.325, 0.255], [0.112, -1.0], [0.182, -1.0], [-1.0, -1.0], [0.873, -0.704]]
    env.reset(options={"state": start, "goal_state": start + [0, 0, 200, 0, 0, 0, 0]})
    rows = [env.step(np.array(a, np.float32))[0]["state"][:7] for a in actions]
    assert min(r[2] for r in rows) > 0  # the block stays inside the walls
    for row in rows:
        env.reset(options={"state": row, "goal_state": row})


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_every_stored_state_of_a_collected_file_is_a_valid_reset(tmp_path, env_id):
    from lewm_agent.data.collector import collect
    from lewm_agent.data.store import EpisodeStore

    path = collect(env_id, 3, policy="expert:1.0", out=tmp_path / "d.h5", image_size=16, max_episode_steps=80,
                   progress=False)
    env = make(env_id, image_size=16)
    with EpisodeStore(path) as store:
        states = store.read("state", np.arange(int(np.sum(store.ep_len))))
    for row in states:
        env.reset(options={"state": row, "goal_state": row})
