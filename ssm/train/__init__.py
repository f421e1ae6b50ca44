"""Training as a library: typed configs, optimizer policy, loop, checkpoints and metrics."""

from ssm.train.config import (
    ExperimentConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainerConfig,
    experiment_config,
    run_config,
)
from ssm.train.loop import Trainer, TrainingDiverged, evaluate_run, load_model, train
from ssm.train.optim import make_optimizer, param_labels
from ssm.train.run_dir import Preempted, RunFolderError

__all__ = [
    "ExperimentConfig",
    "OptimizerConfig",
    "Preempted",
    "RunFolderError",
    "SchedulerConfig",
    "Trainer",
    "TrainerConfig",
    "TrainingDiverged",
    "evaluate_run",
    "experiment_config",
    "load_model",
    "make_optimizer",
    "param_labels",
    "run_config",
    "train",
]
