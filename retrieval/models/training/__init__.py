"""Training loop, batch sampling, augmentation and objectives for metric learning."""

from retrieval.models.training.objectives import build_objective
from retrieval.models.training.sampler import PKSampler
from retrieval.models.training.trainer import EpochRecord, Trainer, TrainerConfig, TrainingBudgetError, TrainResult

__all__ = [
    "EpochRecord",
    "PKSampler",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "TrainingBudgetError",
    "build_objective",
]
