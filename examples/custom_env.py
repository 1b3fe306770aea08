"""Bring your own env: any Gymnasium env with an rgb_array renderer gets the observation contract
(``pixels`` + ``goal`` images, ``info["is_success"]``) from PixelGoalWrapper, and then collection,
training and the agent work on it unchanged.

Here: Gymnasium's MountainCarContinuous, goal = the car at the flag, rendered by posing the env.

    python examples/custom_env.py
"""

import gymnasium as gym
import numpy as np

from lewm_agent import LeWMAgent
from lewm_agent.data.collector import collect
from lewm_agent.train import TrainConfig, train
from lewm_agent.wrappers import PixelGoalWrapper

GOAL_X = 0.45


def goal_image(env):
    """Render the car at the flag, then put the env back where it was."""
    car = env.unwrapped
    saved = car.state.copy()
    car.state = np.array([GOAL_X, 0.0])
    image = car.render()
    car.state = saved
    return image


def make_env():
    env = gym.make("MountainCarContinuous-v0", render_mode="rgb_array", max_episode_steps=200)
    return PixelGoalWrapper(env, image_size=64, goal_fn=goal_image,
                            success_fn=lambda env, obs, info: bool(obs[0] >= GOAL_X))


if __name__ == "__main__":
    data = collect(make_env, episodes=60, policy="random", out="runs/custom/mountaincar.h5")
    run_dir = train(TrainConfig(data=str(data), out="runs/custom/model", preset="tiny", steps=300,
                                batch_size=32, lr=1e-3))
    agent = LeWMAgent.load(run_dir, num_samples=100, iterations=10)
    env = make_env()
    obs, info = env.reset(seed=0)
    agent.reset()
    for t in range(200):
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        if terminated or truncated:
            break
    print(f"finished after {t + 1} steps, success: {info['is_success']}")
