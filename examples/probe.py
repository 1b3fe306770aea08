"""Probe the demo model: how well do linear and MLP probes read the agent's position from its latent?

    make demo                    # once: trains runs/demo/model and collects runs/demo/data/eval.h5
    python examples/probe.py     # about a minute and a half on two CPU cores

Writes runs/demo/model/probe/{probe.json, probe.md, probe.png}; the same as
`lewm probe runs/demo/model --data runs/demo/data/eval.h5`.
"""

from lewm_agent.analysis import probe, probe_table

# Held-out episodes: every frame is predicted by probes fitted on other episodes only.
report = probe("runs/demo/model", data="runs/demo/data/eval.h5", folds=5)
print(probe_table(report))
linear = report["results"]["agent position"]["LeWM"]["linear"]
print(f"linear probe of the agent position: r = {linear['r']:.3f} (the paper's LeWM on TwoRoom: 0.996)")
