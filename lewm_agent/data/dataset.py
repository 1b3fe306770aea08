"""Training windows over an episode store: frames at a frameskip, with encoded action blocks.

A window starting at env step ``s`` of an episode holds the frames ``s, s + k, ..., s + (n - 1) k``
(``n = num_steps``, ``k = frameskip``) and, for each frame t, the action block of the k raw actions
taken from frame t's step on. A start is valid when ``s + n * k <= ep_len``, so every window carries
n full action blocks (the official rule; the episode's final NaN action row may fall in the last block
and encodes to zeros).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lewm_agent.checks import check_int
from lewm_agent.data.store import EpisodeStore
from lewm_agent.images import resize_images
from lewm_agent.spaces import ActionCodec, ActionSpec

CACHE_LIMIT_BYTES = 4 << 30  # cache="auto" keeps frame columns in RAM up to this size (after resizing)
_READ_BLOCK = 2048  # rows per read when filling the cache


def split_episodes(
    num_episodes: int, val_fraction: float = 0.1, seed: int = 3072
) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into ``(train, val)`` sorted int64 arrays, by episode.

    The official recipe (random 90/10 split, seed 3072) but over whole episodes, so no validation
    window shares an episode with training. With ``val_fraction > 0`` and at least two episodes,
    validation gets at least one episode.
    """
    check_int("num_episodes", num_episodes)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(num_episodes * val_fraction)
    if val_fraction > 0 and num_episodes >= 2:
        n_val = min(max(n_val, 1), num_episodes - 1)
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = num_episodes - n_val
    return np.sort(perm[:n_train]).astype(np.int64), np.sort(perm[n_train:]).astype(np.int64)


def _is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return dtype == np.uint8 and len(shape) == 3 and shape[-1] == 3


class SequenceDataset(Dataset):
    """Windows of ``num_steps`` frames taken every ``frameskip`` env steps, for training LeWM.

    Args:
        data: path of an episode store, or an open :class:`EpisodeStore`.
        num_steps: frames per window (history + predictions; 4 in the paper).
        frameskip: env steps between kept frames = raw actions per action block (5 in the paper).
        image_size: side of the returned square frames (resized with :func:`resize_images`).
        episodes: indices of the episodes to use (e.g. one side of :func:`split_episodes`); all if None.
        codec: action encoder; by default fitted (z-score / one-hot) on these episodes' actions. Pass
            the training set's ``.codec`` to a validation set.
        extra_columns: more per-step columns (e.g. ``"proprio"``, ``"state"``) returned subsampled
            like the frames; uint8 image columns are resized like ``pixels``.
        cache: ``True`` loads the frame columns (resized) into RAM, ``False`` reads every item from the
            file, ``"auto"`` caches when that takes at most ``CACHE_LIMIT_BYTES``. Actions are always
            in RAM, already encoded.

    Item: ``{"pixels": uint8 [num_steps, 3, image_size, image_size], "action": float32 [num_steps,
    frameskip * spec.feature_dim], **extra_columns: [num_steps, ...]}``.
    """

    def __init__(
        self,
        data: str | os.PathLike | EpisodeStore,
        num_steps: int = 4,
        frameskip: int = 5,
        image_size: int = 64,
        episodes: Sequence[int] | np.ndarray | None = None,
        codec: ActionCodec | None = None,
        extra_columns: Sequence[str] = (),
        cache: bool | str = "auto",
    ) -> None:
        for name, value in (("num_steps", num_steps), ("frameskip", frameskip), ("image_size", image_size)):
            check_int(name, value)
        if cache not in (True, False, "auto"):
            raise ValueError(f"cache must be True, False or 'auto', got {cache!r}")
        self.store = data if isinstance(data, EpisodeStore) else EpisodeStore(data)
        self.num_steps, self.frameskip, self.image_size = int(num_steps), int(frameskip), int(image_size)
        self.window = self.num_steps * self.frameskip  # raw env steps one window spans
        self.columns = ("pixels", *self._check_extra_columns(extra_columns))
        self.episodes = self._usable_episodes(episodes)

        store = self.store
        lengths = store.ep_len[self.episodes]
        self._global_offset = store.ep_offset[self.episodes]
        self._local_offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._num_rows = int(lengths.sum())
        starts = lengths - self.window + 1  # valid window starts per episode
        self._win_episode = np.repeat(np.arange(len(self.episodes), dtype=np.int32), starts)
        self._win_start = (
            np.arange(int(starts.sum())) - np.repeat(np.cumsum(starts) - starts, starts)
        ).astype(np.int32)

        self.spec: ActionSpec = store.action_spec
        raw_actions = self._read_rows("action").astype(np.float32)
        self.codec = codec if codec is not None else ActionCodec.fit(self.spec, raw_actions)
        if (self.codec.spec.kind, self.codec.spec.dim) != (self.spec.kind, self.spec.dim):
            raise ValueError(f"codec is for {self.codec.spec}, but {store.path} has actions {self.spec}")
        self._actions = self.codec.encode(raw_actions.reshape(-1, self.spec.raw_dim))  # [rows, feature_dim]

        frame_bytes = sum(self._row_bytes(c) for c in self.columns) * self._num_rows
        self.cached = cache is True or (cache == "auto" and frame_bytes <= CACHE_LIMIT_BYTES)
        self._cache = {c: self._to_tensor(c, self._read_rows(c)) for c in self.columns} if self.cached else {}

    # ---- construction helpers -----------------------------------------------------------------------

    def _check_extra_columns(self, extra_columns: Sequence[str]) -> tuple[str, ...]:
        extra = (extra_columns,) if isinstance(extra_columns, str) else tuple(extra_columns)
        for c in extra:
            if c not in self.store.schema or c in ("pixels", "action"):
                valid = [k for k in self.store.columns if k not in ("pixels", "action")]
                raise ValueError(
                    f"extra column {c!r} is not an extra column of {self.store.path}; valid: {valid}"
                )
            if self.store.schema[c][1].kind not in "biuf":
                raise ValueError(f"extra column {c!r} has non-numeric dtype {self.store.schema[c][1]}")
        return extra

    def _usable_episodes(self, episodes: Sequence[int] | np.ndarray | None) -> np.ndarray:
        n = self.store.num_episodes
        if episodes is None:
            idx = np.arange(n)
        else:
            idx = np.asarray(episodes, dtype=np.int64).reshape(-1)
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"episode indices must be in [0, {n}) for {self.store.path}")
            if len(np.unique(idx)) != len(idx):
                raise ValueError("episode indices must not repeat")
            idx = np.sort(idx)  # file order: contiguous reads
        long_enough = self.store.ep_len[idx] >= self.window
        if not long_enough.any():
            longest = int(self.store.ep_len[idx].max()) if len(idx) else 0
            raise ValueError(
                f"no episode of {self.store.path} fits one window of num_steps * frameskip = "
                f"{self.num_steps} * {self.frameskip} = {self.window} env steps (longest selected episode: "
                f"{longest}); use a smaller frameskip or num_steps"
            )
        skipped = int((~long_enough).sum())
        if skipped:
            warnings.warn(
                f"skipping {skipped} of {len(idx)} episodes shorter than one window "
                f"({self.window} env steps)",
                stacklevel=3,
            )
        return idx[long_enough]

    def _runs(self) -> list[tuple[int, int]]:
        """The used episodes' rows as (start, stop) ranges of the file, adjacent episodes merged."""
        runs: list[tuple[int, int]] = []
        lengths = self.store.ep_len[self.episodes]
        for start, length in zip(self._global_offset.tolist(), lengths.tolist()):
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], start + length)
            else:
                runs.append((start, start + length))
        return runs

    def _read_rows(self, column: str) -> np.ndarray | torch.Tensor:
        """All used rows of ``column`` in window order (images resized to CHW as they are read)."""
        parts = []
        for start, stop in self._runs():
            for a in range(start, stop, _READ_BLOCK):
                block = self.store.read(column, slice(a, min(a + _READ_BLOCK, stop)))
                parts.append(self._to_tensor(column, block) if self._is_image(column) else block)
        return torch.cat(parts) if self._is_image(column) else np.concatenate(parts)

    def _is_image(self, column: str) -> bool:
        return _is_image(*self.store.schema[column])

    def _row_bytes(self, column: str) -> int:
        shape, dtype = self.store.schema[column]
        if self._is_image(column):
            return 3 * self.image_size**2
        return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def _to_tensor(self, column: str, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(rows, torch.Tensor):
            return rows
        return resize_images(rows, self.image_size) if self._is_image(column) else torch.from_numpy(rows)

    # ---- Dataset API --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._win_start)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, s = int(self._win_episode[index]), int(self._win_start[index])
        local = int(self._local_offset[k]) + s
        item = {"action": self._actions[local : local + self.window].reshape(self.num_steps, -1)}
        for c in self.columns:
            if self.cached:
                item[c] = self._cache[c][local : local + self.window : self.frameskip]
            else:
                g = int(self._global_offset[k]) + s
                item[c] = self._to_tensor(c, self.store.read(c, slice(g, g + self.window, self.frameskip)))
        return item

    def window_rows(self, index: int) -> np.ndarray:
        """File rows of the frames of window ``index`` (for tests and debugging)."""
        k, s = int(self._win_episode[index]), int(self._win_start[index])
        return int(self._global_offset[k]) + s + self.frameskip * np.arange(self.num_steps)

    def __repr__(self) -> str:
        return (
            f"SequenceDataset({str(self.store.path)!r}, windows={len(self)}, episodes={len(self.episodes)}, "
            f"num_steps={self.num_steps}, frameskip={self.frameskip}, image_size={self.image_size}, "
            f"cached={self.cached})"
        )
