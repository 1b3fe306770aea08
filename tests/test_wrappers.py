"""lewm_agent.wrappers: the observation contract on plain Gymnasium envs, env checkers, success
termination, goal images, composition with Gymnasium wrappers and clear errors."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from lewm_agent.images import resize_images
from lewm_agent.wrappers import PixelGoalWrapper, SuccessWrapper


def upright_pendulum(env):
    """The pendulum rendered upright: the goal image and the goal state (cos, sin, velocity)."""
    pendulum = env.unwrapped
    saved = pendulum.state.copy()
    pendulum.state = np.array([0.0, 0.0])
    image = env.render()
    pendulum.state = saved
    return image, np.array([1.0, 0.0, 0.0])


def pendulum(**kwargs):
    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    kwargs.setdefault("goal_fn", upright_pendulum)
    return PixelGoalWrapper(env, **kwargs)


def mountain_car():
    env = gym.make("MountainCarContinuous-v0", render_mode="rgb_array")
    return PixelGoalWrapper(env, image_size=32, success_fn=lambda env, obs, info: obs[0] >= 0.45)


def test_checkers_pass_on_pendulum():
    env = pendulum(image_size=48, success_fn=lambda env, obs, info: obs[0] > 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later filters take precedence over this one
        # Pendulum's own [-2, 2] actions, and the notice that we check a wrapped env (on purpose).
        warnings.filterwarnings("ignore", message=".*symmetric and normalized")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped")
        # The render check re-makes the env in every render mode, and "human" has no rgb frames.
        check_env(env, skip_render_check=True)
        sb3_check_env(env)


def test_checkers_pass_on_mountain_car_with_goal_option():
    env = mountain_car()
    goal = np.zeros((400, 600, 3), np.uint8)
    env = gym.wrappers.RecordEpisodeStatistics(env)  # composes with Gymnasium's wrappers
    obs, _ = env.reset(seed=0, options={"goal_image": goal})
    assert env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="needs a goal image"):
        env.reset(seed=0)  # this env has no goal_fn


def test_observation_contract():
    env = pendulum(image_size=32)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"pixels", "goal", "state"}
    assert obs["pixels"].shape == obs["goal"].shape == (32, 32, 3) and obs["pixels"].dtype == np.uint8
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (3,)
    assert env.observation_space.contains(obs)
    # Pixels are the env's frame through the shared resize; the goal is the upright pendulum.
    frame = env.unwrapped.render()
    np.testing.assert_array_equal(obs["pixels"], resize_images(frame, 32).permute(1, 2, 0).numpy())
    goal, goal_state = upright_pendulum(env)
    np.testing.assert_array_equal(obs["goal"], resize_images(goal, 32).permute(1, 2, 0).numpy())
    assert info["is_success"] is False
    np.testing.assert_array_equal(info["goal_state"], goal_state)
    obs2, *_, info2 = env.step(np.zeros(1, np.float32))
    np.testing.assert_array_equal(obs2["goal"], obs["goal"])
    assert not np.array_equal(obs2["pixels"], obs["pixels"]) and info2["is_success"] is False


def test_goal_image_option_takes_precedence_and_is_resized():
    env = pendulum(image_size=16)
    goal = np.full((100, 70, 3), 200, np.uint8)
    obs, info = env.reset(seed=0, options={"goal_image": goal, "goal_state": [0.0, 1.0, 0.0]})
    np.testing.assert_array_equal(obs["goal"], np.full((16, 16, 3), 200, np.uint8))
    np.testing.assert_array_equal(info["goal_state"], [0.0, 1.0, 0.0])


def test_success_terminates():
    env = pendulum(success_fn=lambda env, obs, info: True)
    _, info = env.reset(seed=0)
    assert info["is_success"] is True
    _, _, terminated, truncated, info = env.step(np.zeros(1, np.float32))
    assert terminated and not truncated and info["is_success"] is True


def test_success_wrapper_alone_keeps_observations():
    env = SuccessWrapper(gym.make("MountainCarContinuous-v0"), lambda env, obs, info: obs[0] > -2.0)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["is_success"] is True
    with pytest.raises(TypeError, match="success_fn must be callable"):
        SuccessWrapper(gym.make("MountainCarContinuous-v0"), success_fn=0.5)


def test_env_without_rgb_array_renderer_names_the_fix():
    with pytest.raises(
        ValueError, match=r"render_mode='rgb_array'.*gym.make\('Pendulum-v1', render_mode='rgb_array'\)"
    ):
        PixelGoalWrapper(gym.make("Pendulum-v1"))


@pytest.mark.parametrize("bad", [0, -1, 3.0, True])
def test_bad_image_size(bad):
    with pytest.raises(ValueError, match="image_size"):
        pendulum(image_size=bad)


def test_bad_goal_images():
    env = pendulum(goal_fn=lambda env: np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="goal_fn's image must be a uint8 RGB image"):
        env.reset(seed=0)
    env = pendulum()
    with pytest.raises(ValueError, match=r"options\['goal_image'\] must be a uint8 RGB image"):
        env.reset(seed=0, options={"goal_image": np.zeros((8, 8, 3), np.float32)})
    with pytest.raises(TypeError, match="goal_fn must be callable"):
        pendulum(goal_fn="upright")


def test_non_box_observations_are_dropped():
    env = PixelGoalWrapper(
        gym.make("FrozenLake-v1", render_mode="rgb_array"), image_size=16, goal_fn=lambda e: e.render()
    )
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"pixels", "goal"} and env.observation_space.contains(obs)
