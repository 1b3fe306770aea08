import gymnasium as gym
import lewm_envs  # noqa: F401
import numpy as np
import pytest
import torch

from lewm_agent.agent import LeWMAgent
from lewm_agent.model import LeWM
from lewm_agent.runs import Run
from lewm_agent.spaces import ActionCodec, ActionSpec

TINY = dict(enc_dim=32, enc_depth=1, enc_heads=2, enc_mlp_dim=64, embed_dim=16, proj_hidden=32, pred_depth=1,
            pred_heads=2, pred_dim_head=8, pred_mlp_dim=32, sigreg_num_proj=16)
FAST_PLANNER = dict(num_samples=16, iterations=2, topk=4)


def make_run(tmp_path, spec: ActionSpec, name="run"):
    torch.manual_seed(0)
    model = LeWM.from_preset("tiny", action_dim=spec.feature_dim, **TINY)
    for block in model.predictor.blocks:  # make the AdaLN-zero blocks non-trivial
        torch.nn.init.normal_(block.adaLN_modulation[1].weight, std=0.1)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, spec.dim, (100, 1)) if spec.kind == "discrete" else rng.uniform(-1, 1, (100, spec.dim))
    codec = ActionCodec.fit(spec, raw)
    run = tmp_path / name
    Run(run).save(model, codec, data={"env_id": "lewm/TwoRoom-v0", "frameskip": 5, "image_size": 64})
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path, ActionSpec.from_space(gym.spaces.Box(-1, 1, (2,), np.float32)))


def test_act_single_observation_through_an_episode(run_dir):
    agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
    env = gym.make("lewm/TwoRoom-v0", image_size=64)
    obs, _ = env.reset(seed=0)
    agent.reset()
    for _ in range(12):
        action = agent.act(obs)
        assert action.shape == (2,) and env.action_space.contains(action)
        obs, *_ = env.step(action)
    assert len(agent.plan_times) == 1  # 5 blocks x 5 steps executed before replanning


def test_act_on_a_vector_env_batch(run_dir):
    agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("lewm/TwoRoom-v0", image_size=64)] * 3)
    obs, _ = envs.reset(seed=0)
    for _ in range(3):
        actions = agent.act(obs)
        assert actions.shape == (3, 2) and np.all(np.abs(actions) <= 1)
        obs, *_ = envs.step(actions)
    envs.close()


def test_batched_planning_equals_single_plans(run_dir):
    envs = [gym.make("lewm/TwoRoom-v0", image_size=64) for _ in range(3)]
    obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    batched = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER).act(batch)
    for i in range(3):
        single_agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
        # Row i of a batch plans with the same seed stream as env 0 of a fresh agent only if it is row 0,
        # so compare through a batch whose row i is this env.
        rows = {k: np.stack([obs[j][k] for j in range(i + 1)]) for k in obs[0]}
        np.testing.assert_allclose(single_agent.act(rows)[i], batched[i], atol=1e-5)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_block_noise_reaches_the_planner_with_the_models_action_block(run_dir, share):
    # MPPI's plan is a weighted mean of its candidates: with the whole noise shared by a block's five
    # env steps, every candidate, and so the plan, repeats one action through each block.
    agent = LeWMAgent.load(run_dir, device="cpu", planner="mppi", block_noise=share, **FAST_PLANNER)
    env = gym.make("lewm/TwoRoom-v0", image_size=64)
    obs, _ = env.reset(seed=0)
    actions = []
    for _ in range(5):
        actions.append(agent.act(obs))
        obs, *_ = env.step(actions[-1])
    assert agent.planner.block_noise == share
    assert np.allclose(actions, actions[0]) == (share == 1.0)


def test_sb3_evaluate_policy_runs_on_the_agent(run_dir):
    from stable_baselines3.common.evaluation import evaluate_policy

    agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
    env = gym.make("lewm/TwoRoom-v0", image_size=64, max_episode_steps=15)
    mean, std = evaluate_policy(agent, env, n_eval_episodes=2, warn=False)
    assert np.isfinite(mean) and np.isfinite(std)


def test_discrete_actions_use_categorical_cem(tmp_path):
    run = make_run(tmp_path, ActionSpec("discrete", 3))
    agent = LeWMAgent.load(run, device="cpu", **FAST_PLANNER)
    assert type(agent.planner).__name__ == "CategoricalCEM"
    obs = {"pixels": np.zeros((64, 64, 3), np.uint8), "goal": np.full((64, 64, 3), 255, np.uint8)}
    action = agent.act(obs)
    assert action.dtype.kind == "i" and 0 <= int(action) < 3


def test_beam_search_merges_on_the_predictors_whole_context(tmp_path):
    run = make_run(tmp_path, ActionSpec("discrete", 3))
    agent = LeWMAgent.load(run, device="cpu", planner="beam", width=4, horizon=2, receding_horizon=1)
    key_sizes, plan = [], agent.planner.plan

    def spy(cost_fn, *args, state_fn=None, **kwargs):
        def states(candidates):
            out = state_fn(candidates)
            key_sizes.append(out.shape[-1])
            return out

        return plan(cost_fn, *args, state_fn=states, **kwargs)

    agent.planner.plan = spy
    cfg = agent.model.config
    rng = np.random.default_rng(0)
    for _ in range(cfg.history + 1):
        obs = {"pixels": rng.integers(0, 256, (64, 64, 3), np.uint8), "goal": np.zeros((64, 64, 3), np.uint8)}
        action = agent.act(obs)
        assert action.dtype.kind == "i" and 0 <= int(action) < 3
    # Once the history is full, a state is the last `history` embeddings and the actions between them.
    assert cfg.history > 1 and key_sizes[-1] == cfg.history * cfg.embed_dim + (cfg.history - 1) * cfg.action_block_dim


def test_set_goal_for_envs_without_goal_images(run_dir):
    agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
    obs = {"pixels": np.zeros((48, 48, 3), np.uint8)}  # any size: resized to the model's
    with pytest.raises(ValueError, match="set_goal"):
        agent.act(obs)
    agent.set_goal(np.zeros((48, 48, 3), np.uint8))
    assert agent.act(obs).shape == (2,)


def test_bad_inputs_are_named(run_dir, tmp_path):
    agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
    with pytest.raises(ValueError, match="PixelGoalWrapper"):
        agent.act(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        agent.act({"pixels": np.zeros((64, 64), np.float32), "goal": np.zeros((64, 64), np.float32)})
    with pytest.raises(ValueError, match="goal"):
        agent.act({"pixels": np.zeros((64, 64, 3), np.uint8), "goal": np.zeros((32, 32, 3), np.uint8)})
    with pytest.raises(ValueError, match="cem"):
        LeWMAgent.load(run_dir, planner="beam_search")
    with pytest.raises(ValueError, match="num_samples"):
        LeWMAgent.load(run_dir, samples=3)
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        LeWMAgent.load(tmp_path / "nowhere")


def test_behaviour_policies_run_as_baselines_on_batches():
    from stable_baselines3.common.evaluation import evaluate_policy

    from lewm_agent.baselines import PolicyAgent

    envs = gym.vector.SyncVectorEnv([lambda: gym.make("lewm/TwoRoom-v0", image_size=32)] * 2)
    expert = PolicyAgent.make("expert", envs, env_id="lewm/TwoRoom-v0", seed=0)
    obs, _ = envs.reset(seed=0)
    assert expert.act(obs).shape == (2, 2)
    envs.close()
    env = gym.make("lewm/TwoRoom-v0", image_size=32)
    rand = PolicyAgent.make("random", env, seed=0)
    assert env.action_space.contains(rand.act(env.reset(seed=0)[0]))
    rewards, lengths = evaluate_policy(PolicyAgent.make("expert", env, seed=0), env, n_eval_episodes=3,
                                       return_episode_rewards=True, warn=False)
    assert len(lengths) == 3


@pytest.mark.parametrize(
    "planner, settings",
    [("cem", FAST_PLANNER), ("mppi", {"num_samples": 16, "iterations": 2, "topk": 4}), ("gradient", {"iterations": 3})],
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_planner_and_precision_drives_the_agent(run_dir, planner, settings, precision):
    agent = LeWMAgent.load(
        run_dir, device="cpu", planner=planner, precision=precision, receding_horizon=1, **settings
    )
    env = gym.make("lewm/TwoRoom-v0", image_size=64)
    obs, _ = env.reset(seed=0)
    for _ in range(6):  # a plan per block of 5 steps: the second one warm-started
        action = agent.act(obs)
        assert env.action_space.contains(action)
        obs, *_ = env.step(action)
    assert len(agent.plan_times) == 2


def test_unknown_precision_is_refused(run_dir):
    with pytest.raises(ValueError, match="precision"):
        LeWMAgent.load(run_dir, device="cpu", precision="fp16")


def test_compiled_rollout_plans_like_the_eager_one(run_dir):
    """``compile=True`` (torch.compile of the rollout) changes the speed, not the plans. The history
    grows from 1 to 3 frames over these steps, so three compiled shapes are exercised."""
    env = gym.make("lewm/TwoRoom-v0", image_size=64)
    eager = LeWMAgent.load(run_dir, device="cpu", receding_horizon=1, **FAST_PLANNER)
    compiled = LeWMAgent.load(run_dir, device="cpu", receding_horizon=1, compile=True, **FAST_PLANNER)
    assert compiled.model.rollout_compiled and not eager.model.rollout_compiled
    obs, _ = env.reset(seed=0)
    for _ in range(11):
        action = eager.act(obs)
        np.testing.assert_allclose(compiled.act(obs), action, atol=1e-4)
        obs, *_ = env.step(action)
    assert len(compiled.plan_times) == 3
    # Autograd rollouts (the gradient planner) stay eager; turning compilation off restores eager.
    grad_agent = LeWMAgent.load(run_dir, device="cpu", planner="gradient", compile=True, iterations=2)
    assert env.action_space.contains(grad_agent.act(env.reset(seed=1)[0]))
    assert not compiled.model.compile_rollout(False).rollout_compiled


@pytest.mark.parametrize("goal_cost", ["terminal", "min"])
def test_goal_cost_scores_the_last_or_the_closest_predicted_block(run_dir, goal_cost):
    """"terminal" (paper) scores a plan by its last predicted embedding; "min" by the block boundary
    closest to the goal, so a plan passing through the goal early scores as well as one ending there."""
    agent = LeWMAgent.load(run_dir, device="cpu", goal_cost=goal_cost, **FAST_PLANNER)
    seen = {}
    plan = agent.planner.plan

    def recording_plan(cost_fn, batch_size, horizon, action_dim, **kwargs):
        seen["cost_fn"], seen["shape"] = cost_fn, (batch_size, horizon, action_dim)
        return plan(cost_fn, batch_size, horizon, action_dim, **kwargs)

    agent.planner.plan = recording_plan
    env = gym.make("lewm/TwoRoom-v0", image_size=64)
    obs, _ = env.reset(seed=0)
    agent.act(obs)
    batch, horizon, action_dim = seen["shape"]
    candidates = torch.randn(batch, 6, horizon, action_dim, generator=torch.Generator().manual_seed(0))
    mem = agent._memory[0]
    with torch.no_grad():
        emb = agent.model.encode(torch.stack(mem.frames)[None])
        predicted = agent.model.rollout(emb, torch.zeros(1, 0, action_dim), candidates)
    distances = (predicted - mem.goal_emb).square().sum(-1)  # [1, 6, horizon]
    expected = distances[..., -1] if goal_cost == "terminal" else distances.amin(-1)
    torch.testing.assert_close(seen["cost_fn"](candidates), expected)
    assert not torch.allclose(distances[..., -1], distances.amin(-1))  # the two costs do differ here
    assert agent.describe()["goal_cost"] == goal_cost


def test_goal_cost_is_a_stored_agent_setting(run_dir):
    Run(run_dir).set_defaults(agent={"goal_cost": "min", "receding_horizon": 1})
    agent = LeWMAgent.load(run_dir, device="cpu", **FAST_PLANNER)
    assert (agent.goal_cost, agent.receding_horizon) == ("min", 1)
    assert LeWMAgent.load(run_dir, device="cpu", goal_cost="terminal").goal_cost == "terminal"
    with pytest.raises(ValueError, match="goal_cost must be one of"):
        LeWMAgent.load(run_dir, device="cpu", goal_cost="sum")
