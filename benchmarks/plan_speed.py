"""Seconds per full CEM plan with each LeWM preset, at the paper's planning settings.

One plan = ``lewm_agent.planning.CEM`` with its defaults (300 samples x 30 iterations, top 30) over a
horizon of 5 action blocks of 5 steps x 2-D actions, from a history of 3 frames. Every iteration
calls ``LeWM.rollout`` on all candidates and costs them by the squared distance of the last predicted
embedding to a goal embedding, as the paper's planner does. Weights are random, but the AdaLN
modulation Linears get a standard (non-zero) init so the predictor blocks are not identities.

A warm-up plan comes first, then the median (and min) of ``--repeats`` timed plans. Prints a Markdown
table; runs on the CPU, and on CUDA too when available.

    python benchmarks/plan_speed.py [--presets tiny small paper] [--batch 1 50] [--repeats 5]
                                    [--precision fp32 bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lewm_agent.model import PRESETS, LeWM
from lewm_agent.planning import CEM

HORIZON = 5
ACTION_DIM = 2  # per env step; a block holds action_block (5) steps


def build_model(preset: str, device: torch.device) -> LeWM:
    """``preset`` in eval mode with random weights whose AdaLN modulations are not zero."""
    torch.manual_seed(0)
    model = LeWM.from_preset(preset, action_dim=ACTION_DIM)
    for block in model.predictor.blocks:  # AdaLN-zero init makes every block the identity
        block.adaLN_modulation[1].reset_parameters()
    return model.to(device).eval()


class PlanProblem:
    """A random history, goal and cost function for ``batch`` environments; counts predictor calls."""

    def __init__(self, model: LeWM, batch: int, precision: str):
        c, device = model.config, model.pixel_mean.device
        g = torch.Generator().manual_seed(1)
        self.model, self.precision, self.batch = model, precision, batch
        self.emb_hist = torch.randn(batch, c.history, c.embed_dim, generator=g).to(device)
        self.act_hist = torch.randn(batch, c.history - 1, c.action_block_dim, generator=g).to(device)
        self.goal = torch.randn(batch, c.embed_dim, generator=g).to(device)
        self.calls = 0
        self.hook = model.predictor.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def cost(self, candidates: torch.Tensor) -> torch.Tensor:
        pred = self.model.rollout(self.emb_hist, self.act_hist, candidates, precision=self.precision)
        return (pred[:, :, -1].float() - self.goal[:, None]).square().sum(-1)

    def plan(self, seed: int = 0) -> torch.Tensor:
        planner = CEM(seed=seed, device=self.goal.device)
        return planner.plan(self.cost, self.batch, HORIZON, self.model.config.action_block_dim)


def time_plans(problem: PlanProblem, repeats: int) -> tuple[list[float], int]:
    """Seconds of each of ``repeats`` timed plans after one warm-up, and predictor calls per plan."""
    device = problem.goal.device
    problem.plan()
    times = []
    for i in range(repeats):
        problem.calls = 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        problem.plan(seed=i + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    problem.hook.remove()
    return times, problem.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"], choices=list(PRESETS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1],
                        help="environments planned in one batch (B); 50 is only run for tiny/small")
    parser.add_argument("--repeats", type=int, default=5, help="timed plans per row (after a warm-up)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when available")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else ""))
    print()
    print("| preset | device | batch | precision | s/plan (median) | s/plan (min) | predictor calls/plan |")
    print("|---|---|---:|---|---:|---:|---:|")
    for device in devices:
        for preset in args.presets:
            model = build_model(preset, device)
            for batch in args.batch:
                if batch > 1 and preset == "paper" and device.type == "cpu":
                    continue  # minutes per plan on a CPU
                for precision in args.precision:
                    times, calls = time_plans(PlanProblem(model, batch, precision), args.repeats)
                    print(f"| {preset} | {device.type} | {batch} | {precision} | {statistics.median(times):.3f} | "
                          f"{min(times):.3f} | {calls} |", flush=True)


if __name__ == "__main__":
    main()
