"""LeWM beside Stable-Baselines3 PPO, GCBC, random and expert on the same TwoRoom start/goal pairs.

    make demo                      # first: the demo's data and LeWM model in runs/demo
    python examples/compare_sb3.py # then: about 25 minutes on two CPU cores

Each baseline gets about as much training wall time as the demo's LeWM (10 minutes); every step
resumes if interrupted, and the comparison only evaluates agents it has not evaluated yet.
"""

from lewm_agent.baselines.gcbc import train_gcbc
from lewm_agent.baselines.sb3 import train_sb3
from lewm_agent.config import BaselineConfig, GCBCConfig
from lewm_agent.evaluation.compare import compare, compare_table

# PPO from the pixels and goal images (what LeWM sees), on the dense reward, for 10 minutes.
ppo = train_sb3(BaselineConfig(algo="ppo", env="lewm/TwoRoom-v0", out="runs/example-compare/ppo", reward="dense",
                               steps=10_000_000, time_limit=600))

# Goal-conditioned behaviour cloning on LeWM's own training data (hindsight goals).
gcbc = train_gcbc(GCBCConfig(data="runs/demo/data/train.h5", out="runs/example-compare/gcbc", steps=5000))

# The paper's protocol on the demo's held-out episodes: 50 start/goal pairs, goal 25 steps ahead, 50 steps.
report = compare(
    ["LeWM=runs/demo/model", f"PPO={ppo / 'model.zip'}", f"GCBC={gcbc}", "random", "expert"],
    out="runs/example-compare/results", data="runs/demo/data/eval.h5", planner="mppi",
)
print(compare_table(report))
