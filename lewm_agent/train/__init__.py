"""Offline learner: ``train(TrainConfig(data=..., out=...))`` trains a LeWM and writes a run folder."""

from .trainer import TrainConfig, Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
