"""Every configuration of the package, with its defaults, in one place (and no torch import, so the
command line that is built from these fields starts instantly).

- :class:`LeWMConfig` and the presets: the model (defaults: the official architecture).
- :class:`TrainConfig`: a training run (defaults: the official recipe).
- :class:`Protocol`: the goal-reaching evaluation (defaults: the paper's v3 protocol).
- :class:`CollectConfig`, :class:`EvalConfig`, :class:`ProbeConfig`, :class:`SurpriseConfig`: the
  defaults of ``collect``, ``evaluate``, ``probe`` and ``surprise_experiment``.

Each field is declared with :func:`lewm_agent.options.option`: its default and a one-line description
that the ``lewm`` command shows in ``--help``. Nothing else types these defaults.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

from lewm_agent.checks import check_float, check_int
from lewm_agent.options import option

PRECISIONS = ("fp32", "bf16")  # rollout arithmetic while planning, see LeWM.rollout; the first is the default
GOAL_COSTS = ("terminal", "min")  # how a plan is scored: see LeWMAgent's goal_cost


@dataclass
class LeWMConfig:
    """Every architectural and loss setting of a LeWM. ``action_dim`` is the width of one env step's
    action features (one-hot width for discrete actions); the predictor sees blocks of
    ``action_block`` (= frameskip) steps. Defaults: the official architecture."""

    action_dim: int = option(MISSING, "features per env step (one-hot width for discrete actions)")
    action_block: int = option(5, "env steps per model step (= frameskip)")
    image_size: int = option(224, "frame side in pixels")
    patch_size: int = option(14, "ViT patch side in pixels")
    enc_dim: int = option(192, "ViT width")
    enc_depth: int = option(12, "ViT layers")
    enc_heads: int = option(3, "ViT attention heads")
    enc_mlp_dim: int = option(768, "ViT MLP width")
    embed_dim: int = option(192, "latent width D (projector output)")
    proj_hidden: int = option(2048, "hidden width of the projector and of pred_proj")
    pred_depth: int = option(6, "predictor layers")
    pred_heads: int = option(16, "predictor attention heads")
    pred_dim_head: int = option(64, "predictor width per head")
    pred_mlp_dim: int = option(2048, "predictor MLP width")
    dropout: float = option(0.1, "predictor dropout")
    history: int = option(3, "frames the predictor sees")
    action_smoothed_dim: int = option(10, "action Embedder: width after its kernel-1 Conv1d")
    action_mlp_ratio: int = option(4, "action Embedder: MLP width as a multiple of embed_dim")
    sigreg_weight: float = option(0.09, "SIGReg weight lambda")
    sigreg_knots: int = option(17, "SIGReg integration knots")
    sigreg_num_proj: int = option(1024, "SIGReg random directions per call")
    sigreg_variant: str = option("official", "SIGReg quadrature: official ([0, 3], x N) or paper ([0.2, 4])")

    def __post_init__(self):
        for f in fields(self):
            if f.type == "int":
                setattr(self, f.name, check_int(f"LeWMConfig.{f.name}", getattr(self, f.name)))
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LeWMConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def action_block_dim(self) -> int:
        return self.action_block * self.action_dim


# The official architecture (ViT-Tiny/14 at 224 px, 18,034,478 parameters for 2-D actions, block 5).
_PAPER = {}
# 64-px presets for CPUs: `small` keeps the 192-d latent; `tiny` trains in minutes on two cores and
# plans a full 300 x 30 CEM in a fraction of a second.
_SMALL = dict(
    image_size=64, patch_size=8, enc_depth=6, proj_hidden=1024,
    pred_depth=4, pred_heads=8, pred_dim_head=32, pred_mlp_dim=768,
)
_TINY = dict(
    image_size=64, patch_size=16, enc_dim=128, enc_depth=4, enc_heads=4, enc_mlp_dim=512,
    embed_dim=64, proj_hidden=512, pred_depth=3, pred_heads=4, pred_dim_head=32, pred_mlp_dim=256,
)
PRESETS: dict[str, dict] = {"paper": _PAPER, "small": _SMALL, "tiny": _TINY}


def preset_config(name: str, action_dim: int, action_block: int = LeWMConfig.action_block,
                  **overrides) -> LeWMConfig:
    """The config of preset ``name`` for ``action_dim``-wide step actions, with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(LeWMConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown LeWMConfig settings {bad}; valid settings: {sorted(known)}")
    return LeWMConfig(action_dim=action_dim, action_block=action_block, **{**PRESETS[name], **overrides})


def config_to_dict(config: LeWMConfig) -> dict:
    return asdict(config)


def config_from_dict(d: dict) -> LeWMConfig:
    known = {f.name for f in fields(LeWMConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"checkpoint config has settings this version does not know: {unknown}")
    return LeWMConfig(**d)


@dataclass
class TrainConfig:
    """Everything a training run needs. ``data`` is an episode store (HDF5); ``out`` the run folder.
    Defaults: the official recipe; the model's own settings default to :class:`LeWMConfig`'s."""

    data: str = option(MISSING, "episode store (HDF5) to train on")
    out: str = option(MISSING, "run folder (resumes the run it holds)")
    preset: str = option("small", f"model preset: {' | '.join(PRESETS)}")
    epochs: int = option(10, "passes over the training windows (unless --steps is set)")
    steps: int | None = option(None, "total optimizer steps (overrides --epochs)")
    batch_size: int = option(128, "global batch (split across torchrun processes)")
    lr: float = option(5e-5, "AdamW learning rate")
    weight_decay: float = option(1e-3, "AdamW weight decay")
    warmup: float = option(0.01, "linear warm-up: a fraction of the steps when < 1, else steps")
    grad_clip: float = option(1.0, "max gradient norm (0 disables clipping)")
    sigreg_weight: float = option(LeWMConfig.sigreg_weight, "SIGReg weight lambda", flag="--lambda")
    frameskip: int = option(LeWMConfig.action_block, "env steps per model step (= the action block)")
    history: int = option(LeWMConfig.history, "frames the predictor sees")
    image_size: int | None = option(None, "frame side in pixels (default: the preset's)")
    val_fraction: float = option(0.1, "share of episodes held out for validation")
    split_seed: int = option(3072, "seed of the train/validation episode split")
    seed: int = option(0, "seed of initialisation, data order, dropout and SIGReg directions")
    device: str = option("auto", "auto (cuda, mps, cpu) or a torch device")
    num_workers: int | None = option(None, "DataLoader workers (default: 0 on CPU, 2 on accelerators)")
    tensorboard: bool = option(False, "also log to RUN/tensorboard")
    progress: bool = option(True, "show progress bars", cli=False)
    # Precise BN (see lewm_agent.train.precise_bn): the official moving averages lag the weights at
    # the high learning rates of short CPU runs.
    precise_bn_batches: int = option(20, "batches over which BatchNorm statistics are re-estimated before "
                                         "each checkpoint (0: the official moving averages)")
    model_overrides: dict = option({}, "any LeWMConfig setting of the preset", cli=False)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name in ("epochs", "batch_size", "frameskip", "history", "steps", "image_size"):
            if getattr(self, name) is not None or name not in ("steps", "image_size"):
                check_int(f"TrainConfig.{name}", getattr(self, name))
        check_int("TrainConfig.precise_bn_batches", self.precise_bn_batches, minimum=0)
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        check_float("TrainConfig.lr", self.lr)
        for name in ("weight_decay", "warmup", "grad_clip", "sigreg_weight"):
            check_float(f"TrainConfig.{name}", getattr(self, name), positive=False)


@dataclass(frozen=True)
class Protocol:
    """The goal-reaching evaluation. Defaults: the paper's (v3) and the official code's, every env."""

    episodes: int = option(50, "evaluation episodes (start/goal pairs)")
    goal_offset: int = option(25, "dataset goals: the stored frame this many steps after the start")
    budget: int = option(50, "env steps each episode gets to reach its goal")
    seed: int = option(42, "seed of the start/goal draw and of the planners")

    def __post_init__(self):
        for name in ("episodes", "goal_offset", "budget"):
            check_int(f"Protocol.{name}", getattr(self, name))
        check_int("Protocol.seed", self.seed, minimum=0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CollectConfig:
    """Collecting episodes into a store; :func:`lewm_agent.data.collector.collect` takes these
    settings as arguments and defaults to these values."""

    env_id: str = option(MISSING, "env id, e.g. lewm/TwoRoom-v0")
    episodes: int = option(MISSING, "episodes to collect (over all shards)")
    out: str = option(MISSING, "HDF5 file (appends / resumes if it exists)")
    policy: str = option("random", "behaviour policy: random | expert | expert:NOISE | sb3:PATH.zip")
    image_size: int = option(64, "side of the stored square frames in pixels")
    num_envs: int = option(1, "parallel envs (subprocesses when > 1)")
    seed: int = option(0, "base seed; episode g uses seeds derived from (seed, g)")
    max_episode_steps: int | None = option(None, "time limit (default: the env's registered one)")
    env_kwargs: dict = option({}, "keyword arguments of gym.make (and of the scripted expert)", cli=False)


@dataclass
class EvalConfig:
    """Evaluating a run; :func:`lewm_agent.evaluation.evaluate` defaults to these values (the protocol
    itself is :class:`Protocol`)."""

    data: str | None = option(None, "held-out episode store (dataset protocol); omit for env goals")
    out: str | None = option(None, "output folder (default RUN/eval)")
    env: str | None = option(None, "env id (default: the one the model was trained on)")
    planner: str | None = option(None, "cem | mppi | gradient | categorical_cem | beam (default: the run's)")
    samples: int | None = option(None, "planner samples per iteration (default: the planner's)")
    iterations: int | None = option(None, "planner iterations (default: the planner's)")
    block_noise: float | None = option(None, "cem / mppi: share of the sampling noise common to the env steps of "
                                             "an action block (0: the paper's independent noise; default: the run's)")
    horizon: int | None = option(None, "action blocks per plan (default: the run's, else 5)")
    receding_horizon: int | None = option(None, "blocks executed before replanning (default: the run's, else 5)")
    goal_cost: str | None = option(None, "terminal (paper: the last predicted block's distance to the goal) | "
                                         "min (the closest predicted block's) (default: the run's, else terminal)",
                                   choices=GOAL_COSTS)
    precision: str = option(PRECISIONS[0], "rollout arithmetic while planning (bf16: faster on CPUs with "
                                           "native bf16 and on GPUs)", choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the rollout: faster plans after a one-off compile (up to a "
                                  "minute) inside the first plans, which the mean and p95 plan times include")
    videos: int = option(4, "episodes recorded as videos")
    device: str = option("auto", "auto (cuda, mps, cpu) or a torch device")


@dataclass
class ProbeConfig:
    """Probing a run's encoder; :func:`lewm_agent.analysis.probe` defaults to these values."""

    data: str = option(MISSING, "episode store of the run's env with the probed columns (held out from training)")
    out: str | None = option(None, "output folder (default RUN/probe)")
    folds: int = option(5, "episode folds: each is predicted by probes fitted on the others")
    mlp_steps: int = option(500, "full-batch Adam steps of each MLP probe")
    max_frames: int = option(20000, "frames probed at most, spread evenly over the episodes")
    cls: bool = option(False, "also probe the pre-projector CLS features")
    seed: int = option(0, "seed of the folds, the MLP probes and the random-init encoder")
    device: str = option("cpu", "torch device of the encoders")


@dataclass
class SurpriseConfig:
    """The paired surprise experiment; :func:`lewm_agent.analysis.surprise_experiment` defaults to these."""

    env: str | None = option(None, "env id (default: the run's); its env needs perturb(kind)")
    episodes: int = option(20, "paired episodes per perturbation")
    perturb_step: int | None = option(None, "env step whose frame is perturbed (default: 4 frameskips)")
    length: int | None = option(None, "env steps per episode (default: the perturbation step + 4 frameskips)")
    policy: str = option("expert:0.5", "behaviour policy: random | expert | expert:NOISE | sb3:PATH.zip")
    seed: int = option(0, "episode i is reset with seed + i")
    out: str | None = option(None, "output folder (default RUN/surprise)")
    device: str = option("cpu", "torch device of the model")


@dataclass
class RolloutConfig:
    """Open-loop rollouts along recorded actions; :func:`lewm_agent.analysis.rollout_error` defaults to these."""

    data: str = option(MISSING, "episode store of the run's env (held out from training)")
    blocks: int = option(10, "horizons reported: 1 to this many blocks ahead")
    episodes: int = option(60, "episodes rolled out at most (those longer than the deepest horizon)")
    seed: int = option(0, "seed of the episode draw and of the random frame pairs")
    out: str | None = option(None, "output folder (default RUN/rollout)")
    device: str = option("cpu", "torch device of the model")


SB3_ALGOS = ("ppo", "sac")
REWARDS = ("sparse", "dense")


@dataclass
class BaselineConfig:
    """Training a Stable-Baselines3 baseline from pixels; :func:`lewm_agent.baselines.sb3.train_sb3`."""

    algo: str = option(MISSING, "model-free algorithm", choices=SB3_ALGOS)
    env: str = option(MISSING, "env id, e.g. lewm/TwoRoom-v0")
    out: str = option(MISSING, "baseline folder (resumes the baseline it holds)")
    steps: int = option(100_000, "total env steps of training")
    time_limit: float | None = option(None, "stop once training has taken this many seconds in all (over resumes)")
    reward: str = option("sparse", "sparse: the env's own (1 on success); dense: DenseGoalReward", choices=REWARDS)
    image_size: int = option(64, "side of the pixels and goal images")
    n_envs: int | None = option(None, "parallel training envs (default: 8 for ppo, 1 for sac)")
    buffer_size: int = option(100_000, "sac replay buffer transitions (about 50 kB each at 64 px)")
    save_every: int = option(10_000, "env steps between checkpoints of model.zip")
    eval_every: int = option(0, "env steps between success evaluations on fresh env goals (0: none)")
    eval_episodes: int = option(20, "episodes of each success evaluation")
    seed: int = option(0, "seed of the model, the envs and the evaluations")
    device: str = option("auto", "auto (cuda, cpu) or a torch device")
    progress: bool = option(True, "show a progress bar", cli=False)
    algo_kwargs: dict = option({}, "Stable-Baselines3 constructor arguments over the package's defaults", cli=False)

    def check(self) -> None:
        if self.algo not in SB3_ALGOS:
            raise ValueError(f"unknown baseline algorithm {self.algo!r}; choose one of {list(SB3_ALGOS)}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; choose one of {list(REWARDS)}")
        for name in ("steps", "image_size", "buffer_size", "save_every", "eval_episodes"):
            check_int(f"BaselineConfig.{name}", getattr(self, name))
        check_int("BaselineConfig.eval_every", self.eval_every, minimum=0)
        if self.n_envs is not None:
            check_int("BaselineConfig.n_envs", self.n_envs)
        if self.time_limit is not None:
            check_float("BaselineConfig.time_limit", self.time_limit)


@dataclass
class GCBCConfig:
    """Goal-conditioned behaviour cloning on an episode store; :func:`lewm_agent.baselines.gcbc.train_gcbc`.
    Defaults: the ``tiny`` LeWM's encoder, trained on the same data as the demo's LeWM."""

    data: str = option(MISSING, "episode store (HDF5) to imitate")
    out: str = option(MISSING, "GCBC run folder (resumes the run it holds)")
    preset: str = option("tiny", f"encoder of this LeWM preset: {' | '.join(PRESETS)}")
    steps: int = option(2500, "optimizer steps")
    batch_size: int = option(64, "(frame, goal, action) samples per step")
    lr: float = option(3e-4, "AdamW learning rate")
    weight_decay: float = option(1e-3, "AdamW weight decay")
    max_goal_offset: int = option(50, "hindsight goals: a frame 1 to this many steps later in the same episode")
    image_size: int | None = option(None, "frame side in pixels (default: the preset's)")
    hidden: int = option(512, "width of the two hidden layers of the action head")
    save_every: int = option(250, "optimizer steps between checkpoints")
    seed: int = option(0, "seed of initialisation and of every batch")
    device: str = option("auto", "auto (cuda, mps, cpu) or a torch device")
    progress: bool = option(True, "show a progress bar", cli=False)

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name in ("steps", "batch_size", "max_goal_offset", "hidden", "save_every"):
            check_int(f"GCBCConfig.{name}", getattr(self, name))
        if self.image_size is not None:
            check_int("GCBCConfig.image_size", self.image_size)
        check_float("GCBCConfig.lr", self.lr)
        check_float("GCBCConfig.weight_decay", self.weight_decay, positive=False)


@dataclass
class CompareConfig:
    """Comparing agents on one protocol; :func:`lewm_agent.evaluation.compare.compare` defaults to these."""

    out: str = option(MISSING, "output folder (agents already in its results.json are not re-run)")
    data: str | None = option(None, "held-out episode store (dataset protocol); omit for env goals")
    env: str | None = option(None, "env id (default: the one the agents were trained on)")
    planner: str | None = option(None, "LeWM planner: cem | mppi | gradient | categorical_cem | beam (default: the run's)")
    videos: int = option(3, "episodes recorded, side by side over the agents")
    device: str = option("auto", "auto (cuda, mps, cpu) or a torch device")
