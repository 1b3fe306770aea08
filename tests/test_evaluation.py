import json

import gymnasium as gym
import h5py
import lewm_envs  # noqa: F401
import numpy as np
import pytest

from lewm_agent.cli import main
from lewm_agent.data.store import EpisodeStore, EpisodeWriter
from lewm_agent.evaluation import (
    EpisodeSpec,
    Protocol,
    dataset_episodes,
    run_episodes,
    summarize,
    timing_stats,
)


class PushRight:
    """Scripted policy: full speed in +x (TwoRoom moves 5 canvas px per step)."""

    def reset(self, env_indices=None):
        pass

    def act(self, obs):
        return np.tile(np.array([1.0, 0.0], np.float32), (len(obs["pixels"]), 1))


def tworoom():
    return gym.make("lewm/TwoRoom-v0", image_size=32)


def test_evaluator_matches_a_hand_count():
    # TwoRoom success: distance < 16. Pushing right at 5 px/step from distance d along x succeeds at the
    # first step k with d - 5k < 16; starting inside the disc counts as success at step 0.
    cases = [  # (start, goal, expected steps to success or None)
        ((30.0, 150.0), (60.0, 150.0), 3),  # 30 -> 25 -> 20 -> 15
        ((30.0, 150.0), (40.0, 150.0), 0),  # already within 16
        ((30.0, 150.0), (30.0, 100.0), None),  # goal is straight above: moving right never helps
        ((150.0, 60.0), (200.0, 60.0), 7),  # 50 - 35 = 15 < 16 at step 7
        ((60.0, 150.0), (160.0, 150.0), None),  # the wall blocks (door is at y = 49)
    ]
    specs = [EpisodeSpec(reset_seed=i, options={"state": np.array(s), "goal_state": np.array(g)})
             for i, (s, g, _) in enumerate(cases)]
    results, videos = run_episodes(PushRight(), tworoom, specs, budget=10, record=2, progress=False)
    assert [r.steps_to_success for r in results] == [c[2] for c in cases]
    summary = summarize(results)
    assert summary["successes"] == 3 and summary["success_rate"] == pytest.approx(60.0)
    assert summary["mean_steps_to_success"] == pytest.approx((3 + 0 + 7) / 3)
    assert len(videos) == 2 and videos[0][0].shape == (32, 64, 3)  # agent view | goal


def test_dataset_episodes_follow_the_protocol(tmp_path):
    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with EpisodeWriter(path) as w:
        for n in (40, 26, 60):
            xy = rng.uniform(30, 90, (n, 2))
            action = np.vstack([rng.uniform(-1, 1, (n - 1, 2)), np.full((1, 2), np.nan)]).astype(np.float32)
            w.add_episode({"pixels": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), "action": action,
                           "state": np.hstack([xy, xy]).astype(np.float32)})
    store = EpisodeStore(path)
    protocol = Protocol(episodes=20, goal_offset=25, seed=42)
    specs = dataset_episodes(store, protocol)
    again = dataset_episodes(store, protocol)
    assert [s.source for s in specs] == [s.source for s in again]  # seeded
    assert len({s.source for s in specs}) == 20
    for s in specs:
        ep, start = s.source
        assert start <= store.ep_len[ep] - 25 - 1
        row = store.ep_offset[ep] + start
        np.testing.assert_array_equal(s.options["state"], store.read("state", row))
        np.testing.assert_array_equal(s.options["goal_state"], store.read("state", row + 25))
        np.testing.assert_array_equal(s.goal_image, store.read("pixels", row + 25))
    with pytest.raises(ValueError, match="fewer than"):
        dataset_episodes(store, Protocol(episodes=500))


def test_timing_stats():
    t = timing_stats([1.0, 2.0, 3.0, 4.0])
    assert t["calls"] == 4 and t["mean_s"] == 2.5 and t["median_s"] == 2.5
    assert timing_stats([]) == {"calls": 0}


def test_demo_pipeline_end_to_end_at_tiny_size(tmp_path, capsys):
    """collect -> train -> eval -> table/plot/video, through the same function `lewm demo` runs."""
    from lewm_agent.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=str(tmp_path / "demo"), train_episodes=8, eval_episodes=6, steps=3, epochs=1,
                     batch_size=8, eval_count=3, progress=False, planner_overrides={"num_samples": 16, "iterations": 2, "topk": 4})
    report = run_demo(cfg)
    out = tmp_path / "demo" / "eval"
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"]["episodes"] == 3 and set(saved["policies"]) == {"LeWM", "random"}
    assert saved["policies"]["LeWM"]["precision"] == "fp32" and saved["policies"]["LeWM"]["compiled"] is False
    assert (out / "results.md").read_text().startswith("Env `lewm/TwoRoom-v0`")
    assert (out / "plot.png").stat().st_size > 1000
    assert report["videos"] and all((tmp_path / "demo" / "eval").glob("episode_00.*"))
    assert "LeWM" in capsys.readouterr().out
    # The run plans as the demo evaluated it, with no options given.
    from lewm_agent.agent import LeWMAgent

    agent = LeWMAgent.load(tmp_path / "demo" / "model", device="cpu")
    assert type(agent.planner).__name__ == "MPPI" and agent.planner.num_samples == 16
    assert agent.planner.block_noise == cfg.block_noise == 1.0
    # Running it again resumes: nothing is re-collected and training is already complete.
    with h5py.File(tmp_path / "demo" / "data" / "train.h5") as f:
        before = len(f["ep_len"])
    run_demo(cfg)
    with h5py.File(tmp_path / "demo" / "data" / "train.h5") as f:
        assert len(f["ep_len"]) == before


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing_run")]) == 2
    assert "missing_run" in capsys.readouterr().err
    assert main(["collect", "lewm/NoSuchEnv-v0", "--episodes", "1", "--out", str(tmp_path / "x.h5")]) == 2
    assert "lewm/TwoRoom-v0" in capsys.readouterr().err  # the message lists valid ids
    assert not (tmp_path / "x.h5").exists()
