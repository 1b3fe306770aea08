"""Quickstart: collect TwoRoom data, train a small LeWM on the CPU, and drive the env to goal images.

    python examples/quickstart.py            # about 10 minutes on two CPU cores
"""

import gymnasium as gym
import lewm_envs  # noqa: F401  (registers lewm/TwoRoom-v0 and the other suite envs)

from lewm_agent import LeWMAgent
from lewm_agent.data.collector import collect
from lewm_agent.train import TrainConfig, train

# 1. Offline data: very noisy scripted-expert episodes (broad action coverage), stored in the official LeWM HDF5 layout.
data = collect("lewm/TwoRoom-v0", episodes=1500, policy="expert:1.0", out="runs/quickstart/tworoom.h5", image_size=64)

# 2. Train the CPU-sized world model (next-embedding prediction + SIGReg); resumes if interrupted.
#    A 16-d latent suits TwoRoom's two-dimensional frames (see the README's demo results).
run_dir = train(TrainConfig(data=str(data), out="runs/quickstart/model", preset="tiny", steps=2500,
                            batch_size=64, lr=1e-3, model_overrides={"embed_dim": 16}))

# 3. Plan toward goal images with MPPI in the latent space, in an ordinary Gymnasium loop.
agent = LeWMAgent.load(run_dir, planner="mppi")
env = gym.make("lewm/TwoRoom-v0", image_size=64)
successes = 0
for episode in range(10):
    obs, info = env.reset(seed=episode)  # obs["goal"] is an image of the goal
    agent.reset()
    for step in range(50):
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        if terminated or truncated:
            break
    successes += info["is_success"]
    print(f"episode {episode}: {'reached' if info['is_success'] else 'missed'} the goal in {step + 1} steps")
print(f"{successes}/10 goals reached; median plan time {sorted(agent.plan_times)[len(agent.plan_times) // 2]:.2f}s")
