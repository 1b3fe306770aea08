"""One recipe per env of the suite: how its data is collected, which LeWM is trained on it for how
long, and how that model plans. ``lewm bench`` reads them (``lewm demo`` keeps its own TwoRoom
settings, whose measured results the README reports).

Each env has two sizes:

* ``cpu``: trainable in about 15 minutes on two CPU cores (the ``tiny`` preset at 64 px, a few
  thousand optimizer steps on a thousand episodes). The measured results are in the README.
* ``paper``: the official setup for a GPU: the ``paper`` preset (ViT-Tiny/14 at 224 px, 192-d
  latent), the official data sizes, batch 128, lr 5e-5, 10 epochs, CEM 300 x 30.

The cpu MiniGrid recipe plans with beam search (discrete actions; the paper has no such env).

Evaluation is the paper's protocol everywhere (:class:`lewm_agent.config.Protocol`: 50 start/goal
pairs of held-out episodes, goal 25 steps ahead, 50-step budget, seed 42).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

SIZES = ("cpu", "paper")


@dataclass(frozen=True)
class Recipe:
    """Everything one env needs from data to planner. ``why`` says where the settings come from."""

    env_id: str
    why: str
    env_kwargs: dict = field(default_factory=dict)  # given to gym.make and to the scripted expert
    policy: str = "expert:1.0"  # behaviour policy of the training and held-out data
    train_episodes: int = 1000
    eval_episodes: int = 150  # held-out episodes the protocol's 50 start/goal pairs are drawn from
    max_episode_steps: int | None = None  # None: the env's registered limit
    image_size: int = 64
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    steps: int | None = 2500  # None: train for `epochs`
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    frameskip: int = 5
    history: int = 3
    planner: str = "cem"
    planner_settings: dict = field(default_factory=dict)
    # LeWMAgent's horizon / receding_horizon (default: the paper's 5 blocks planned, all 5 executed)
    agent_settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> Recipe:
        """A copy with ``changes``; unknown names raise ValueError naming the valid ones."""
        known = set(self.__dataclass_fields__)
        bad = sorted(set(changes) - known)
        if bad:
            raise ValueError(f"unknown recipe settings {bad}; valid settings: {sorted(known)}")
        return replace(self, **changes)

    def train_config(self, data: str, out: str, **run_options):
        """The :class:`lewm_agent.config.TrainConfig` of this recipe (``run_options``: device, seed, progress)."""
        from lewm_agent.config import TrainConfig

        return TrainConfig(
            data=data, out=out, preset=self.preset, steps=self.steps, epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr, frameskip=self.frameskip, history=self.history,
            image_size=self.image_size, model_overrides=dict(self.model_overrides), **run_options,
        )

    def planner_section(self) -> dict:
        """The run folder's default planner (config.json "planner"), as LeWMAgent.load reads it."""
        return {"name": self.planner, **self.planner_settings}


# Paper-size settings shared by every env: the official architecture and schedule [paper.md 3, 5].
_PAPER = dict(image_size=224, preset="paper", steps=None, epochs=10, batch_size=128, lr=5e-5,
              planner="cem", planner_settings={"num_samples": 300, "iterations": 30, "topk": 30})

RECIPES: dict[str, dict[str, Recipe]] = {
    "tworoom": {
        "cpu": Recipe(
            "lewm/TwoRoom-v0",
            why="Goals in the other room, as in the official data. The noisy expert (std 1 on [-1, 1]) like "
                "the official 'noisy heuristic': with clean actions the planner finds sequences the model never "
                "saw. A 16-d latent: the frames vary in two dimensions only, and SIGReg spreads them over every "
                "latent dimension. MPPI keeps its sampling std at 1 where CEM collapses onto the nearest basin. "
                "One noise draw per action block (block_noise 1): a sampled block moves the agent as far as a "
                "constant action, so plans reach the goal's basin across the flat latent landscape (76% -> 96%).",
            env_kwargs={"goal_room": "other"}, train_episodes=1500, model_overrides={"embed_dim": 16},
            planner="mppi", planner_settings={"block_noise": 1.0},
        ),
        "paper": Recipe("lewm/TwoRoom-v0", why="Official: 10,000 noisy-heuristic episodes through the door.",
                        env_kwargs={"goal_room": "other"}, train_episodes=10_000, eval_episodes=1000, **_PAPER),
    },
    "reacher": {
        "cpu": Recipe(
            "lewm/Reacher-v0",
            why="Two joint angles drive the frames: a 16-d latent as for TwoRoom; the noisy PD expert covers "
                "the joint space. Success needs both joints within 0.05 rad at some step: plans are scored by "
                "their closest predicted block (goal_cost 'min') and only the first block is executed before "
                "replanning, which corrects the model's error as the arm closes in (42% -> 88%); one noise "
                "draw per action block as for TwoRoom (-> 94%).",
            model_overrides={"embed_dim": 16}, planner="mppi", planner_settings={"block_noise": 1.0},
            agent_settings={"goal_cost": "min", "receding_horizon": 1},
        ),
        "paper": Recipe("lewm/Reacher-v0", why="Official: 10,000 episodes of 200 steps.",
                        train_episodes=10_000, eval_episodes=1000, **_PAPER),
    },
    "minigrid": {
        "cpu": Recipe(
            "lewm/MiniGrid-MultiRoom-v0",
            why="Discrete actions: the BFS expert taking a random action half of the time, so episodes are long "
                "enough for the 25-step goals and cover turns and bumps; categorical CEM plans the steps. "
                "Frames without the goal cell (show_goal=False), so a stored frame is a goal image for any start. "
                "Frameskip 1: one action per model step instead of a block of 5 (one of 243 sequences) "
                "(18% -> 36%); 12 steps planned, 6 executed, plans scored by their closest step (-> 44%). "
                "A frame shows the whole state, so the predictor sees one (history 1), which halves the step "
                "time; with the 64-d latent of `tiny` and 5,000 steps it learns what a turn does, where the "
                "16-d, 2,500-step model predicted both turns alike (-> 82%). Beam search instead of categorical "
                "CEM: the latent distance to the goal frame is flat beyond a step or two, so CEM's samples rarely "
                "hit a goal-reaching sequence, while a beam that merges plans ending in the same predicted state "
                "keeps up to 256 distinct states per step, nearly all 272 of the grid (-> 100%, 4x faster).",
            env_kwargs={"show_goal": False}, policy="expert:0.5", steps=5000, history=1,
            frameskip=1, planner="beam",
            agent_settings={"horizon": 12, "receding_horizon": 6, "goal_cost": "min"},
        ),
        "paper": Recipe("lewm/MiniGrid-MultiRoom-v0", why="No official MiniGrid setup: the paper's sizes.",
                        env_kwargs={"show_goal": False}, policy="expert:0.5", train_episodes=10_000, eval_episodes=1000,
                        **{**_PAPER, "planner": "categorical_cem"}),
    },
    "pusht": {
        "cpu": Recipe(
            "lewm/PushT-v0",
            why="Contact-rich: the expert with mild noise so the block is actually pushed; the 64-d latent of "
                "`tiny` (agent and block pose are five quantities); CEM as in the paper.",
            policy="expert:0.3", planner="cem",
        ),
        "paper": Recipe("lewm/PushT-v0", why="Official: 20,000 expert episodes (mean length 196).",
                        policy="expert:0.3", train_episodes=20_000, eval_episodes=1000, **_PAPER),
    },
    "cube": {
        "cpu": Recipe(
            "lewm/Cube-v0",
            why="Needs the `cube` extra. The scripted pick-and-place expert with mild noise; `tiny` at 64-d.",
            policy="expert:0.3", planner="cem",
        ),
        "paper": Recipe("lewm/Cube-v0", why="Official: 10,000 episodes of 200 steps.",
                        policy="expert:0.3", train_episodes=10_000, eval_episodes=1000, **_PAPER),
    },
}


def get_recipe(env: str, size: str = "cpu") -> Recipe:
    """The recipe of ``env`` (a name of :data:`RECIPES` or its env id) at ``size``."""
    if size not in SIZES:
        raise ValueError(f"unknown recipe size {size!r}; choose one of {list(SIZES)}")
    by_id = {r["cpu"].env_id: name for name, r in RECIPES.items()}
    name = by_id.get(env, env)
    if name not in RECIPES:
        raise ValueError(f"no recipe for {env!r}; recipes: {sorted(RECIPES)} (or their env ids {sorted(by_id)})")
    return RECIPES[name][size]


__all__ = ["RECIPES", "SIZES", "Recipe", "get_recipe"]
