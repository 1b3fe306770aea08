"""SequenceDataset: exact windows and action blocks on hand-made stores; split; errors."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lewm_agent.data.dataset import SequenceDataset, split_episodes
from lewm_agent.data.store import EpisodeWriter
from lewm_agent.images import resize_images
from lewm_agent.spaces import ActionCodec, ActionSpec

CONTINUOUS = ActionSpec("continuous", 2)


def write_store(path, lengths, spec=CONTINUOUS, size=8):
    """Every row r (global) has pixel value r % 251, action (r, -2r) (discrete: r % dim), state (r, r + .5);
    the last action row of each episode is NaN."""
    with EpisodeWriter(path, action_spec=spec) as w:
        r = 0
        for T in lengths:
            rows = np.arange(r, r + T)
            if spec.kind == "discrete":
                action = (rows % spec.dim)[:, None].astype(np.float32)
            else:
                action = np.stack([rows, -2.0 * rows], axis=1).astype(np.float32)
            action[-1] = np.nan
            pixels = np.broadcast_to((rows % 251).astype(np.uint8)[:, None, None, None], (T, size, size, 3))
            w.add_episode(
                {
                    "pixels": pixels,
                    "action": action,
                    "state": np.stack([rows, rows + 0.5], 1).astype(np.float32),
                }
            )
            r += T
    return path


@pytest.mark.parametrize("cache", [True, False])
def test_windows_and_action_blocks_are_exact(tmp_path, cache):
    path = write_store(tmp_path / "d.h5", [10, 4, 7])  # rows 0-9, 10-13, 14-20
    with pytest.warns(UserWarning, match="skipping 1 of 3 episodes"):
        ds = SequenceDataset(
            path, num_steps=2, frameskip=3, image_size=8, extra_columns=["state"], cache=cache
        )
    assert ds.cached is cache
    # window = 6 env steps; starts 0..4 in episode 0, 0..1 in episode 2; episode 1 (4 steps) skipped
    assert len(ds) == 5 + 2
    starts = [0, 1, 2, 3, 4, 14, 15]
    valid = np.r_[0:9, 14:20]  # non-NaN action rows of the used episodes
    raw = np.stack([np.arange(21), -2.0 * np.arange(21)], 1)
    mean, std = raw[valid].mean(0), raw[valid].std(0)
    np.testing.assert_allclose(ds.codec.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(ds.codec.std, std, rtol=1e-6)
    for i, s in enumerate(starts):
        item = ds[i]
        np.testing.assert_array_equal(ds.window_rows(i), [s, s + 3])
        assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape == (2, 3, 8, 8)
        np.testing.assert_array_equal(item["pixels"][:, 0, 0, 0].numpy(), [s, s + 3])
        np.testing.assert_array_equal(item["state"][:, 0].numpy(), [s, s + 3])
        # block t = raw actions of rows s + 3t .. s + 3t + 2, z-scored, NaN -> 0, flattened step-major
        expected = (raw[s : s + 6] - mean) / std
        expected[np.isin(np.arange(s, s + 6), [9, 20])] = 0.0  # each episode's last (NaN) row
        assert item["action"].dtype == torch.float32 and item["action"].shape == (2, 3 * 2)
        np.testing.assert_allclose(item["action"].numpy(), expected.reshape(2, 6), atol=1e-5)
    assert (ds[4]["action"][1, 4:] == 0).all()  # window ending at episode 0's last row


def test_discrete_actions_are_one_hot(tmp_path):
    spec = ActionSpec("discrete", 3)
    path = write_store(tmp_path / "d.h5", [7], spec=spec)
    ds = SequenceDataset(path, num_steps=3, frameskip=2, image_size=8)
    assert ds.spec == spec and len(ds) == 2
    action = ds[1]["action"]  # rows 1..6; row 6 is the NaN last row
    expected = np.zeros((6, 3), np.float32)
    expected[np.arange(5), np.arange(1, 6) % 3] = 1.0
    np.testing.assert_array_equal(action.numpy(), expected.reshape(3, 6))


def test_codec_decode_inverts_encode_for_both_kinds():
    discrete = ActionCodec(ActionSpec("discrete", 4))
    rows = np.array([[0.0], [3.0], [2.0]], np.float32)  # stored layout: one float index per step
    np.testing.assert_array_equal(discrete.decode(discrete.encode(rows)), rows)
    assert discrete.to_env(rows).tolist() == [0, 3, 2] and discrete.to_env(rows).dtype == np.int64
    spec = ActionSpec("continuous", 2, (-1.0, -1.0), (1.0, 1.0))
    box = ActionCodec.fit(spec, np.random.default_rng(0).uniform(-1, 1, (50, 2)))
    rows = np.array([[0.5, -0.25], [-1.0, 1.0]], np.float32)
    np.testing.assert_allclose(box.decode(box.encode(rows)), rows, atol=1e-6)
    np.testing.assert_array_equal(box.decode(torch.full((1, 2), 1e3)), [[1.0, 1.0]])  # clipped to the Box
    np.testing.assert_array_equal(box.to_env(rows), rows)


def test_cached_and_uncached_items_match_and_resize(tmp_path):
    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with EpisodeWriter(path) as w:
        for T in (9, 12):
            a = rng.normal(size=(T, 2)).astype(np.float32)
            a[-1] = np.nan
            w.add_episode({"pixels": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8), "action": a})
    cached = SequenceDataset(path, num_steps=2, frameskip=2, image_size=8, cache=True)
    direct = SequenceDataset(path, num_steps=2, frameskip=2, image_size=8, cache=False)
    assert len(cached) == len(direct) == 6 + 9
    for i in range(len(cached)):
        a, b = cached[i], direct[i]
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows = direct.window_rows(7)
    frames = direct.store.read("pixels", rows)
    torch.testing.assert_close(cached[7]["pixels"], resize_images(frames, 8), rtol=0, atol=0)


def test_episode_subset_and_shared_codec(tmp_path):
    path = write_store(tmp_path / "d.h5", [6, 6, 6, 6])
    train = SequenceDataset(path, num_steps=2, frameskip=2, image_size=8, episodes=[3, 0])
    np.testing.assert_array_equal(train.episodes, [0, 3])
    rows = np.r_[0:5, 18:23]  # non-NaN action rows of episodes 0 and 3
    np.testing.assert_allclose(train.codec.mean, [rows.mean(), -2 * rows.mean()], rtol=1e-6)
    val = SequenceDataset(path, num_steps=2, frameskip=2, image_size=8, episodes=[1], codec=train.codec)
    assert val.codec is train.codec and len(val) == 3
    assert np.isin(val.window_rows(0), np.r_[6:12]).all()
    with pytest.raises(ValueError, match="codec is for"):
        SequenceDataset(path, num_steps=2, frameskip=2, codec=ActionCodec(ActionSpec("discrete", 2)))


def test_dataloader_workers_read_lazily(tmp_path):
    path = write_store(tmp_path / "d.h5", [12, 15])
    ds = SequenceDataset(path, num_steps=3, frameskip=2, image_size=8, cache=False)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["pixels"]) for b in batches) == len(ds)
    first = batches[0]
    assert first["pixels"].shape == (4, 3, 3, 8, 8) and first["action"].shape == (4, 3, 4)
    torch.testing.assert_close(first["pixels"][1], ds[1]["pixels"], rtol=0, atol=0)


def test_bad_inputs(tmp_path):
    path = write_store(tmp_path / "d.h5", [5, 8])
    with pytest.raises(ValueError, match=r"4 \* 5 = 20 env steps.*smaller frameskip"):
        SequenceDataset(path, num_steps=4, frameskip=5)
    for kw in ({"num_steps": 0}, {"frameskip": -1}, {"image_size": 2.5}, {"cache": "yes"}):
        with pytest.raises(ValueError):
            SequenceDataset(path, **kw)
    with pytest.raises(ValueError, match="in \\[0, 2\\)"):
        SequenceDataset(path, num_steps=2, frameskip=2, episodes=[2])
    with pytest.raises(ValueError, match="repeat"):
        SequenceDataset(path, num_steps=2, frameskip=2, episodes=[1, 1])
    with pytest.raises(ValueError, match="valid: \\['state'\\]"):
        SequenceDataset(path, num_steps=2, frameskip=2, extra_columns=["proprio"])
    with pytest.raises(FileNotFoundError):
        SequenceDataset(tmp_path / "nope.h5")


def test_split_episodes():
    train, val = split_episodes(100)
    assert len(train) == 90 and len(val) == 10
    assert not set(train) & set(val) and set(train) | set(val) == set(range(100))
    again = split_episodes(100, seed=3072)
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(val, split_episodes(100, seed=1)[1])
    assert [len(x) for x in split_episodes(5)] == [4, 1]  # validation never empty with >= 2 episodes
    assert [len(x) for x in split_episodes(1)] == [1, 0]
    assert [len(x) for x in split_episodes(7, val_fraction=0.0)] == [7, 0]
    with pytest.raises(ValueError):
        split_episodes(10, val_fraction=1.0)
