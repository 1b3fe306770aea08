"""The ``lewm`` command: collect | train | info | eval | baseline | gcbc | compare | bench | probe | rollout |
surprise | import | demo.

Each subcommand is a thin layer over one Python function, so everything here is also scriptable. Its
options are generated from the configuration dataclasses of :mod:`lewm_agent.config` (defaults and
help text live there, once). Heavy imports happen inside the handlers so ``lewm --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from lewm_agent.bench import BenchConfig
from lewm_agent.config import (
    BaselineConfig,
    CollectConfig,
    CompareConfig,
    EvalConfig,
    GCBCConfig,
    ProbeConfig,
    Protocol,
    RolloutConfig,
    SurpriseConfig,
    TrainConfig,
)
from lewm_agent.demo import DemoConfig
from lewm_agent.options import add_options, options_of


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    return i, n


def parse_setting(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE`` for a LeWMConfig setting; the value is parsed as an int, a float or kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"takes KEY=VALUE (e.g. embed_dim=16), got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _collect(a) -> None:
    from lewm_agent.data.collector import collect

    o = options_of(a, CollectConfig)
    o["env_kwargs"] = dict(a.env_kwarg or [])
    path = collect(o.pop("env_id"), o.pop("episodes"), shard=a.shard, **o)
    print(f"episodes in {path}")


def _train(a) -> None:
    from lewm_agent.train import train

    cfg = TrainConfig(**options_of(a, TrainConfig), model_overrides=dict(a.set or []))
    print(f"checkpoint in {train(cfg)}")


def _info(a) -> None:
    from lewm_agent.runs import Run

    print(Run(a.run_dir).describe())


def _eval(a) -> None:
    from lewm_agent.evaluation import evaluate, markdown_table

    o = options_of(a, EvalConfig)
    overrides = {"precision": o.pop("precision"), "compile": o.pop("compile")}
    for option in ("samples", "iterations", "block_noise", "horizon", "receding_horizon", "goal_cost"):  # given ones only
        value = o.pop(option)
        if value is not None:
            overrides["num_samples" if option == "samples" else option] = value
    if overrides["compile"]:
        print("--compile: the first plan of each new shape compiles the rollout first (about a minute each "
              "with torch's compile cache cold, seconds when warm)", flush=True)
    report = evaluate(
        a.run_dir, data=o["data"], out=o["out"], env_id=o["env"], protocol=Protocol(**options_of(a, Protocol)),
        device=o["device"], planner=o["planner"], videos=o["videos"], baselines=tuple(a.baseline or ["random"]),
        **overrides,
    )
    print(markdown_table(report))


def _baseline(a) -> None:
    from lewm_agent.baselines.sb3 import train_sb3

    cfg = BaselineConfig(**options_of(a, BaselineConfig), algo_kwargs=dict(a.set or []))
    print(f"baseline in {train_sb3(cfg)} (model.zip opens with stable_baselines3.{cfg.algo.upper()}.load)")


def _gcbc(a) -> None:
    from lewm_agent.baselines.gcbc import train_gcbc

    print(f"GCBC run in {train_gcbc(GCBCConfig(**options_of(a, GCBCConfig)))}")


def _compare(a) -> None:
    from lewm_agent.evaluation.compare import compare, compare_table

    o = options_of(a, CompareConfig)
    report = compare(a.agents, o["out"], data=o["data"], env_id=o["env"], protocol=Protocol(**options_of(a, Protocol)),
                     device=o["device"], planner=o["planner"], videos=o["videos"])
    print(compare_table(report))
    print(f"results.json, results.md, compare.png and videos/ in {o['out']}")


def _bench(a) -> None:
    from lewm_agent.bench import bench

    bench(BenchConfig(**options_of(a, BenchConfig)), extra_agents=tuple(a.agent or ()))


def _probe(a) -> None:
    from lewm_agent.analysis import probe, probe_table
    from lewm_agent.analysis.probe import parse_quantity

    quantities = [parse_quantity(q) for q in a.quantity] if a.quantity else None
    report = probe(a.run_dir, quantities=quantities, **options_of(a, ProbeConfig))
    print(probe_table(report))


def _rollout(a) -> None:
    from lewm_agent.analysis import rollout_error, rollout_table

    print(rollout_table(rollout_error(a.run_dir, **options_of(a, RolloutConfig))))


def _surprise(a) -> None:
    from lewm_agent.analysis import surprise_experiment, surprise_table

    o = options_of(a, SurpriseConfig)
    report = surprise_experiment(a.run_dir, env_id=o.pop("env"), kinds=tuple(a.kind or ("teleport", "color")), **o)
    print(surprise_table(report))


def _import(a) -> None:
    from lewm_agent.official import import_release

    run = import_release(a.source, a.data, a.out, config=a.config, env_id=a.env)
    print(f"run folder {run}: use it with `lewm info {run}`, `lewm eval {run} --data HELDOUT.h5`, "
          f"LeWMAgent.load({str(run)!r}) or `lewm train DATA --out {run}` (fine-tuning)")


def _demo(a) -> None:
    from lewm_agent.demo import run_demo

    run_demo(DemoConfig(**options_of(a, DemoConfig)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lewm", description="LeWorldModel agents: collect, train, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="collect episodes of an env into an HDF5 episode store")
    add_options(c, CollectConfig, positional=("env_id",))
    c.add_argument("--shard", type=_shard, default=None, help="I/N: collect every N-th episode from I")
    c.add_argument("--env-kwarg", type=parse_setting, action="append", metavar="KEY=VALUE",
                   help="keyword argument of gym.make, given to the expert too, e.g. goal_room=other (repeatable)")
    c.set_defaults(fn=_collect)

    t = sub.add_parser("train", help="train a LeWM on an episode store (resumes an existing run folder)")
    add_options(t, TrainConfig, positional=("data",))
    t.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE",
                   help="override a model setting of the preset, e.g. --set embed_dim=16 (repeatable)")
    t.set_defaults(fn=_train)

    i = sub.add_parser("info", help="describe a run folder (and check that its weights load)")
    i.add_argument("run_dir")
    i.set_defaults(fn=_info)

    e = sub.add_parser("eval", help="goal-reaching evaluation (paper protocol) with the random floor")
    e.add_argument("run_dir")
    add_options(e, EvalConfig)
    add_options(e, Protocol)
    e.add_argument("--baseline", action="append", default=None,
                   help="baseline policy run on the same episodes (repeatable): random (default), expert, sb3:PATH.zip")
    e.set_defaults(fn=_eval)

    b = sub.add_parser("baseline", help="train a Stable-Baselines3 PPO or SAC baseline from pixels (resumes)")
    add_options(b, BaselineConfig, positional=("algo",))
    b.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE",
                   help="a Stable-Baselines3 constructor argument, e.g. --set learning_rate=0.0003 (repeatable)")
    b.set_defaults(fn=_baseline)

    g = sub.add_parser("gcbc", help="train goal-conditioned behaviour cloning on an episode store (resumes)")
    add_options(g, GCBCConfig, positional=("data",))
    g.set_defaults(fn=_gcbc)

    cm = sub.add_parser("compare", help="LeWM runs, SB3 zips, GCBC runs, random and expert on the same episodes")
    cm.add_argument("agents", nargs="+", metavar="AGENT",
                    help="random | expert[:NOISE] | LeWM run folder | GCBC run folder | SB3 .zip, each optionally LABEL=SPEC")
    add_options(cm, CompareConfig)
    add_options(cm, Protocol)
    cm.set_defaults(fn=_compare)

    bn = sub.add_parser("bench", help="an env's recipe end to end: collect, train, compare with random, expert "
                                      "and baselines (resumes)")
    add_options(bn, BenchConfig, positional=("env",))
    bn.add_argument("--agent", action="append", metavar="[LABEL=]SPEC",
                    help="another agent for the comparison, as for `lewm compare` (repeatable; one env only)")
    bn.set_defaults(fn=_bench)

    pr = sub.add_parser("probe", help="linear and MLP probes of physical quantities from the frozen encoder")
    pr.add_argument("run_dir")
    add_options(pr, ProbeConfig)
    pr.add_argument("--quantity", action="append", metavar="NAME=COLUMN:I,J[@PERIOD]",
                    help="probe this instead of the env's own quantities (repeatable), e.g. agent=state:0,1")
    pr.set_defaults(fn=_probe)

    ro = sub.add_parser("rollout", help="open-loop prediction error along recorded actions, 1 to N blocks ahead")
    ro.add_argument("run_dir")
    add_options(ro, RolloutConfig)
    ro.set_defaults(fn=_rollout)

    s = sub.add_parser("surprise", help="surprise of paired unperturbed / teleported / recoloured episodes")
    s.add_argument("run_dir")
    add_options(s, SurpriseConfig)
    s.add_argument("--kind", action="append", choices=("teleport", "color"),
                   help="perturbation (repeatable; default both)")
    s.set_defaults(fn=_surprise)

    m = sub.add_parser("import", help="turn an official LeWM release (weights.pt + config.json) into a run folder")
    m.add_argument("source", help="release folder holding weights.pt and config.json, or a weights.pt file")
    m.add_argument("--data", required=True,
                   help="episode store of the model's env (its action column fits the action normaliser)")
    m.add_argument("--out", required=True, help="run folder to write (must not exist yet)")
    m.add_argument("--config", default=None, help="config.json, when SOURCE is a bare weights.pt")
    m.add_argument("--env", default=None, help="env id to record (default: the store's)")
    m.set_defaults(fn=_import)

    d = sub.add_parser("demo", help="collect TwoRoom data, train a CPU-sized LeWM, evaluate it (about 10 min)")
    add_options(d, DemoConfig)
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
