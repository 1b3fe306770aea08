"""Surprise on the demo model: teleporting the agent violates the model's expectation, recolouring it
only changes how it looks. Then the same signal online, in an ordinary env loop.

    make demo                       # once: trains runs/demo/model
    python examples/surprise.py     # about 20 seconds on two CPU cores
"""

import gymnasium as gym
import lewm_envs  # noqa: F401  (registers the lewm/ envs)
import numpy as np

from lewm_agent.analysis import surprise_experiment, surprise_table
from lewm_agent.wrappers import SurpriseWrapper

# 1. Paired episodes (same seed and actions), perturbed at step 20; writes runs/demo/model/surprise/.
report = surprise_experiment("runs/demo/model", episodes=20)
print(surprise_table(report))

# 2. Online: info["surprise"] at every step of any loop; flag frames far above the running level.
env = SurpriseWrapper(gym.make("lewm/TwoRoom-v0", image_size=64), "runs/demo/model")
obs, info = env.reset(seed=0)
rng = np.random.default_rng(0)
for step in range(1, 41):
    if step == 25:
        env.unwrapped.perturb("teleport")  # an implausible jump, between two steps
    obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
    flag = "  <- implausible?" if info["surprise"] > 0.5 else ""
    print(f"step {step:2d}: surprise {info['surprise']:.4f}{flag}")
