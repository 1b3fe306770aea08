"""The ``lewm`` command: collect | train | info | eval | demo.

Each subcommand is a thin layer over one Python function, so everything here is also scriptable.
Heavy imports happen inside the handlers so ``lewm --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    return i, n


def _setting(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE`` for a LeWMConfig setting; the value is parsed as an int, a float or kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE (e.g. embed_dim=16), got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _collect(a) -> None:
    from lewm_agent.data.collector import collect

    path = collect(
        a.env_id, a.episodes, policy=a.policy, out=a.out, image_size=a.image_size, num_envs=a.num_envs,
        seed=a.seed, shard=a.shard, max_episode_steps=a.max_episode_steps,
    )
    print(f"episodes in {path}")


def _train(a) -> None:
    from lewm_agent.train import TrainConfig, train

    cfg = TrainConfig(
        data=a.data, out=a.out, preset=a.preset, epochs=a.epochs, steps=a.steps, batch_size=a.batch_size,
        lr=a.lr, sigreg_weight=a.sigreg_weight, frameskip=a.frameskip, history=a.history, seed=a.seed,
        device=a.device, num_workers=a.num_workers, tensorboard=a.tensorboard, model_overrides=dict(a.set or []),
    )
    print(f"checkpoint in {train(cfg)}")


def _info(a) -> None:
    from lewm_agent.checkpoint import describe_checkpoint

    print(describe_checkpoint(a.run_dir))


def _eval(a) -> None:
    from lewm_agent.evaluation import Protocol, evaluate

    overrides = {"precision": a.precision, "compile": a.compile}
    if a.samples is not None:
        overrides["num_samples"] = a.samples
    if a.iterations is not None:
        overrides["iterations"] = a.iterations
    if a.compile:
        print("--compile: the first plan of each new shape compiles the rollout first (about a minute each "
              "with torch's compile cache cold, seconds when warm)", flush=True)
    report = evaluate(
        a.run_dir, data=a.data, out=a.out, env_id=a.env,
        protocol=Protocol(episodes=a.episodes, goal_offset=a.goal_offset, budget=a.budget, seed=a.seed),
        device=a.device, planner=a.planner, videos=a.videos, baselines=tuple(a.baseline or ["random"]),
        **overrides,
    )
    from lewm_agent.evaluation import markdown_table

    print(markdown_table(report))


def _demo(a) -> None:
    from lewm_agent.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=a.out, steps=a.steps, device=a.device, train_episodes=a.episodes, planner=a.planner))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lewm", description="LeWorldModel agents: collect, train, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="collect episodes of an env into an HDF5 episode store")
    c.add_argument("env_id", help="e.g. lewm/TwoRoom-v0")
    c.add_argument("--episodes", type=int, required=True)
    c.add_argument("--policy", default="random", help="random | expert | expert:NOISE | sb3:PATH.zip")
    c.add_argument("--out", required=True, help="HDF5 file (appends / resumes if it exists)")
    c.add_argument("--image-size", type=int, default=64)
    c.add_argument("--num-envs", type=int, default=1)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--shard", type=_shard, default=None, help="I/N: collect every N-th episode from I")
    c.add_argument("--max-episode-steps", type=int, default=None)
    c.set_defaults(fn=_collect)

    t = sub.add_parser("train", help="train a LeWM on an episode store (resumes an existing run folder)")
    t.add_argument("data")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--preset", default="small", help="paper | small | tiny")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--lambda", dest="sigreg_weight", type=float, default=0.09, help="SIGReg weight")
    t.add_argument("--frameskip", type=int, default=5)
    t.add_argument("--history", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--num-workers", type=int, default=None)
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--set", type=_setting, action="append", metavar="KEY=VALUE",
                   help="override a model setting of the preset, e.g. --set embed_dim=16 (repeatable)")
    t.set_defaults(fn=_train)

    i = sub.add_parser("info", help="describe a checkpoint folder")
    i.add_argument("run_dir")
    i.set_defaults(fn=_info)

    e = sub.add_parser("eval", help="goal-reaching evaluation (paper protocol) with the random floor")
    e.add_argument("run_dir")
    e.add_argument("--data", default=None, help="held-out episode store (dataset protocol); omit for env goals")
    e.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval)")
    e.add_argument("--env", default=None, help="env id (default: the one the model was trained on)")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--goal-offset", type=int, default=25)
    e.add_argument("--budget", type=int, default=50)
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--planner", default=None, help="cem | mppi | gradient | categorical_cem")
    e.add_argument("--samples", type=int, default=None)
    e.add_argument("--iterations", type=int, default=None)
    e.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="rollout arithmetic while planning (bf16: faster on CPUs with native bf16 and on GPUs)")
    e.add_argument("--compile", action="store_true",
                   help="torch.compile the rollout: faster plans after a one-off compile (up to a minute) "
                        "inside the first plans, which the mean and p95 plan times then include")
    e.add_argument("--videos", type=int, default=4)
    e.add_argument("--baseline", action="append", default=None,
                   help="baseline policy run on the same episodes (repeatable): random (default), expert, sb3:PATH.zip")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=_eval)

    d = sub.add_parser("demo", help="collect TwoRoom data, train a CPU-sized LeWM, evaluate it (about 10 min)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--steps", type=int, default=2500)
    d.add_argument("--episodes", type=int, default=1500, help="training episodes to collect")
    d.add_argument("--planner", default="mppi", help="mppi (default) | cem (the paper's) | gradient")
    d.add_argument("--device", default="auto")
    d.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError) as err:
        print(f"lewm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlewm {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
