"""HDF5 episode store in the LeWM / stable-worldmodel layout.

One file; every column (``pixels`` ``(N, H, W, 3)`` uint8, ``action`` ``(N, A)`` float32, optional
``proprio``, ``state``, ``goal_state``, ...) is a top-level dataset with all episodes concatenated on
axis 0, and ``ep_len`` (int32) / ``ep_offset`` (int64) index the episodes. Row t of ``action`` is the
action taken after observation t; the last row of an episode is NaN. File attributes: ``action_space``
(:class:`~lewm_agent.spaces.ActionSpec` JSON), ``env_id``, ``env_kwargs`` (JSON, the keyword arguments of
``gym.make``), ``format_version``. The official datasets
use this layout and load unchanged.

Crash safety: :class:`EpisodeWriter` writes an episode's column rows first and its index entry last,
then flushes, so a writer killed at any moment leaves every finished episode readable; rows past the
last indexed episode are ignored by readers and overwritten when the file is reopened for appending.
The file is written with HDF5's default (oldest) format on purpose: files written with
``libver="latest"`` keep an "open for writing" flag after a crash and then refuse to open at all
until the ``h5clear`` tool is run on them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import h5py
import numpy as np

from lewm_agent.spaces import ActionSpec

try:  # registers the Blosc / Zstd / LZ4 HDF5 filters that some published datasets are compressed with
    import hdf5plugin  # noqa: F401
except ImportError:
    pass

FORMAT_VERSION = 1
INDEX_COLUMNS = ("ep_len", "ep_offset")
REQUIRED_COLUMNS = ("pixels", "action")
WRITE_MODES = ("append", "overwrite", "error")
_CHUNK_BYTES = 1 << 16  # low-dimensional columns: ~64 KiB chunks; images: one frame per chunk
_REPLACE = "write to another file, or delete this one (EpisodeWriter mode='overwrite' replaces it)"
_READ_CACHE_BYTES = 64 << 20  # HDF5 chunk cache per open reader
_ROW_READS = 64  # up to this many scattered rows are read one by one (see EpisodeStore.read)

# column name -> (shape of one row, dtype)
Schema = dict[str, tuple[tuple[int, ...], np.dtype]]


def _is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return dtype == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3)


def _chunk_rows(shape: tuple[int, ...], dtype: np.dtype) -> int:
    # One frame per image chunk, as in the official files: a training window reads frames that are
    # `frameskip` rows apart, so larger image chunks would mostly read frames nobody asked for.
    if _is_image(shape, dtype):
        return 1
    row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return max(1, min(4096, _CHUNK_BYTES // row_bytes))


def _attr_str(attrs: h5py.AttributeManager, key: str) -> str | None:
    value = attrs.get(key)
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def _schema_of(f: h5py.File) -> Schema:
    return {
        name: (tuple(obj.shape[1:]), obj.dtype)
        for name, obj in f.items()
        if isinstance(obj, h5py.Dataset) and name not in INDEX_COLUMNS
    }


def _env_kwargs(attrs: h5py.AttributeManager) -> dict:
    text = _attr_str(attrs, "env_kwargs")
    return json.loads(text) if text else {}


def _indexed(f: h5py.File) -> tuple[np.ndarray, np.ndarray]:
    """``(ep_len, ep_offset)`` of the finished episodes. The two can differ in length only when a
    writer died between appending one and the other; that last entry is then not an episode."""
    n = min(len(f["ep_len"]), len(f["ep_offset"]))
    return f["ep_len"][:n].astype(np.int64), f["ep_offset"][:n].astype(np.int64)


def _check_filters(ds: h5py.Dataset, path: Path) -> None:
    """Fail now, not mid-training, if a column needs an HDF5 compression filter that is not installed."""
    plist = ds.id.get_create_plist()
    for k in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(k)
        if not h5py.h5z.filter_avail(code):
            raise ValueError(
                f"{path}: column {ds.name.lstrip('/')!r} is compressed with the HDF5 filter "
                f"{name.decode() or code} (id {code}), which is not installed; `pip install hdf5plugin` adds it"
            )


def _format_schema(schema: Schema) -> str:
    return ", ".join(f"{k} {v[1]}{list(v[0])}" for k, v in sorted(schema.items()))


class EpisodeWriter:
    """Append episodes to an HDF5 episode store.

    Args:
        path: the ``.h5`` file.
        mode: ``"append"`` (create, or extend an existing store), ``"overwrite"`` (start a new file)
            or ``"error"`` (refuse if the file exists).
        action_spec: the env's action space; saved as the ``action_space`` attribute. When None it is
            taken from an existing file, else inferred as continuous from the first episode.
        env_id: saved as the ``env_id`` attribute; appending with a different id is refused.
        env_kwargs: the keyword arguments the env was made with (``gym.make(env_id, **env_kwargs)``),
            saved as the ``env_kwargs`` attribute (JSON); appending with different ones is refused.
        compression: HDF5 filter for new image columns: ``"lzf"`` (default; rendered frames get ~10x
            smaller and write and read no slower, since less goes to disk), ``"gzip"`` (~2x smaller
            again, slower writes) or ``None``. h5py reads all three without extra packages. Other
            columns stay uncompressed (see ``_create_columns``).

    Use as a context manager. Appending to a file whose env, action space or columns (names, row
    shapes, dtypes) differ raises ValueError before anything is written; existing episodes are never
    modified. The column schema is locked by the first episode.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str = "append",
        *,
        action_spec: ActionSpec | None = None,
        env_id: str | None = None,
        env_kwargs: dict | None = None,
        compression: str | None = "lzf",
    ) -> None:
        if mode not in WRITE_MODES:
            raise ValueError(f"mode must be one of {WRITE_MODES}, got {mode!r}")
        self.path = Path(path)
        self.compression = compression
        if self.path.exists() and mode == "error":
            raise FileExistsError(
                f"{self.path} already exists; pass mode='append' to add episodes or "
                "mode='overwrite' to replace it"
            )
        if self.path.exists() and mode == "append":
            self._file = self._open_existing(action_spec, env_id, env_kwargs)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, "w")
            self._file.create_dataset("ep_len", (0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
            self._file.create_dataset("ep_offset", (0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
            self._file.attrs["format_version"] = FORMAT_VERSION
            self._rows = 0
        attrs = self._file.attrs
        if action_spec is not None and "action_space" not in attrs:
            attrs["action_space"] = action_spec.to_json()
        if env_id and not _attr_str(attrs, "env_id"):
            attrs["env_id"] = env_id
        if env_kwargs is not None and not len(_indexed(self._file)[0]):  # the first episodes set them
            attrs["env_kwargs"] = json.dumps(env_kwargs, sort_keys=True)
        self._file.flush()

    def _open_existing(self, action_spec: ActionSpec | None, env_id: str | None, env_kwargs: dict | None) -> h5py.File:
        if not h5py.is_hdf5(self.path):
            raise ValueError(f"{self.path} exists and is not an HDF5 file; {_REPLACE}")
        try:
            f = h5py.File(self.path, "a")
        except OSError as err:
            raise ValueError(
                f"cannot open {self.path} for appending ({err}); close other readers or writers of it first"
            ) from err
        try:
            self._check_existing(f, action_spec, env_id, env_kwargs)
        except Exception:
            f.close()
            raise
        ep_len, ep_offset = _indexed(f)
        self._rows = int(ep_offset[-1] + ep_len[-1]) if len(ep_len) else 0
        # Drop what a killed writer left past the last finished episode. With no finished episode
        # the columns are dropped too, so the next episode locks the schema afresh.
        for name in INDEX_COLUMNS:
            f[name].resize(len(ep_len), axis=0)
        for name in _schema_of(f):
            if len(ep_len):
                f[name].resize(self._rows, axis=0)
            else:
                del f[name]
        return f

    def _check_existing(self, f: h5py.File, action_spec: ActionSpec | None, env_id: str | None,
                        env_kwargs: dict | None) -> None:
        missing = [k for k in INDEX_COLUMNS if k not in f]
        if missing:
            raise ValueError(
                f"cannot append to {self.path}: it has no {'/'.join(missing)} episode index; {_REPLACE}"
            )
        old_id = _attr_str(f.attrs, "env_id")
        if env_id and old_id and env_id != old_id:
            raise ValueError(
                f"cannot append {env_id!r} episodes to {self.path}: it holds {old_id!r} episodes; {_REPLACE}"
            )
        old_kwargs = _env_kwargs(f.attrs)
        if len(_indexed(f)[0]) and (env_kwargs or {}) != old_kwargs:
            raise ValueError(
                f"cannot append episodes of {env_id or 'the env'} made with {env_kwargs or {}} to {self.path}: "
                f"its episodes were made with {old_kwargs}; {_REPLACE}"
            )
        old_spec = _attr_str(f.attrs, "action_space")
        if action_spec is not None and old_spec and ActionSpec.from_json(old_spec) != action_spec:
            raise ValueError(
                f"cannot append to {self.path}: its action space is {old_spec}, "
                f"not {action_spec.to_json()}; {_REPLACE}"
            )
        if action_spec is not None and "action" in f and f["action"].shape[1:] != (action_spec.raw_dim,):
            raise ValueError(
                f"cannot append to {self.path}: its action rows have shape {f['action'].shape[1:]}, but "
                f"{action_spec.to_json()} stores ({action_spec.raw_dim},); {_REPLACE}"
            )
        ep_len, ep_offset = _indexed(f)
        rows = int(ep_offset[-1] + ep_len[-1]) if len(ep_len) else 0
        short = [
            k
            for k, ds in f.items()
            if k not in INDEX_COLUMNS and isinstance(ds, h5py.Dataset) and len(ds) < rows
        ]
        if short:
            raise ValueError(
                f"{self.path} is corrupt: columns {short} are shorter than its episode index "
                f"says ({rows} rows)"
            )

    # ---- public API ---------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return min(len(self._file["ep_len"]), len(self._file["ep_offset"]))

    @property
    def schema(self) -> Schema:
        """Column name -> (row shape, dtype); empty until the first episode locks it."""
        return _schema_of(self._file)

    def check_columns(self, schema: Schema) -> None:
        """Raise ValueError if episodes with these columns cannot be appended (schema already locked)."""
        locked = self.schema
        if locked and {k: (tuple(s), np.dtype(d)) for k, (s, d) in schema.items()} != locked:
            raise ValueError(
                f"cannot append to {self.path}: its columns are [{_format_schema(locked)}] but the new "
                f"episodes have [{_format_schema(schema)}]; {_REPLACE}"
            )

    def add_episode(self, columns: Mapping[str, np.ndarray]) -> int:
        """Append one episode and flush it to disk; returns its index.

        ``columns`` maps names to arrays of the same length T >= 1: ``pixels`` uint8 ``[T, H, W, 3]``,
        ``action`` ``[T, A]`` (or ``[T]`` discrete indices; stored as float32, last row NaN), and any
        other per-step columns.
        """
        if self._file is None:
            raise RuntimeError(f"EpisodeWriter for {self.path} is closed")
        arrays = {k: np.asarray(v) for k, v in columns.items()}
        missing = [k for k in REQUIRED_COLUMNS if k not in arrays]
        if missing:
            raise ValueError(f"an episode needs the columns {list(REQUIRED_COLUMNS)}; missing {missing}")
        action = arrays["action"].astype(np.float32)
        arrays["action"] = action[:, None] if action.ndim == 1 else action
        lengths = {k: len(a) if a.ndim else 0 for k, a in arrays.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"every column of an episode needs the same length T >= 1, got {lengths}")
        if (
            arrays["pixels"].dtype != np.uint8
            or arrays["pixels"].ndim != 4
            or arrays["pixels"].shape[-1] != 3
        ):
            raise ValueError(
                f"pixels must be uint8 [T, H, W, 3], got {arrays['pixels'].dtype} {arrays['pixels'].shape}"
            )
        schema = {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}
        self.check_columns(schema)
        self._check_action_width(arrays["action"].shape[1])
        if not self.schema:
            self._create_columns(schema)

        start, end = self._rows, self._rows + lengths["pixels"]
        for name, a in arrays.items():
            self._file[name].resize(end, axis=0)
            self._file[name][start:end] = a
        # Index last: until ep_len has its new entry, readers (and a reopening writer) do not see
        # this episode, so a crash above loses only the episode being written.
        index = self.num_episodes
        for name, value in (("ep_offset", start), ("ep_len", end - start)):
            self._file[name].resize(index + 1, axis=0)
            self._file[name][index] = value
        self._file.flush()
        self._rows = end
        return index

    def _check_action_width(self, width: int) -> None:
        spec_json = _attr_str(self._file.attrs, "action_space")
        if spec_json is None:
            self._file.attrs["action_space"] = ActionSpec("continuous", width).to_json()
        elif ActionSpec.from_json(spec_json).raw_dim != width:
            raise ValueError(
                f"action rows have {width} values but the action space {spec_json} stores "
                f"{ActionSpec.from_json(spec_json).raw_dim} per step"
            )

    def _create_columns(self, schema: Schema) -> None:
        for name, (shape, dtype) in schema.items():
            # Only one-frame image chunks are compressed: they are written once. A compressed chunk
            # shared by several episodes moves in the file each time it is rewritten, and a writer
            # killed before its next flush could leave finished episodes pointing at reused space.
            image = _is_image(shape, dtype)
            self._file.create_dataset(
                name,
                (0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(_chunk_rows(shape, dtype), *shape),
                compression=self.compression if image else None,
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpisodeStore:
    """Read-only view of an HDF5 episode store (ours or an official LeWM / stable-worldmodel file).

    The index (``ep_len``, ``ep_offset``) and attributes are read once; column data is read on demand
    through a file handle opened lazily in each process, so a store can be passed to DataLoader
    workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(
                f"no episode store at {self.path}; collect one with `lewm collect ENV_ID --out {self.path}`"
            )
        if not h5py.is_hdf5(self.path):
            raise ValueError(
                f"{self.path} is not an HDF5 file; an episode store is an .h5 file written by `lewm collect`"
            )
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        try:
            self._read_metadata(self._handle())
        finally:
            self.close()  # reopened on the first read: merely inspecting a store does not hold it open

    def _read_metadata(self, f: h5py.File) -> None:
        missing = [k for k in (*INDEX_COLUMNS, *REQUIRED_COLUMNS) if k not in f]
        if missing and not set(missing) & set(INDEX_COLUMNS) and not len(f["ep_len"]):
            raise ValueError(
                f"{self.path} holds no finished episode yet (an interrupted collection?); run the same "
                "`lewm collect` command again to resume it"
            )
        if missing:
            raise ValueError(
                f"{self.path} lacks the dataset(s) {missing} (it has {sorted(f.keys())}); "
                "an episode store needs "
                "pixels (N,H,W,3) uint8, action (N,A) and the ep_len/ep_offset episode index; "
                "re-collect it with `lewm collect` or add the missing datasets with h5py"
            )
        self.ep_len, self.ep_offset = _indexed(f)
        self.schema: Schema = _schema_of(f)
        self._check_index()
        rows = int((self.ep_offset + self.ep_len).max()) if len(self.ep_len) else 0
        short = {k: len(f[k]) for k in self.schema if len(f[k]) < rows}
        if short:
            raise ValueError(
                f"{self.path}: its episode index (ep_len / ep_offset) covers {rows} rows but the column(s) "
                f"{short} are shorter; the index does not belong to these columns. Rebuild ep_len / ep_offset "
                "from the episodes the columns hold, or re-collect the file"
            )
        shape, dtype = self.schema["pixels"]
        if dtype != np.uint8 or len(shape) != 3 or shape[-1] != 3:
            hint = ("convert them to uint8 (e.g. (x * 255).round().astype(np.uint8))" if dtype != np.uint8
                    else "store frames as height x width x 3 (e.g. x.transpose(0, 2, 3, 1) for N,3,H,W)")
            raise ValueError(
                f"{self.path}: 'pixels' holds {dtype} frames of shape {shape}; an episode store holds RGB "
                f"frames as uint8 (H, W, 3): {hint}"
            )
        for name in self.schema:
            _check_filters(f[name], self.path)
        spec_json = _attr_str(f.attrs, "action_space")
        width = self.schema["action"][0][0] if self.schema["action"][0] else 1
        # Official files carry no action_space attribute; their actions are continuous.
        self.action_spec = ActionSpec.from_json(spec_json) if spec_json else ActionSpec("continuous", width)
        self.env_id = _attr_str(f.attrs, "env_id")
        self.env_kwargs = _env_kwargs(f.attrs)  # what gym.make(env_id, ...) was given

    def _check_index(self) -> None:
        """Episodes have at least one row, start at non-negative rows and do not overlap."""
        lens, offs = self.ep_len, self.ep_offset
        bad = np.flatnonzero((lens < 1) | (offs < 0))
        order = np.argsort(offs, kind="stable")
        overlap = np.flatnonzero(offs[order][1:] < (offs + lens)[order][:-1])
        if len(bad) or len(overlap):
            i = int(bad[0]) if len(bad) else int(order[overlap[0] + 1])
            raise ValueError(
                f"{self.path}: its episode index is inconsistent: episode {i} has ep_len {int(lens[i])} and "
                f"ep_offset {int(offs[i])} ({'an empty or negative range' if len(bad) else 'overlapping another'}"
                "); ep_offset must be the running sum of ep_len. Rebuild the index or re-collect the file"
            )

    def _handle(self) -> h5py.File:
        # A handle opened before a fork must not be used in the child (DataLoader workers).
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r", swmr=True, rdcc_nbytes=_READ_CACHE_BYTES)
            except OSError as err:
                raise ValueError(
                    f"cannot open {self.path} for reading ({err}); "
                    "is a writer (e.g. a running collection) still using it?"
                ) from err
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def _dataset(self, column: str) -> h5py.Dataset:
        f = self._handle()
        if column not in self._datasets:  # h5py's name lookup costs ~50 us, as much as reading a frame
            self._datasets[column] = f[column]
        return self._datasets[column]

    @property
    def num_episodes(self) -> int:
        return len(self.ep_len)

    def __len__(self) -> int:
        return self.num_episodes

    @property
    def columns(self) -> list[str]:
        """Data column names (everything but the episode index)."""
        return list(self.schema)

    def read(self, column: str, rows: slice | int | np.ndarray) -> np.ndarray:
        """Rows of one column: a slice (steps allowed), an int, or an array of non-negative ints in any
        order (repeats allowed)."""
        if column not in self.schema:
            raise KeyError(f"{self.path} has no column {column!r}; columns: {self.columns}")
        ds = self._dataset(column)
        if isinstance(rows, (int, np.integer)) or (isinstance(rows, slice) and rows.step in (None, 1)):
            return ds[rows]
        idx = np.asarray(range(len(ds))[rows] if isinstance(rows, slice) else rows, dtype=np.int64)
        if idx.size <= _ROW_READS:
            # h5py's strided and point selections take milliseconds (~5 ms for 4 frames); reading
            # the rows one by one takes microseconds.
            out = np.empty((idx.size, *ds.shape[1:]), ds.dtype)
            for k, i in enumerate(idx.ravel().tolist()):
                out[k] = ds[i]
            return out.reshape(*idx.shape, *ds.shape[1:])
        # h5py wants increasing, unique indices; read those once and map back.
        unique, inverse = np.unique(idx, return_inverse=True)
        return ds[unique][inverse.reshape(idx.shape)]

    def digest(self) -> str:
        """SHA-256 of the episode index and every action row: names the episodes this file holds
        wherever it lies (a copied or moved store keeps its digest; another collection gets another)."""
        h = hashlib.sha256()
        for column in (self.ep_len, self.ep_offset, self._dataset("action")[:]):
            h.update(np.ascontiguousarray(column).tobytes())
        return h.hexdigest()

    def episode(self, i: int, columns: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """All rows of episode ``i`` (negative counts from the end) for the given (default: all) columns."""
        i = range(self.num_episodes)[i]
        start = int(self.ep_offset[i])
        rows = slice(start, start + int(self.ep_len[i]))
        return {c: self.read(c, rows) for c in (columns or self.columns)}

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._datasets = None, {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None, "_datasets": {}}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({str(self.path)!r}, episodes={self.num_episodes}, rows={int(self.ep_len.sum())}, "
            f"env_id={self.env_id!r}, columns=[{_format_schema(self.schema)}])"
        )
