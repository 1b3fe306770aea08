"""Offline data: the HDF5 episode store, training windows, behaviour policies and the collector.

    from lewm_agent.data import EpisodeStore, SequenceDataset, collect, split_episodes
    collect("lewm/TwoRoom-v0", episodes=1000, policy="expert", out="tworoom.h5", num_envs=2)
    train_idx, val_idx = split_episodes(EpisodeStore("tworoom.h5").num_episodes)
    train = SequenceDataset("tworoom.h5", num_steps=4, frameskip=5, episodes=train_idx)
    val = SequenceDataset("tworoom.h5", num_steps=4, frameskip=5, episodes=val_idx, codec=train.codec)

Layout and guarantees: :mod:`lewm_agent.data.store`; windows: :mod:`lewm_agent.data.dataset`.
"""

from .collector import collect, episode_seeds, shard_episodes
from .dataset import SequenceDataset, split_episodes
from .policies import POLICY_NAMES, Policy, make_policy
from .store import EpisodeStore, EpisodeWriter

__all__ = [
    "POLICY_NAMES",
    "EpisodeStore",
    "EpisodeWriter",
    "Policy",
    "SequenceDataset",
    "collect",
    "episode_seeds",
    "make_policy",
    "shard_episodes",
    "split_episodes",
]
