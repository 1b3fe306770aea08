"""Recipes and `lewm bench`: settings reach the trainer and the planner unchanged; every recipe runs end
to end at a tiny size through the same stages as the real bench; every stage resumes."""

from __future__ import annotations

import json
from dataclasses import fields

import h5py
import pytest

from lewm_agent.bench import BenchConfig, bench_names, run_bench, summary_table, write_summary
from lewm_agent.config import Protocol, TrainConfig
from lewm_agent.recipes import RECIPES, SIZES, get_recipe

TINY_PLANNER = {"cem": {"num_samples": 8, "iterations": 2, "topk": 2},
                "mppi": {"num_samples": 8, "iterations": 2, "topk": 2},
                "categorical_cem": {"num_samples": 8, "iterations": 2, "topk": 2},
                "beam": {"width": 4}}
TINY_PROTOCOL = Protocol(episodes=2, goal_offset=5, budget=5)


def tiny(name: str):
    """The recipe of ``name`` shrunk to seconds: same env, env kwargs, policy, preset and planner (its
    settings too, but for fewer samples and iterations)."""
    r = get_recipe(name)
    return r.with_overrides(train_episodes=4, eval_episodes=3, max_episode_steps=30, steps=2, batch_size=4,
                            planner_settings={**r.planner_settings, **TINY_PLANNER[r.planner]})


def test_every_recipe_has_both_sizes_and_valid_settings():
    for name, sizes in RECIPES.items():
        assert set(sizes) == set(SIZES), name
        for size, r in sizes.items():
            cfg = r.train_config("data.h5", "run")
            cfg.check()
            assert get_recipe(r.env_id, size) is r  # env ids name recipes too
    assert get_recipe("pusht", "paper").preset == "paper" and get_recipe("pusht", "paper").image_size == 224


def test_recipe_settings_reach_the_train_config_unchanged():
    r = get_recipe("tworoom")
    cfg = r.train_config("d.h5", "out", seed=3, device="cpu")
    for f in ("preset", "steps", "epochs", "batch_size", "lr", "frameskip", "history", "image_size"):
        assert getattr(cfg, f) == getattr(r, f), f
    assert cfg.model_overrides == r.model_overrides and cfg.seed == 3
    assert {f.name for f in fields(TrainConfig)} >= {"model_overrides", "preset"}


def test_bad_recipe_names_and_settings_are_refused():
    with pytest.raises(ValueError, match="tworoom"):
        get_recipe("nosuchenv")
    with pytest.raises(ValueError, match="cpu"):
        get_recipe("tworoom", "huge")
    with pytest.raises(ValueError, match="valid settings"):
        get_recipe("tworoom").with_overrides(stepz=3)
    with pytest.raises(ValueError, match="tworoom"):
        bench_names("nosuchenv")


def _bench(tmp_path, name):
    cfg = BenchConfig(env=name, out=str(tmp_path), device="cpu", progress=False)
    return run_bench(name, cfg, recipe=tiny(name), protocol=TINY_PROTOCOL)


def test_tworoom_bench_end_to_end_and_resume(tmp_path, capsys):
    from lewm_agent.agent import LeWMAgent
    from lewm_agent.data.store import EpisodeStore

    report = _bench(tmp_path, "tworoom")
    out = tmp_path / "tworoom"
    assert set(report["results"]) == {"LeWM", "random", "expert"}
    assert report["results"]["expert"]["success_rate"] >= report["results"]["random"]["success_rate"]
    assert report["train_data"]["episodes"] == 4 and report["settings"]["env_kwargs"] == {"goal_room": "other"}
    # The recipe's env kwargs are recorded by the data and the run; its planner is the run's default.
    with EpisodeStore(out / "data" / "train.h5") as store:
        assert store.env_kwargs == {"goal_room": "other"}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["data"]["env_kwargs"] == {"goal_room": "other"}
    agent = LeWMAgent.load(out / "model", device="cpu")
    assert type(agent.planner).__name__ == "MPPI" and agent.planner.num_samples == 8
    assert agent.planner.block_noise == get_recipe("tworoom").planner_settings["block_noise"]
    assert json.loads((out / "compare" / "results.json").read_text())["env_kwargs"] == {"goal_room": "other"}
    assert (out / "compare" / "results.md").is_file() and (out / "bench.json").is_file()
    # Again: nothing is collected, trained or evaluated twice.
    mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    again = _bench(tmp_path, "tworoom")
    with h5py.File(out / "data" / "train.h5") as f:
        assert len(f["ep_len"]) == 4
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    assert again["results"] == report["results"]
    assert "already trained" in capsys.readouterr().out
    benches = write_summary(tmp_path)
    assert (tmp_path / "summary.md").read_text() == summary_table(benches)
    assert "| tworoom | cpu |" in summary_table(benches)


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "tworoom"])
def test_every_other_recipe_runs_end_to_end_at_a_tiny_size(tmp_path, name):
    if name not in bench_names("all"):
        pytest.skip(f"{name}'s simulator is not installed")
    report = _bench(tmp_path, name)
    assert set(report["results"]) == {"LeWM", "random", "expert"}
    assert report["results"]["LeWM"]["episodes"] == TINY_PROTOCOL.episodes
    # The recipe's agent settings (horizon, replanning, goal cost) are what the benched agent plans with.
    from lewm_agent.agent import LeWMAgent

    agent = LeWMAgent.load(tmp_path / name / "model", device="cpu")
    recipe = get_recipe(name)
    for key, value in recipe.agent_settings.items():
        assert getattr(agent, key) == value, key
    for key, value in recipe.planner_settings.items():
        assert getattr(agent.planner, key) == value, key
    assert agent.frameskip == recipe.frameskip
