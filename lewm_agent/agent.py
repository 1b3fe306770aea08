"""LeWMAgent: a thin object over a trained LeWM and a planner, used like any Gymnasium policy.

    agent = LeWMAgent.load("runs/tworoom")
    obs, info = env.reset(seed=0)
    agent.reset()
    while True:
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))

Per environment the agent keeps the frames it saw every ``frameskip`` steps with the action blocks it
executed between them (the predictor's history), the queue of planned actions still to execute, and
the unexecuted tail of its last plan (the next plan's warm start). It replans when the queue is empty:
encode history and goal, plan ``horizon`` blocks in latent space, execute the first
``receding_horizon`` of them. Goals are encoded once per goal image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lewm_agent.config import GOAL_COSTS, PRECISIONS
from lewm_agent.images import resize_images
from lewm_agent.model import LeWM
from lewm_agent.model.lewm import check_precision
from lewm_agent.planning import PLANNERS, Planner, make_planner
from lewm_agent.runs import AGENT_KEYS, Run
from lewm_agent.spaces import ActionCodec


class Agent:
    """What every agent of the package is to the evaluator: LeWMAgent and each baseline.

    Subclasses implement :meth:`act` (one observation dict, or a vector-env batch whose arrays have a
    leading env axis) and, if they keep per-episode state, :meth:`reset`. :meth:`predict` is
    Stable-Baselines3's policy interface on top of them, so ``evaluate_policy(agent, env)`` works.
    :meth:`describe` says what the comparison reports about the agent.
    """

    name = "agent"

    def act(self, obs: dict):
        raise NotImplementedError

    def reset(self, env_indices=None) -> None:
        """Forget the episode of every env (or of ``env_indices``)."""

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        """SB3's ``predict``: ``episode_start`` (one bool per env) resets those envs first."""
        if episode_start is not None:
            self.reset(np.flatnonzero(np.atleast_1d(episode_start)))
        return self.act(observation), state

    def describe(self) -> dict:
        """What the agent was trained on and with: ``kind``, ``offline_transitions`` (stored env steps
        it learned from), ``env_steps`` (online interaction), ``train_seconds``, ``uses_reward``,
        ``privileged_state`` (sees the true state instead of pixels); None where it does not apply."""
        return {"kind": self.name, "offline_transitions": None, "env_steps": None, "train_seconds": None,
                "uses_reward": False, "privileged_state": False}


@dataclass
class _EnvMemory:
    """What the agent remembers about one environment's current episode."""

    frames: list = field(default_factory=list)  # uint8 [3, S, S] at every block boundary
    blocks: list = field(default_factory=list)  # executed action blocks (features [A_block])
    queue: list = field(default_factory=list)  # env actions still to execute
    executing: list = field(default_factory=list)  # features of the steps of the current block
    warm_start: torch.Tensor | None = None
    goal_key: bytes | None = None
    goal_emb: torch.Tensor | None = None
    steps: int = 0
    plans: int = 0


class LeWMAgent(Agent):
    """Goal-reaching agent: ``act(obs)`` where ``obs`` has ``pixels`` and ``goal`` images.

    Args:
        model: a trained :class:`LeWM` (put in eval mode here).
        codec: the action normaliser / encoder the model was trained with.
        planner: a :class:`lewm_agent.planning.Planner`.
        horizon: planned action blocks per plan (paper: 5).
        receding_horizon: blocks executed before replanning (paper: 5, the whole plan).
        goal_cost: what a candidate plan is scored by: ``"terminal"`` (paper), the distance of the
            last predicted embedding to the goal's; ``"min"``, the distance of the closest predicted
            block boundary, which scores a plan that reaches the goal early and drifts off as well
            as one arriving at the end (the protocol's episodes end at the first success).
        device: where the model runs.
        precision: ``"fp32"`` or ``"bf16"``, the imagined rollouts' arithmetic (see
            :meth:`LeWM.rollout`); bf16 plans several times faster on CPUs with native bf16 and on GPUs.
        compile: run the rollouts through ``torch.compile`` (:meth:`LeWM.compile_rollout`): faster
            plans after a one-off compile at the first plan of each shape.
    """

    def __init__(
        self,
        model: LeWM,
        codec: ActionCodec,
        planner: Planner,
        horizon: int = 5,
        receding_horizon: int = 5,
        goal_cost: str = GOAL_COSTS[0],
        device: str | torch.device = "cpu",
        precision: str = PRECISIONS[0],
        compile: bool = False,
    ):
        check_precision(precision)  # before any planning, not at the first rollout
        if not 1 <= receding_horizon <= horizon:
            raise ValueError(f"receding_horizon must be in [1, horizon={horizon}], got {receding_horizon}")
        if goal_cost not in GOAL_COSTS:
            raise ValueError(f"goal_cost must be one of {list(GOAL_COSTS)}, got {goal_cost!r}")
        if codec.spec.feature_dim != model.config.action_dim:
            raise ValueError(
                f"the action codec describes {codec.spec.feature_dim}-wide actions but the model was built "
                f"for action_dim {model.config.action_dim}"
            )
        self.model = model.to(device).eval()
        if compile:
            self.model.compile_rollout()
        self.codec, self.planner = codec, planner
        self.horizon, self.receding_horizon, self.goal_cost = horizon, receding_horizon, goal_cost
        self.device = torch.device(device)
        self.precision = precision
        self.frameskip = model.config.action_block
        self.image_size = model.config.image_size
        self.action_space = codec.spec.to_space()
        bounds = codec.feature_bounds()
        self._low, self._high = (None, None) if bounds is None else (b.repeat(self.frameskip) for b in bounds)
        self.plan_times: list[float] = []  # seconds per planner call (all envs planned together)
        self._memory: list[_EnvMemory] = []
        self._seed = 0
        self.run_config: dict = {}  # the run folder's config.json, when loaded from one

    @classmethod
    def load(
        cls, run_dir, device: str = "auto", planner: str | Planner | None = None, precision: str = PRECISIONS[0],
        compile: bool = False, **planner_overrides,
    ):
        """Load a run folder written by ``lewm train`` or ``lewm import``.

        ``planner`` is a planner name (``cem``, ``mppi``, ``gradient``, ``categorical_cem``, ``beam``) or object;
        by default the run's planner section, else CEM with the paper's settings (categorical CEM for
        discrete actions). ``planner_overrides`` adjust its settings (e.g. ``num_samples=100``) and
        may also set ``horizon`` and ``receding_horizon`` (default: the run's agent section, else
        this class's defaults). ``precision``, ``compile``: see the class docstring.
        """
        model, codec, config = Run(run_dir).load(device=device)
        agent_settings = {**config.get("agent", {})}
        for key in AGENT_KEYS:
            if key in planner_overrides:
                agent_settings[key] = planner_overrides.pop(key)
        if not isinstance(planner, Planner):
            planner = cls._make_planner(planner, config.get("planner") or {}, codec, planner_overrides)
        device = next(model.parameters()).device
        agent = cls(model, codec, planner, device=device, precision=precision, compile=compile, **agent_settings)
        agent.run_config = config
        return agent

    @staticmethod
    def _make_planner(name: str | None, stored: dict, codec: ActionCodec, overrides: dict) -> Planner:
        """The named planner (default: the stored one, else the paper's CEM or, for discrete actions,
        categorical CEM), with the stored arguments when it is the stored planner."""
        discrete = codec.spec.kind == "discrete"
        stored = dict(stored)
        stored_name = stored.pop("name", None)
        name = name or stored_name or ("categorical_cem" if discrete else "cem")
        if name not in PLANNERS:
            raise ValueError(f"unknown planner {name!r}; valid names: {sorted(PLANNERS)}")
        if PLANNERS[name].discrete != discrete:
            kinds = "discrete" if discrete else "continuous"
            fits = sorted(k for k, c in PLANNERS.items() if c.discrete == discrete)
            raise ValueError(f"planner {name!r} cannot plan {kinds} actions; use one of {fits}")
        settings = stored if name == stored_name else {}
        if discrete:
            settings["n_actions"] = codec.spec.dim
        return make_planner(name, **{**settings, **overrides})

    # -- episode bookkeeping ----------------------------------------------------------------------

    def reset(self, env_indices=None) -> None:
        """Forget the episode of every env (or of ``env_indices``). Call after ``env.reset()``."""
        if env_indices is None:
            self._memory = []
            return
        for i in np.atleast_1d(env_indices):
            if i < len(self._memory):
                self._memory[i] = _EnvMemory()

    def seed(self, seed: int) -> None:
        """Seed the planner's randomness (each env's plans draw from streams derived from it)."""
        self._seed = seed

    def set_goal(self, image: np.ndarray, env_index: int = 0) -> None:
        """Give a goal image (uint8 HWC) to an env whose observations carry none."""
        self._ensure_memory(env_index + 1)
        self._set_goal(self._memory[env_index], np.asarray(image))

    # -- acting -------------------------------------------------------------------------------------

    def act(self, obs: dict) -> np.ndarray:
        """One observation (``pixels [H, W, 3]``) -> one action, or a batch from a vector env
        (``pixels [N, H, W, 3]``) -> ``N`` actions. Envs without a ``goal`` key need :meth:`set_goal`."""
        pixels, goals, single = self._read_obs(obs)
        n = len(pixels)
        self._ensure_memory(n)
        frames = resize_images(pixels, self.image_size)
        for i, mem in enumerate(self._memory[:n]):
            if goals is not None:
                self._set_goal(mem, goals[i])
            elif mem.goal_emb is None:
                raise ValueError(
                    "the observation has no 'goal' image and no goal was set: call agent.set_goal(image) or wrap "
                    "the env with lewm_agent.wrappers.PixelGoalWrapper"
                )
            if mem.steps % self.frameskip == 0:
                self._close_block(mem, frames[i])
        to_plan = [i for i in range(n) if not self._memory[i].queue]
        if to_plan:
            self._plan([self._memory[i] for i in to_plan], to_plan)
        actions = []
        for mem in self._memory[:n]:
            action, features = mem.queue.pop(0)
            mem.executing.append(features)
            mem.steps += 1
            actions.append(action)
        actions = np.stack(actions)
        return actions[0] if single else actions

    def describe(self) -> dict:
        data, train = self.run_config.get("data", {}), self.run_config.get("train", {})
        return {**super().describe(), "kind": "lewm", "planner": repr(self.planner),
                "horizon": self.horizon, "receding_horizon": self.receding_horizon, "goal_cost": self.goal_cost,
                "offline_transitions": data.get("train_transitions") or _train_transitions(data, train),
                "train_seconds": train.get("seconds"), "parameters": self.model.num_parameters()}

    # -- internals ----------------------------------------------------------------------------------

    def _read_obs(self, obs):
        if not isinstance(obs, dict) or "pixels" not in obs:
            raise ValueError(
                "LeWMAgent needs a dict observation with a 'pixels' image (and a 'goal' image): wrap your env "
                "with lewm_agent.wrappers.PixelGoalWrapper"
            )
        pixels = np.asarray(obs["pixels"])
        goals = np.asarray(obs["goal"]) if "goal" in obs else None
        if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
            raise ValueError(
                f"obs['pixels'] must be uint8 RGB images [H, W, 3] or [N, H, W, 3], got {pixels.dtype} "
                f"{pixels.shape}"
            )
        single = pixels.ndim == 3
        if single:
            pixels = pixels[None]
            goals = None if goals is None else goals[None]
        if goals is not None and goals.shape != pixels.shape:
            raise ValueError(f"obs['goal'] has shape {goals.shape[1:]} but obs['pixels'] has {pixels.shape[1:]}")
        return pixels, goals, single

    def _ensure_memory(self, n: int) -> None:
        while len(self._memory) < n:
            self._memory.append(_EnvMemory())

    def _set_goal(self, mem: _EnvMemory, image: np.ndarray) -> None:
        key = image.tobytes()
        if key == mem.goal_key:
            return
        with torch.no_grad():  # not inference_mode: a gradient planner's cost uses it
            frame = resize_images(image, self.image_size).to(self.device)
            mem.goal_emb = self.model.encode(frame[None, None])[0, 0]
        mem.goal_key = key

    def _close_block(self, mem: _EnvMemory, frame: torch.Tensor) -> None:
        """At a block boundary: file the executed block and remember the frame that follows it."""
        if mem.executing:
            mem.blocks.append(torch.cat(mem.executing))
            mem.executing = []
        mem.frames.append(frame)
        history = self.model.config.history
        del mem.frames[:-history]
        del mem.blocks[: max(0, len(mem.blocks) - (history - 1))]

    def _plan(self, mems: list[_EnvMemory], rows: list[int]) -> None:
        start = time.perf_counter()
        # Envs early in their episode have shorter histories; plan each history length together.
        for h in sorted({len(m.frames) for m in mems}):
            group = [(m, r) for m, r in zip(mems, rows) if len(m.frames) == h]
            self._plan_group([m for m, _ in group], [r for _, r in group])
        self.plan_times.append(time.perf_counter() - start)

    def _plan_group(self, mems: list[_EnvMemory], rows: list[int]) -> None:
        frames = torch.stack([torch.stack(m.frames) for m in mems]).to(self.device)
        # no_grad, not inference_mode: a gradient planner differentiates the rollout from these.
        with torch.no_grad():
            emb_hist = self.model.encode(frames)
        act_dim = self.model.config.action_block_dim
        act_hist = torch.stack(
            [torch.stack(m.blocks) if m.blocks else torch.zeros(0, act_dim) for m in mems]
        ).to(self.device)
        goal = torch.stack([m.goal_emb for m in mems])

        rollout = self.model.rollout_with_grad if self.planner.needs_grad else self.model.rollout
        last = {}

        def imagine(candidates: torch.Tensor) -> torch.Tensor:
            # A planner that merges states asks for the states and the costs of the same candidates.
            if last.get("candidates") is not candidates or not self.planner.needs_states:
                last["candidates"] = candidates
                last["predicted"] = rollout(emb_hist, act_hist, candidates, self.precision)  # [B, S, H, D]
            return last["predicted"]

        def cost(candidates: torch.Tensor) -> torch.Tensor:
            predicted = imagine(candidates)
            if self.goal_cost == "terminal":
                return (predicted[:, :, -1] - goal[:, None]).square().sum(-1)
            return (predicted - goal[:, None, None]).square().sum(-1).amin(-1)

        def state(candidates: torch.Tensor) -> torch.Tensor:
            # What the predictor will see after the plan: its last `history` embeddings and the
            # actions between them; plans that end alike have the same future.
            b, s = candidates.shape[:2]
            embs = torch.cat([emb_hist[:, None].expand(b, s, -1, -1), imagine(candidates)], dim=2)
            acts = torch.cat([act_hist[:, None].expand(b, s, -1, -1), candidates], dim=2)  # between embs
            embs = embs[:, :, -self.model.config.history :]
            acts = acts[:, :, acts.shape[2] - (embs.shape[2] - 1) :]
            return torch.cat([embs.flatten(2), acts.flatten(2)], dim=-1)

        init = None
        if all(m.warm_start is not None for m in mems):
            init = torch.stack([m.warm_start for m in mems])
        plan = self.planner.plan(
            cost, len(mems), self.horizon, act_dim, init=init, low=self._low, high=self._high,
            # Fresh noise for every replan, yet a row's plan does not depend on which others it is batched with.
            seeds=[hash((self._seed, r, m.plans)) & 0x7FFFFFFF for m, r in zip(mems, rows)],
            action_block=self.model.config.action_block, state_fn=state,
        ).cpu()
        step_dim = self.model.config.action_dim
        for mem, p in zip(mems, plan):
            executed = p[: self.receding_horizon].reshape(-1, step_dim)
            rows = self.codec.decode(executed)
            # Re-encode what will really run (clipped to the action space, or the chosen index), so the
            # predictor's history holds the executed actions.
            features = self.codec.encode(rows)
            mem.queue = list(zip(self.codec.to_env(rows), features))
            mem.plans += 1
            tail = p[self.receding_horizon :]
            mem.warm_start = tail if len(tail) else None


def _train_transitions(data: dict, train: dict) -> int | None:
    """Env steps of a run's training episodes, recounted from its store (runs written before the
    trainer recorded them); None when the store is gone or changed since."""
    from pathlib import Path

    from lewm_agent.data.dataset import split_episodes
    from lewm_agent.data.store import EpisodeStore

    path, config = data.get("path"), train.get("config", {})
    if not path or not Path(path).is_file():
        return None
    with EpisodeStore(path) as store:
        if store.num_episodes != data.get("num_episodes"):
            return None
        idx, _ = split_episodes(store.num_episodes, config.get("val_fraction", 0.1), config.get("split_seed", 3072))
        return int(store.ep_len[idx].sum())
