"""The command line is generated from the configuration dataclasses: every default is declared once."""

import argparse
import dataclasses
import inspect

import numpy as np
import pytest

from lewm_agent.bench import BenchConfig
from lewm_agent.cli import build_parser, main
from lewm_agent.config import (
    BaselineConfig,
    CollectConfig,
    CompareConfig,
    EvalConfig,
    GCBCConfig,
    LeWMConfig,
    ProbeConfig,
    Protocol,
    SurpriseConfig,
    TrainConfig,
    preset_config,
)
from lewm_agent.demo import DemoConfig

COMMANDS = {"collect": [CollectConfig], "train": [TrainConfig], "eval": [EvalConfig, Protocol], "demo": [DemoConfig],
            "probe": [ProbeConfig], "surprise": [SurpriseConfig], "baseline": [BaselineConfig], "gcbc": [GCBCConfig],
            "compare": [CompareConfig, Protocol], "bench": [BenchConfig]}


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_defaults_are_the_dataclass_defaults(command):
    actions = {a.dest: a for a in _subparser(command)._actions}
    for cls in COMMANDS[command]:
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata or not f.metadata.get("cli", True):
                continue
            action = actions[f.name]  # every described field is on the command line
            default = None if f.default is dataclasses.MISSING else f.default
            assert action.default == default, (command, f.name)
            assert f.metadata["help"] in action.help


def test_functions_default_to_their_configs():
    from lewm_agent.agent import LeWMAgent
    from lewm_agent.data.collector import collect
    from lewm_agent.evaluation import evaluate

    params = inspect.signature(collect).parameters
    for name in ("policy", "image_size", "num_envs", "seed", "max_episode_steps"):
        assert params[name].default == getattr(CollectConfig, name), name
    params = inspect.signature(evaluate).parameters
    assert params["videos"].default == EvalConfig.videos and params["protocol"].default == Protocol()
    assert inspect.signature(LeWMAgent.load).parameters["precision"].default == EvalConfig.precision
    cfg = TrainConfig(data="d.h5", out="run")
    assert (cfg.sigreg_weight, cfg.history, cfg.frameskip) == (
        LeWMConfig.sigreg_weight, LeWMConfig.history, LeWMConfig.action_block)
    assert preset_config("paper", 2).action_block == LeWMConfig.action_block


def test_paper_planner_defaults_live_in_the_planner():
    from lewm_agent.planning import make_planner

    cem = make_planner("cem")
    assert (cem.num_samples, cem.iterations, cem.topk) == (300, 30, 30)  # the paper's CEM


def test_cli_option_types_and_errors(capsys):
    args = build_parser().parse_args(["train", "d.h5", "--out", "r", "--lambda", "0.5", "--no-tensorboard",
                                      "--steps", "7"])
    assert (args.sigreg_weight, args.tensorboard, args.steps, args.data) == (0.5, False, 7, "d.h5")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "d.h5"])  # --out is required
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "run", "--precision", "fp8"])
    assert "invalid choice" in capsys.readouterr().err


def test_baseline_and_compare_commands_refuse_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline", "dqn", "--env", "lewm/TwoRoom-v0", "--out", "b"])
    assert "invalid choice" in capsys.readouterr().err
    args = build_parser().parse_args(["baseline", "sac", "--env", "e", "--out", "b", "--set", "tau=0.01"])
    assert (args.algo, args.set) == ("sac", [("tau", 0.01)])
    assert main(["compare", "random", "nonsense", "--out", str(tmp_path / "c"), "--env", "lewm/TwoRoom-v0"]) == 2
    assert "unknown agent 'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_collect_forwards_env_kwargs_and_names_a_wrong_one(tmp_path, capsys):
    from lewm_agent.data.store import EpisodeStore

    out = tmp_path / "d.h5"
    assert main(["collect", "lewm/MiniGrid-MultiRoom-v0", "--episodes", "2", "--out", str(out), "--policy", "expert",
                 "--max-episode-steps", "10", "--env-kwarg", "layout=two_rooms", "--env-kwarg", "show_goal=0"]) == 0
    with EpisodeStore(out) as store:
        assert store.env_kwargs == {"layout": "two_rooms", "show_goal": 0}
        # the expert got the layout too: its BFS over the two-room grid reaches goals in the 9x7 grid
        assert store.read("state", np.arange(int(np.sum(store.ep_len))))[:, :2].max() <= 8
    # other kwargs cannot be appended to the same store; an unknown one is named, nothing is written
    assert main(["collect", "lewm/MiniGrid-MultiRoom-v0", "--episodes", "3", "--out", str(out),
                 "--max-episode-steps", "10"]) == 2
    assert "layout" in capsys.readouterr().err
    assert main(["collect", "lewm/TwoRoom-v0", "--episodes", "1", "--out", str(tmp_path / "x.h5"),
                 "--env-kwarg", "goal_rom=other"]) == 2
    assert "goal_rom" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()


def test_eval_passes_the_agent_settings_to_the_agent(monkeypatch):
    import lewm_agent.evaluation as evaluation

    seen = {}
    monkeypatch.setattr(evaluation, "evaluate", lambda run_dir, **kw: seen.update(kw) or {})
    monkeypatch.setattr(evaluation, "markdown_table", lambda report: "")
    assert main(["eval", "run", "--goal-cost", "min", "--receding-horizon", "1", "--samples", "64",
                 "--block-noise", "0.5"]) == 0
    assert (seen["goal_cost"], seen["receding_horizon"], seen["num_samples"], seen["block_noise"]) == ("min", 1, 64, 0.5)
    assert "horizon" not in seen  # options left out keep the run's settings
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "run", "--goal-cost", "sum"])
