"""Action spaces as the model sees them.

An :class:`ActionSpec` describes an env's action space in a form that is saved as JSON with datasets
and checkpoints. An :class:`ActionCodec` turns raw env actions into the model's action features and
back: continuous actions are z-scored with statistics fitted on the data (the official LeWM
normaliser), discrete actions become one-hot vectors. NaN actions (the padding after an episode's last
step) encode to zeros, as in the official code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch


@dataclass(frozen=True)
class ActionSpec:
    """``kind`` is "continuous" (Box of ``dim`` values in [low, high]) or "discrete" (``dim`` choices)."""

    kind: str
    dim: int
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.kind not in ("continuous", "discrete"):
            raise ValueError(f"ActionSpec.kind must be 'continuous' or 'discrete', got {self.kind!r}")
        if self.dim < 1:
            raise ValueError(f"ActionSpec.dim must be >= 1, got {self.dim}")

    @classmethod
    def from_space(cls, space: gym.Space) -> "ActionSpec":
        if isinstance(space, gym.spaces.Discrete):
            return cls("discrete", int(space.n))
        if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            return cls(
                "continuous",
                int(space.shape[0]),
                tuple(float(v) for v in space.low),
                tuple(float(v) for v in space.high),
            )
        raise TypeError(
            f"unsupported action space {space}: use a 1-D Box or a Discrete space "
            "(flatten other spaces with gymnasium.wrappers.FlattenObservation-style wrappers first)"
        )

    def to_space(self) -> gym.Space:
        if self.kind == "discrete":
            return gym.spaces.Discrete(self.dim)
        low = np.array(self.low if self.low is not None else [-np.inf] * self.dim, dtype=np.float32)
        high = np.array(self.high if self.high is not None else [np.inf] * self.dim, dtype=np.float32)
        return gym.spaces.Box(low, high, dtype=np.float32)

    @property
    def feature_dim(self) -> int:
        """Values per env step in the model's action features (one-hot width for discrete)."""
        return self.dim

    @property
    def raw_dim(self) -> int:
        """Values per env step in a stored action row (1 index for discrete)."""
        return 1 if self.kind == "discrete" else self.dim

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ActionSpec":
        d = json.loads(text)
        for k in ("low", "high"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class ActionCodec:
    """Maps raw actions ``[..., raw_dim]`` to model features ``[..., feature_dim]`` and back."""

    spec: ActionSpec
    mean: np.ndarray | None = None  # continuous only, per dimension
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, spec: ActionSpec, actions: np.ndarray) -> "ActionCodec":
        """Fit the z-score statistics on stored actions ``[N, raw_dim]``; NaN rows are ignored."""
        if spec.kind == "discrete":
            return cls(spec)
        actions = np.asarray(actions, dtype=np.float64).reshape(-1, spec.dim)
        rows = actions[~np.isnan(actions).any(axis=1)]
        if len(rows) == 0:
            raise ValueError("cannot fit the action normaliser: every action row contains NaN")
        std = rows.std(axis=0)
        std[std < 1e-6] = 1.0  # a constant action dimension carries no information; keep it finite
        return cls(spec, rows.mean(axis=0).astype(np.float32), std.astype(np.float32))

    def encode(self, actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw actions ``[..., raw_dim]`` (NaN allowed) -> float32 features ``[..., feature_dim]``."""
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        if self.spec.kind == "discrete":
            idx = a[..., 0]
            valid = ~torch.isnan(idx)
            out = torch.zeros(*idx.shape, self.spec.dim)
            out[valid] = torch.nn.functional.one_hot(idx[valid].long(), self.spec.dim).float()
            return out
        out = (a - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)
        return torch.nan_to_num(out, nan=0.0)

    def decode(self, features: torch.Tensor) -> np.ndarray:
        """Model features ``[..., feature_dim]`` -> stored action rows ``[..., raw_dim]``, the inverse
        of :meth:`encode`: values clipped to the Box, or the argmax index (as float32, like the store).
        :meth:`to_env` turns rows into what ``env.step`` takes."""
        f = features.detach().float().cpu()
        if self.spec.kind == "discrete":
            return f.argmax(dim=-1, keepdim=True).numpy().astype(np.float32)
        a = f.numpy() * self.std + self.mean
        if self.spec.low is not None:
            a = np.clip(a, np.array(self.spec.low), np.array(self.spec.high))
        return a.astype(np.float32)

    def to_env(self, rows: np.ndarray) -> np.ndarray:
        """Stored action rows ``[..., raw_dim]`` -> env actions: int64 indices ``[...]`` for a Discrete
        space, the float32 rows themselves for a Box."""
        rows = np.asarray(rows)
        return rows[..., 0].astype(np.int64) if self.spec.kind == "discrete" else rows.astype(np.float32)

    def feature_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Bounds of the action Box in feature (z-scored) space, or None if unbounded / discrete."""
        if self.spec.kind == "discrete" or self.spec.low is None:
            return None
        low = (np.array(self.spec.low) - self.mean) / self.std
        high = (np.array(self.spec.high) - self.mean) / self.std
        return torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)

    def state_dict(self) -> dict:
        d = {"spec": json.loads(self.spec.to_json())}
        if self.mean is not None:
            d["mean"] = self.mean.tolist()
            d["std"] = self.std.tolist()
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> "ActionCodec":
        spec = ActionSpec.from_json(json.dumps(d["spec"]))
        if "mean" in d:
            return cls(spec, np.array(d["mean"], np.float32), np.array(d["std"], np.float32))
        return cls(spec)
