"""Seconds per full CEM plan with each LeWM preset, at the paper's planning settings.

One plan = ``lewm_agent.planning.CEM`` with its defaults (300 samples x 30 iterations, top 30) over a
horizon of 5 action blocks of 5 steps x 2-D actions, from a history of 3 frames. Every iteration
calls ``LeWM.rollout`` on all candidates and costs them by the squared distance of the last predicted
embedding to a goal embedding, as the paper's planner does. Weights are random, but the AdaLN
modulation Linears get a standard (non-zero) init so the predictor blocks are not identities; or
pass ``--checkpoint`` to time a trained model. History and goal embeddings are standard normal (the
distribution SIGReg pushes embeddings towards).

A warm-up (two CEM iterations' rollouts) comes first, then the median (and min) of ``--repeats``
timed plans. Predictor calls per plan count every call: the candidate passes (30 iterations x 5
steps x the CPU chunks of candidates) and the small per-env passes over the shared history.
``--rollout eager compiled`` also times ``LeWM.compile_rollout()``; its warm-up column is the
one-off compile (cold or warm cache: see torch's inductor cache). GFLOP/plan is counted by torch's
FLOP counter on one eager iteration; next to the header's large-matmul rate it gives the floor a
plan's time can reach on this machine at each precision. Prints a Markdown table; runs on
the CPU, and on CUDA too when available. ``--compare`` adds a table of how much bf16 plans differ
from fp32 plans made with the same seeds. On a shared machine, compare rows taken under similar load
(the header prints the load average) and try ``--threads 1``: two threads on two busy cores wait on
each other at every op.

    python benchmarks/plan_speed.py [--presets tiny small paper] [--batch 1 50] [--repeats 5]
                                    [--precision fp32 bf16] [--rollout eager compiled]
                                    [--set embed_dim=16] [--checkpoint RUN/model] [--threads N] [--compare]
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lewm_agent.cli import parse_setting  # KEY=VALUE parsing, as `lewm train --set`
from lewm_agent.model import PRESETS, LeWM
from lewm_agent.planning import CEM

HORIZON = 5
ACTION_DIM = 2  # per env step; a block holds action_block (5) steps
BIG_BATCH_PRESETS = ("tiny", "small")  # batches > 1 take minutes per plan with the paper preset on a CPU


def build_model(preset: str, device: torch.device, checkpoint: str | None = None, **overrides) -> LeWM:
    """``preset`` (with ``overrides`` of its settings) in eval mode with random weights whose AdaLN
    modulations are not zero (or the trained model in ``checkpoint``)."""
    if checkpoint:
        from lewm_agent.runs import Run

        return Run(checkpoint).load(device)[0]
    torch.manual_seed(0)
    model = LeWM.from_preset(preset, action_dim=ACTION_DIM, **overrides)
    for block in model.predictor.blocks:  # AdaLN-zero init makes every block the identity
        block.adaLN_modulation[1].reset_parameters()
    return model.to(device).eval()


class PlanProblem:
    """A random history and goal for ``batch`` environments, the CEM cost, and a predictor-call count."""

    def __init__(self, model: LeWM, batch: int, precision: str):
        c, device = model.config, model.pixel_mean.device
        g = torch.Generator().manual_seed(1)
        self.model, self.precision, self.batch = model, precision, batch
        self.emb_hist = torch.randn(batch, c.history, c.embed_dim, generator=g).to(device)
        self.act_hist = torch.randn(batch, c.history - 1, c.action_block_dim, generator=g).to(device)
        self.goal = torch.randn(batch, c.embed_dim, generator=g).to(device)
        self.calls = 0

    def rollout(self, candidates: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        precision = precision or self.precision
        if "precision" in inspect.signature(self.model.rollout).parameters:
            return self.model.rollout(self.emb_hist, self.act_hist, candidates, precision=precision)
        # A LeWM from before rollout had a precision argument (to time older commits).
        with torch.autocast(candidates.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return self.model.rollout(self.emb_hist, self.act_hist, candidates).float()

    def cost(self, candidates: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """``[B, S]``: squared distance of each candidate's last predicted embedding to the goal."""
        return (self.rollout(candidates, precision)[:, :, -1] - self.goal[:, None]).square().sum(-1)

    def plan(self, seed: int = 0) -> torch.Tensor:
        planner = CEM(seed=seed, device=self.goal.device)
        return planner.plan(self.cost, self.batch, HORIZON, self.model.config.action_block_dim)

    def count_calls(self, *_):
        self.calls += 1


def plan_gflop(model: LeWM, batch: int) -> float:
    """GFLOP of one plan's rollouts (torch's FLOP counter, matmuls and attention), counted on an
    eager rollout: what a plan costs at any precision, and the floor it sets at a CPU's peak rate."""
    planner = CEM()
    problem = PlanProblem(model, batch, "fp32")
    cands = torch.zeros(batch, planner.num_samples, HORIZON, model.config.action_block_dim,
                        device=problem.goal.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        problem.cost(cands)
    return planner.iterations * counter.get_total_flops() / 1e9


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 20) -> float:
    """This device's rate on a large square matmul: about its peak, to set the GFLOP/s column against."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_plans(problem: PlanProblem, repeats: int) -> tuple[list[float], float, int | None]:
    """Seconds of each of ``repeats`` timed plans, seconds of the warm-up before them, and predictor
    calls per plan (None for a compiled rollout, whose predictor calls are fused away)."""
    device = problem.goal.device
    # Warm-up: two CEM iterations' worth of rollouts (a plan repeats these shapes 30 times).
    warm = torch.randn(problem.batch, 300, HORIZON, problem.model.config.action_block_dim, device=device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(2):
            problem.cost(warm)
    sync(device)
    warm_s = time.perf_counter() - t0
    compiled = getattr(problem.model, "rollout_compiled", False)
    hook = None if compiled else problem.model.predictor.register_forward_hook(problem.count_calls)
    times = []
    for i in range(repeats):
        problem.calls = 0
        sync(device)
        t0 = time.perf_counter()
        problem.plan(seed=i + 1)
        sync(device)
        times.append(time.perf_counter() - t0)
    if hook is not None:
        hook.remove()
    return times, warm_s, None if compiled else problem.calls


@torch.inference_mode()
def compare_precisions(model: LeWM, batch: int, seeds: int = 3) -> dict[str, float]:
    """How far bf16 planning lands from fp32 planning on the same problems and seeds."""
    problem = PlanProblem(model, batch, "fp32")
    c = model.config
    # The same candidates, costed both ways: do the 30 elites agree?
    g = torch.Generator().manual_seed(2)
    cands = torch.randn(batch, 300, HORIZON, c.action_block_dim, generator=g).to(problem.goal.device)
    z32, z16 = problem.rollout(cands, "fp32")[:, :, -1], problem.rollout(cands, "bf16")[:, :, -1]
    elites32 = problem.cost(cands, "fp32").topk(30, dim=1, largest=False).indices
    elites16 = problem.cost(cands, "bf16").topk(30, dim=1, largest=False).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(elites32, elites16)) / elites32.numel()
    # Whole plans with the same seeds, and what each costs under the fp32 model. For scale: how far
    # apart two fp32 plans with different seeds land.
    diffs, seed_diffs, cost32, cost16 = [], [], [], []
    for seed in range(seeds):
        problem.precision = "fp32"
        p32, p32_other = problem.plan(seed), problem.plan(seed + seeds)
        problem.precision = "bf16"
        p16 = problem.plan(seed)
        diffs.append((p16 - p32).abs())
        seed_diffs.append((p32_other - p32).abs())
        cost32.append(problem.cost(p32[:, None], "fp32").mean().item())
        cost16.append(problem.cost(p16[:, None], "fp32").mean().item())
    return {
        "rel_err": ((z16 - z32).norm(dim=-1) / z32.norm(dim=-1)).median().item(),
        "elite_overlap": overlap,
        "mean_diff": torch.stack(diffs).mean().item(),
        "seed_diff": torch.stack(seed_diffs).mean().item(),
        "cost32": statistics.mean(cost32),
        "cost16": statistics.mean(cost16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"], choices=list(PRESETS))
    parser.add_argument("--checkpoint", default=None, help="time this trained checkpoint folder instead")
    parser.add_argument("--set", nargs="+", type=parse_setting, default=[], metavar="KEY=VALUE",
                        help="override preset settings, e.g. --set embed_dim=16 (the demo's model)")
    parser.add_argument("--batch", nargs="+", type=int, default=[1],
                        help=f"environments planned in one batch (B); B > 1 runs for {BIG_BATCH_PRESETS} "
                             "only on a CPU")
    parser.add_argument("--repeats", type=int, default=5, help="timed plans per row (after a warm-up)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rollout", nargs="+", default=["eager"], choices=["eager", "compiled"],
                        help="compiled: LeWM.compile_rollout() (torch.compile; compiles during the warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when available")
    parser.add_argument("--compare", action="store_true", help="also compare bf16 plans with fp32 plans")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = ["checkpoint"] if args.checkpoint else args.presets
    overrides = dict(args.set)
    suffix = "".join(f" {key}={value}" for key, value in args.set)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average {load}"
          + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else ""))
    for device in devices:
        rates = ", ".join(f"{name} {matmul_gflops(device, dtype):,.0f}"
                          for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)))
        print(f"{device.type} matmul GFLOP/s (1024 x 1024 x 1024): {rates}")
    print()
    print("| preset | device | batch | precision | rollout | s/plan (median) | s/plan (min) | warm-up s | "
          "predictor calls/plan | GFLOP/plan | GFLOP/s |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    comparisons = []
    for device in devices:
        for preset in presets:
            model = build_model(preset, device, args.checkpoint, **overrides)
            for batch in args.batch:
                if batch > 1 and device.type == "cpu" and preset not in BIG_BATCH_PRESETS + ("checkpoint",):
                    continue
                gflop = plan_gflop(model, batch)
                for rollout in args.rollout:
                    if args.rollout != ["eager"]:
                        model.compile_rollout(rollout == "compiled")
                    for precision in args.precision:
                        times, warm_s, calls = time_plans(PlanProblem(model, batch, precision), args.repeats)
                        print(f"| {preset}{suffix} | {device.type} | {batch} | {precision} | {rollout} | "
                              f"{statistics.median(times):.3f} | {min(times):.3f} | {warm_s:.1f} | "
                              f"{'-' if calls is None else calls} | {gflop:,.1f} | "
                              f"{gflop / statistics.median(times):,.0f} |", flush=True)
                if args.rollout != ["eager"]:
                    model.compile_rollout(False)
                if args.compare:
                    comparisons.append((preset, device.type, batch, compare_precisions(model, batch)))
    if comparisons:
        print()
        print("bf16 vs fp32 on the same problems: median relative error of the final predicted embedding; "
              "overlap of the 30 cheapest of the same 300 candidates; mean |bf16 plan - fp32 plan| over 3 "
              "seeds, next to mean |fp32 plan - fp32 plan with another seed| for scale (normalised action "
              "units); mean cost of each plan under the fp32 model.")
        print()
        print("| preset | device | batch | embedding rel. error | top-30 overlap | plan diff bf16 vs fp32 | "
              "plan diff fp32 vs other seed | cost of fp32 plan | cost of bf16 plan |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for preset, device, batch, r in comparisons:
            print(f"| {preset} | {device} | {batch} | {r['rel_err']:.1e} | {r['elite_overlap']:.0%} | "
                  f"{r['mean_diff']:.3f} | {r['seed_diff']:.3f} | {r['cost32']:.2f} | {r['cost16']:.2f} |")


if __name__ == "__main__":
    main()
