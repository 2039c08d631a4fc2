"""Training loop, batch sampling, augmentation and objectives for metric learning."""

from retrieval.training.objectives import build_objective
from retrieval.training.sampler import PKSampler
from retrieval.training.trainer import EpochRecord, Trainer, TrainerConfig, TrainingBudgetError, TrainResult

__all__ = [
    "EpochRecord",
    "PKSampler",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "TrainingBudgetError",
    "build_objective",
]
