"""Model-free baselines from pixels, trained with Stable-Baselines3's own API.

The policy sees what LeWM sees: the ``pixels`` and ``goal`` images (SB3's ``MultiInputPolicy``, one
NatureCNN per image); proprio and state are withheld. The reward is the env's own sparse one (1 on
success) or :class:`lewm_agent.wrappers.DenseGoalReward`. A baseline folder holds:

* ``model.zip``: the SB3 model, which ``PPO.load`` / ``SAC.load`` open as they are;
* ``baseline.json``: the settings, env steps done and training wall time;
* ``metrics.csv``: training success rate (last 100 episodes) and episode reward as training goes;
* ``evaluations.npz``: SB3's ``EvalCallback`` record when ``eval_every`` is set;
* ``replay_buffer.npz`` (SAC): the filled part of the replay buffer, so a resumed run keeps its data.

Running the same training again continues from the last checkpoint (``model.zip`` every
``save_every`` env steps, and on Ctrl-C) up to ``steps``; nothing done is retrained.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from lewm_agent.agent import Agent
from lewm_agent.config import BaselineConfig
from lewm_agent.runs import Run, atomic_write
from lewm_agent.wrappers import DenseGoalReward, ObservationKeys

MODEL, RECORD, BUFFER = "model.zip", "baseline.json", "replay_buffer.npz"
OBS_KEYS = ("pixels", "goal")
METRIC_COLUMNS = ["env_steps", "episodes", "success_rate", "episode_reward", "seconds"]
# PPO: rl-zoo's Atari settings (pixels): short rollouts of 8 envs, 4 epochs, an entropy bonus.
# SAC: SB3's defaults, with a replay buffer sized for pixels.
DEFAULTS = {
    "ppo": {"n_steps": 128, "batch_size": 256, "n_epochs": 4, "learning_rate": 2.5e-4, "clip_range": 0.1,
            "ent_coef": 0.01, "vf_coef": 0.5},
    # SAC: SB3's defaults but a batch of 64 and one CNN per image shared by actor and critic (updated by
    # the critic's loss), which makes each update several times cheaper on a CPU.
    "sac": {"learning_starts": 1000, "batch_size": 64, "policy_kwargs": {"share_features_extractor": True}},
}
DEFAULT_ENVS = {"ppo": 8, "sac": 1}


def algo_class(name: str):
    import stable_baselines3

    return {"ppo": stable_baselines3.PPO, "sac": stable_baselines3.SAC}[name]


def make_baseline_env(env_id: str, image_size: int = 64, reward: str = "sparse", **kwargs) -> gym.Env:
    """``env_id`` as a baseline trains on it: the chosen reward, observations ``pixels`` and ``goal``."""
    if env_id.startswith("lewm/"):
        import lewm_envs  # noqa: F401  (registers the ids)
    try:
        env = gym.make(env_id, image_size=image_size, **kwargs)
    except gym.error.Error as err:
        raise ValueError(f"cannot make env {env_id!r} ({err}); use a registered id such as lewm/TwoRoom-v0") from err
    if reward == "dense":
        env = DenseGoalReward(env)
    return ObservationKeys(env, OBS_KEYS)


def _settings(cfg: BaselineConfig) -> dict:
    """What makes two trainings the same baseline (compared when resuming)."""
    return {"algo": cfg.algo, "env_id": cfg.env, "reward": cfg.reward, "image_size": cfg.image_size,
            "n_envs": cfg.n_envs or DEFAULT_ENVS[cfg.algo], "seed": cfg.seed,
            "algo_kwargs": {**DEFAULTS[cfg.algo], **({"buffer_size": cfg.buffer_size} if cfg.algo == "sac" else {}),
                            **cfg.algo_kwargs}}


def read_record(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def train_sb3(cfg: BaselineConfig) -> Path:
    """Train (or resume) the baseline in ``cfg.out`` to ``cfg.steps`` env steps; returns the folder."""
    from stable_baselines3.common.callbacks import CallbackList, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecTransposeImage

    cfg.check()
    out = Path(cfg.out)
    settings, record = _settings(cfg), read_record(out)
    if record is None and (out / MODEL).exists():
        raise ValueError(f"{out / MODEL} exists without {RECORD}: it was not written by `lewm baseline`; use another --out")
    if record is not None and record["settings"] != settings:
        diff = {k: (record["settings"].get(k), v) for k, v in settings.items() if record["settings"].get(k) != v}
        raise ValueError(f"{out} holds a baseline trained with other settings (stored, asked): {diff}; use another "
                         "--out, or the stored settings to continue it")
    make_baseline_env(cfg.env, cfg.image_size, cfg.reward).close()  # a bad env id fails before any file is written
    cls = algo_class(cfg.algo)
    venv = make_vec_env(make_baseline_env, n_envs=settings["n_envs"], seed=cfg.seed,
                        env_kwargs={"env_id": cfg.env, "image_size": cfg.image_size, "reward": cfg.reward})
    device = "cuda" if cfg.device == "auto" and _cuda() else ("cpu" if cfg.device == "auto" else cfg.device)
    if record is not None:
        model = cls.load(out / MODEL, env=venv, device=device)
        if cfg.algo == "sac" and (out / BUFFER).is_file():
            _load_buffer(model.replay_buffer, out / BUFFER)
    else:
        model = cls("MultiInputPolicy", venv, seed=cfg.seed, device=device, verbose=0, **settings["algo_kwargs"])
        record = {"settings": settings, "env_steps": 0, "seconds": 0.0, "format": 1}
    out.mkdir(parents=True, exist_ok=True)
    remaining = cfg.steps - model.num_timesteps
    if remaining <= 0 or (cfg.time_limit is not None and record["seconds"] >= cfg.time_limit):
        tqdm.write(f"{out} is already trained for {model.num_timesteps} env steps in {record['seconds']:.0f} s; ask "
                   "for more --steps (or a longer --time-limit) to continue")
        return out
    saver = _Checkpoint(out, record, cfg.save_every, cfg.steps, cfg.progress, cfg.time_limit)
    callbacks = [saver]
    if cfg.eval_every:
        eval_env = make_vec_env(make_baseline_env, n_envs=1, seed=cfg.seed + 10_000,
                                env_kwargs={"env_id": cfg.env, "image_size": cfg.image_size, "reward": cfg.reward})
        callbacks.append(EvalCallback(VecTransposeImage(eval_env), n_eval_episodes=cfg.eval_episodes, log_path=str(out),
                                      eval_freq=max(1, cfg.eval_every // settings["n_envs"]), verbose=0))
    try:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
    except KeyboardInterrupt:
        saver.save()
        tqdm.write(f"\ninterrupted at {model.num_timesteps} env steps; {out} is saved. Run the same command again "
                   "to continue.")
        raise
    saver.save()
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _Checkpoint(BaseCallback):
    """Progress bar, metrics rows and atomic checkpoints of the model, its replay buffer and the record."""

    def __init__(self, out: Path, record: dict, save_every: int, total: int, progress: bool, time_limit: float | None):
        super().__init__()
        self.out, self.record, self.save_every, self.total = Path(out), record, save_every, total
        self.time_limit = time_limit
        self.progress, self.bar = progress, None
        self.started, self.seconds0 = time.perf_counter(), record["seconds"]

    def _on_training_start(self) -> None:
        self.started, self.seconds0 = time.perf_counter(), self.record["seconds"]
        self.last_save = self.last_row = self.num_timesteps
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, desc=f"train {self.record['settings']['algo']}",
                        unit="step", disable=not self.progress, dynamic_ncols=True)

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self.bar.n)
        if self.num_timesteps - self.last_row >= 1000:
            self.last_row = self.num_timesteps
            row = self.row()
            self.bar.set_postfix(success=row["success_rate"])
            Run(self.out).append_metrics(row, METRIC_COLUMNS)
        if self.num_timesteps - self.last_save >= self.save_every:
            self.save()
        return self.time_limit is None or self.seconds() < self.time_limit  # False stops learn()

    def _on_training_end(self) -> None:
        self.bar.close()

    def row(self) -> dict:
        success = [float(s) for s in self.model.ep_success_buffer]
        rewards = [e["r"] for e in self.model.ep_info_buffer]
        return {"env_steps": self.num_timesteps, "episodes": self.model._episode_num or len(rewards),
                "success_rate": round(100 * float(np.mean(success)), 2) if success else "",
                "episode_reward": round(float(np.mean(rewards)), 4) if rewards else "",
                "seconds": round(self.seconds(), 2)}

    def seconds(self) -> float:
        return self.seconds0 + time.perf_counter() - self.started

    def save(self) -> None:
        model = self.model
        tmp = self.out / "model.tmp.zip"
        model.save(tmp)
        os.replace(tmp, self.out / MODEL)
        if getattr(model, "replay_buffer", None) is not None:
            _save_buffer(model.replay_buffer, self.out / BUFFER)
        self.record.update(env_steps=int(model.num_timesteps), seconds=round(self.seconds(), 2))
        atomic_write(self.out / RECORD, (json.dumps(self.record, indent=2) + "\n").encode())
        self.last_save = model.num_timesteps


_BUFFER_FIELDS = ("actions", "rewards", "dones", "timeouts")


def _save_buffer(buffer, path: Path) -> None:
    """The filled rows of a (Dict) replay buffer, compressed; SB3's own save pickles every row."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {f: getattr(buffer, f)[:n] for f in _BUFFER_FIELDS}
    for prefix in ("observations", "next_observations"):
        for key, value in getattr(buffer, prefix).items():
            arrays[f"{prefix}/{key}"] = value[:n]
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, pos=buffer.pos, full=buffer.full, **arrays)
    os.replace(tmp, path)


def _load_buffer(buffer, path: Path) -> None:
    with np.load(path) as data:
        n = len(data["actions"])
        if n > buffer.buffer_size:
            raise ValueError(f"{path} holds {n} transitions, more than the buffer's {buffer.buffer_size}")
        for f in _BUFFER_FIELDS:
            getattr(buffer, f)[:n] = data[f]
        for prefix in ("observations", "next_observations"):
            for key, value in getattr(buffer, prefix).items():
                value[:n] = data[f"{prefix}/{key}"]
        buffer.pos, buffer.full = int(data["pos"]), bool(data["full"])


class SB3Agent(Agent):
    """A saved SB3 model behind the agent protocol, acting deterministically on ``pixels`` and ``goal``.

    ``observation_space`` / ``action_space``: the env's; a model trained for other spaces is refused.
    """

    name = "sb3"

    def __init__(self, path: str | os.PathLike, observation_space: gym.Space | None = None,
                 action_space: gym.Space | None = None):
        from lewm_agent.data.policies import _detect_algo, _sb3_class

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no Stable-Baselines3 model at {path}; train one with `lewm baseline` or pass an existing zip")
        self.path = path
        self.model = _sb3_class(_detect_algo(path)).load(path, device="cpu")
        self.record = read_record(path.parent) or {}
        _check_spaces(path, self.model, observation_space, action_space)
        self.keys = list(self.model.observation_space.spaces) if isinstance(
            self.model.observation_space, gym.spaces.Dict) else None

    def act(self, obs: dict):
        x = {k: obs[k] for k in self.keys} if self.keys else obs
        action, _ = self.model.predict(x, deterministic=True)
        return action

    def describe(self) -> dict:
        settings = self.record.get("settings", {})
        return {**super().describe(), "kind": f"sb3-{type(self.model).__name__.lower()}",
                "env_steps": self.record.get("env_steps", int(self.model.num_timesteps)),
                "train_seconds": self.record.get("seconds"), "uses_reward": settings.get("reward", "unknown"),
                "model": str(self.path)}


def _same_image_shape(model: tuple, env: tuple) -> bool:
    """SB3 stores image spaces channel-first (it transposes HWC observations itself)."""
    return model == env or (len(env) == 3 and model == (env[2], env[0], env[1]))


def _check_spaces(path: Path, model, observation_space: gym.Space | None, action_space: gym.Space | None) -> None:
    ms = model.observation_space
    if observation_space is not None:
        if not isinstance(ms, gym.spaces.Dict) or not isinstance(observation_space, gym.spaces.Dict):
            raise ValueError(f"{path} observes {ms}; an agent for this env needs a Dict observation of its images "
                             "(train it with `lewm baseline`)")
        bad = [k for k, s in ms.spaces.items() if k not in observation_space.spaces
               or not _same_image_shape(s.shape, observation_space.spaces[k].shape)]
        if bad:
            raise ValueError(f"{path} was trained on observations {ms} that this env does not give ({bad} differ from "
                             f"{observation_space}); train it on this env, or evaluate it on the env it was trained on")
    if action_space is not None and (type(model.action_space) is not type(action_space)
                                     or model.action_space.shape != action_space.shape
                                     or getattr(model.action_space, "n", None) != getattr(action_space, "n", None)):
        raise ValueError(f"{path} acts in {model.action_space} but this env's actions are {action_space}; evaluate it "
                         "on the env it was trained on")


__all__ = ["BaselineConfig", "SB3Agent", "make_baseline_env", "read_record", "train_sb3"]
