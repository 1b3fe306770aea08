"""Episode store: round trip, official layout, crash safety, clear errors."""

import pickle
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from lewm_agent.data.store import FORMAT_VERSION, EpisodeStore, EpisodeWriter
from lewm_agent.spaces import ActionSpec

SPEC = ActionSpec("continuous", 2, (-1.0, -1.0), (1.0, 1.0))


def make_episode(T: int, tag: int, size: int = 8) -> dict[str, np.ndarray]:
    """An episode whose every value identifies (tag, step)."""
    action = np.stack([np.full(T, tag), np.arange(T)], axis=1).astype(np.float32)
    action[-1] = np.nan
    return {
        "pixels": np.full((T, size, size, 3), tag % 256, dtype=np.uint8),
        "action": action,
        "state": np.arange(T * 3, dtype=np.float32).reshape(T, 3) + 1000 * tag,
    }


def write(path, lengths, mode="append", **kw):
    with EpisodeWriter(path, mode, action_spec=SPEC, env_id="test/Env-v0", **kw) as w:
        for tag, T in enumerate(lengths):
            w.add_episode(make_episode(T, tag))


def assert_episode(store, i, tag, T, size=8):
    ep = store.episode(i)
    ref = make_episode(T, tag, size)
    assert set(ep) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ep[k], ref[k])


def test_round_trip(tmp_path):
    path = tmp_path / "d.h5"
    write(path, [5, 7, 3])
    store = EpisodeStore(path)
    assert store.num_episodes == len(store) == 3
    np.testing.assert_array_equal(store.ep_len, [5, 7, 3])
    np.testing.assert_array_equal(store.ep_offset, [0, 5, 12])
    assert store.action_spec == SPEC and store.env_id == "test/Env-v0"
    assert sorted(store.columns) == ["action", "pixels", "state"]
    for tag, T in enumerate([5, 7, 3]):
        assert_episode(store, tag, tag, T)
    assert store.episode(-1, columns=["state"]).keys() == {"state"}
    # any order, duplicates allowed
    np.testing.assert_array_equal(store.read("state", [6, 0, 6])[:, 0], [1003.0, 0.0, 1003.0])
    np.testing.assert_array_equal(store.read("pixels", slice(0, 15, 5))[:, 0, 0, 0], [0, 1, 1])
    clone = pickle.loads(pickle.dumps(store))  # what DataLoader workers receive
    np.testing.assert_array_equal(clone.read("state", slice(0, 15)), store.read("state", slice(0, 15)))


def test_layout_matches_official(tmp_path):
    path = tmp_path / "d.h5"
    write(path, [5, 7])
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"pixels", "action", "state", "ep_len", "ep_offset"}
        assert all(isinstance(f[k], h5py.Dataset) for k in f)  # top level, no groups
        assert f["pixels"].dtype == np.uint8 and f["pixels"].shape == (12, 8, 8, 3)
        assert f["action"].dtype == np.float32 and f["action"].shape == (12, 2)
        assert f["ep_len"].dtype == np.int32 and f["ep_offset"].dtype == np.int64
        for k in ("pixels", "action", "state", "ep_len", "ep_offset"):
            assert f[k].maxshape[0] is None and f[k].chunks is not None  # resizable along axis 0
        assert f["pixels"].chunks == (1, 8, 8, 3)  # one frame per chunk, as official files
        # only write-once frame chunks are compressed: rewritten compressed chunks move (not crash-safe)
        assert f["pixels"].compression == "lzf" and f["action"].compression is None
        assert np.isnan(f["action"][4]).all() and np.isnan(f["action"][11]).all()
        assert ActionSpec.from_json(f.attrs["action_space"]) == SPEC
        assert f.attrs["env_id"] == "test/Env-v0" and f.attrs["format_version"] == FORMAT_VERSION
        # what the official reader does: lengths/offsets + every non-index key as a column
        lengths, offsets = f["ep_len"][:], f["ep_offset"][:]
        np.testing.assert_array_equal(
            f["state"][offsets[1] : offsets[1] + lengths[1]], make_episode(7, 1)["state"]
        )


def write_official(path, lengths=(6, 9), size=8):
    """A file as stable-worldmodel writes it: libver latest, (1, ...) chunks, no attributes."""
    T = sum(lengths)
    with h5py.File(path, "w", libver="latest") as f:
        cols = {
            "pixels": np.random.default_rng(0).integers(0, 255, (T, size, size, 3), dtype=np.uint8),
            "action": np.random.default_rng(1).normal(size=(T, 2)).astype(np.float32),
            "proprio": np.zeros((T, 2), np.float32),
            "episode_idx": np.repeat(np.arange(len(lengths)), lengths).astype(np.int64),
            "step_idx": np.concatenate([np.arange(n) for n in lengths]).astype(np.int64),
        }
        for k, v in cols.items():
            f.create_dataset(k, data=v, maxshape=(None, *v.shape[1:]), chunks=(1, *v.shape[1:]))
        f.create_dataset("ep_len", data=np.array(lengths, np.int32), maxshape=(None,))
        f.create_dataset("ep_offset", data=np.cumsum([0, *lengths[:-1]]).astype(np.int64), maxshape=(None,))
    return cols


def test_official_file_loads_and_appends(tmp_path):
    path = tmp_path / "official.h5"
    cols = write_official(path)
    store = EpisodeStore(path)
    assert store.num_episodes == 2 and store.env_id is None
    assert store.action_spec == ActionSpec("continuous", 2)  # inferred: no action_space attribute
    ep = store.episode(1)
    for k, v in cols.items():
        np.testing.assert_array_equal(ep[k], v[6:15])
    store.close()
    extra = {k: v[:4] for k, v in cols.items()}
    with EpisodeWriter(path) as w:
        assert w.add_episode(extra) == 2
    store = EpisodeStore(path)
    np.testing.assert_array_equal(store.ep_len, [6, 9, 4])
    np.testing.assert_array_equal(store.episode(0)["pixels"], cols["pixels"][:6])


def test_discrete_actions_stored_as_float_indices(tmp_path):
    path = tmp_path / "d.h5"
    spec = ActionSpec("discrete", 5)
    with EpisodeWriter(path, action_spec=spec) as w:
        w.add_episode({"pixels": np.zeros((3, 4, 4, 3), np.uint8), "action": np.array([4, 1, np.nan])})
    store = EpisodeStore(path)
    assert store.action_spec == spec and store.schema["action"] == ((1,), np.dtype(np.float32))
    np.testing.assert_array_equal(store.read("action", slice(None)), [[4.0], [1.0], [np.nan]])


def test_append_overwrite_error_modes(tmp_path):
    path = tmp_path / "d.h5"
    write(path, [5])
    write(path, [4, 6])  # append: continues after the existing episode
    store = EpisodeStore(path)
    np.testing.assert_array_equal(store.ep_len, [5, 4, 6])
    store.close()
    with pytest.raises(FileExistsError, match="mode='append'"):
        EpisodeWriter(path, "error")
    write(path, [2], mode="overwrite")
    assert EpisodeStore(path).num_episodes == 1
    with pytest.raises(ValueError, match="mode must be"):
        EpisodeWriter(path, "truncate")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ep: ep.pop("state"), "columns"),
        (lambda ep: ep.update(state=np.zeros((len(ep["action"]), 4), np.float32)), "columns"),
        (lambda ep: ep.update(state=np.zeros((len(ep["action"]), 3), np.float64)), "columns"),
        (lambda ep: ep.update(extra=np.zeros(len(ep["action"]))), "columns"),
    ],
)
def test_append_with_other_layout_is_refused_untouched(tmp_path, change, match):
    path = tmp_path / "d.h5"
    write(path, [5, 7])
    episode = make_episode(4, 9)
    change(episode)
    with (
        EpisodeWriter(path, action_spec=SPEC, env_id="test/Env-v0") as w,
        pytest.raises(ValueError, match=match),
    ):
        w.add_episode(episode)
    store = EpisodeStore(path)
    assert store.num_episodes == 2
    assert_episode(store, 1, 1, 7)


def test_append_with_other_env_or_action_space_is_refused(tmp_path):
    path = tmp_path / "d.h5"
    write(path, [5])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="'test/Env-v0' episodes"):
        EpisodeWriter(path, env_id="other/Env-v0")
    with pytest.raises(ValueError, match="action space"):
        EpisodeWriter(path, action_spec=ActionSpec("continuous", 2, (-2.0, -2.0), (2.0, 2.0)))
    assert path.read_bytes() == before
    official = tmp_path / "official.h5"
    write_official(official)
    with pytest.raises(ValueError, match="action rows"):
        EpisodeWriter(official, action_spec=ActionSpec("continuous", 3))


def test_bad_episodes_are_refused(tmp_path):
    with EpisodeWriter(tmp_path / "d.h5", action_spec=SPEC) as w:
        ep = make_episode(4, 0)
        with pytest.raises(ValueError, match="same length"):
            w.add_episode({**ep, "state": ep["state"][:3]})
        with pytest.raises(ValueError, match="missing"):
            w.add_episode({"pixels": ep["pixels"]})
        with pytest.raises(ValueError, match="pixels must be uint8"):
            w.add_episode({**ep, "pixels": ep["pixels"].astype(np.float32)})
        with pytest.raises(ValueError, match="action rows have 3"):
            w.add_episode({**ep, "action": np.zeros((4, 3))})
        assert w.num_episodes == 0


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="lewm collect"):
        EpisodeStore(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        EpisodeStore(tmp_path / "text.h5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        EpisodeWriter(tmp_path / "text.h5")
    assert (tmp_path / "text.h5").read_text() == "not hdf5"
    EpisodeWriter(tmp_path / "empty.h5").close()  # e.g. a collection killed before its first episode
    with pytest.raises(ValueError, match="no finished episode"):
        EpisodeStore(tmp_path / "empty.h5")
    for missing in ("ep_len", "ep_offset", "pixels", "action"):
        path = tmp_path / f"no_{missing}.h5"
        write_official(path)
        with h5py.File(path, "a") as f:
            del f[missing]
        with pytest.raises(ValueError, match=missing):
            EpisodeStore(path)


def _rewrite(path, column, data):
    with h5py.File(path, "a") as f:
        del f[column]
        f[column] = data


@pytest.mark.parametrize("ep_len, ep_offset, match", [
    ([6, 20], [0, 6], r"covers 26 rows but the column\(s\) .*'pixels': 15"),  # index longer than the data
    ([6, 9], [0, 3], "episode 1 has ep_len 9 and ep_offset 3 .*overlapping"),
    ([6, 0], [0, 6], "episode 1 has ep_len 0 .*empty or negative"),
])
def test_episode_index_that_disagrees_with_the_columns_is_reported(tmp_path, ep_len, ep_offset, match):
    path = tmp_path / "bad_index.h5"
    write_official(path)
    _rewrite(path, "ep_len", np.array(ep_len, np.int32))
    _rewrite(path, "ep_offset", np.array(ep_offset, np.int64))
    with pytest.raises(ValueError, match=match):
        EpisodeStore(path)


@pytest.mark.parametrize("pixels, match", [
    (np.zeros((15, 8, 8, 3), np.float32), "float32 frames .*convert them to uint8"),
    (np.zeros((15, 3, 8, 8), np.uint8), r"shape \(3, 8, 8\).*height x width x 3"),
])
def test_pixels_that_are_not_uint8_hwc_are_reported(tmp_path, pixels, match):
    path = tmp_path / "bad_pixels.h5"
    write_official(path)
    _rewrite(path, "pixels", pixels)
    with pytest.raises(ValueError, match=match):
        EpisodeStore(path)


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import SPEC, make_episode
    from lewm_agent.data.store import EpisodeWriter
    with EpisodeWriter({path!r}, action_spec=SPEC) as w:
        tag = w.num_episodes
        while True:
            w.add_episode(make_episode(40 + tag % 7, tag, size=32))
            print(tag, flush=True)
            tag += 1
    """
)


def run_and_kill(path, tests_dir, after: int) -> int:
    """Run a writer in a subprocess, SIGKILL it once ``after`` more episodes are flushed; returns the
    number of episodes it reported finished."""
    script = WRITER_SCRIPT.format(tests=str(tests_dir), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    last = -1
    for _ in range(after):
        last = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # most likely in the middle of the next add_episode
    proc.wait()
    return last + 1


def test_killed_writer_leaves_finished_episodes_readable(tmp_path, request):
    path = tmp_path / "d.h5"
    tests_dir = request.path.parent
    reported = run_and_kill(path, tests_dir, after=3)
    store = EpisodeStore(path)
    n = store.num_episodes
    assert n >= reported
    for tag in range(n):
        assert_episode(store, tag, tag, 40 + tag % 7, size=32)
    store.close()
    # reopening drops the half-written rows and continues where the index ends
    reported = run_and_kill(path, tests_dir, after=2)
    store = EpisodeStore(path)
    assert store.num_episodes >= reported >= n + 2
    for tag in range(store.num_episodes):
        assert_episode(store, tag, tag, 40 + tag % 7, size=32)
    store.close()
    with EpisodeWriter(path) as w:
        w.add_episode(make_episode(3, 99, size=32))
    store = EpisodeStore(path)
    assert store.ep_offset[-1] == store.ep_offset[-2] + store.ep_len[-2]
    with h5py.File(path, "r") as f:
        assert len(f["pixels"]) == store.ep_len.sum()  # trailing rows of the killed write are gone


def test_missing_compression_filter_is_reported_up_front(tmp_path, monkeypatch):
    path = tmp_path / "d.h5"
    write(path, [3], compression="gzip")
    assert EpisodeStore(path).episode(0)["pixels"].shape == (3, 8, 8, 3)
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != h5py.h5z.FILTER_DEFLATE)
    with pytest.raises(ValueError, match="pip install hdf5plugin"):
        EpisodeStore(path)


@pytest.mark.slow
def test_writer_survives_repeated_random_kills(tmp_path, request):
    path = tmp_path / "d.h5"
    script = WRITER_SCRIPT.format(tests=str(request.path.parent), path=str(path))
    rng = np.random.default_rng(0)
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.3))  # anywhere in the write / flush cycle
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with EpisodeStore(path) as store:
            for tag in range(store.num_episodes):
                assert_episode(store, tag, tag, 40 + tag % 7, size=32)
