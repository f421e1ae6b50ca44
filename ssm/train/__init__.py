"""Training as a library: typed configs, optimizer policy, loop, checkpoints and metrics."""

from ssm.train.config import (
    ExperimentConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainerConfig,
    experiment_config,
)
from ssm.train.loop import Trainer, TrainingDiverged, train
from ssm.train.optim import make_optimizer, param_labels

__all__ = [
    "ExperimentConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "Trainer",
    "TrainerConfig",
    "TrainingDiverged",
    "experiment_config",
    "make_optimizer",
    "param_labels",
    "train",
]
