"""A small metric-learning trainer: P x K batches, a wall-time or step budget, best-checkpoint keeping.

Nothing here knows about a particular dataset: it gets uint8 images and integer labels,
a ``preprocess`` that turns a uint8 batch into the model's float input, an optional
``augment`` on that float batch, an objective mapping (embeddings, labels) to a
:class:`~retrieval.losses.LossOutput`, and a ``validate`` callback scoring the model
(higher is better).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from retrieval.training.sampler import PKSampler

Validate = Callable[[nn.Module], float]


class TrainingBudgetError(ValueError):
    """Neither a time nor a step budget was given."""


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation settings.

    The learning rate warms up linearly over ``warmup_steps`` and then follows a cosine
    decay over the budget; progress through the budget is the larger of the elapsed
    fraction of ``max_seconds`` and of ``max_steps``, so a wall-time budget ends with
    a fully decayed learning rate whatever the machine's speed.
    """

    classes_per_batch: int = 32
    images_per_class: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_fraction: float = 0.0
    max_seconds: float | None = None
    max_steps: int | None = None
    steps_per_epoch: int = 500
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    step: int
    seconds: float
    lr: float
    loss: float
    active_fraction: float
    val_score: float | None


@dataclass
class TrainResult:
    best_state: dict[str, Tensor]
    best_score: float | None
    best_epoch: int
    steps: int
    seconds: float
    history: list[EpochRecord] = field(default_factory=list)


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        objective: nn.Module,
        images: Tensor,
        labels: Tensor,
        preprocess: Callable[[Tensor], Tensor],
        config: TrainerConfig,
        augment: Callable[[Tensor], Tensor] | None = None,
        validate: Validate | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if config.max_seconds is None and config.max_steps is None:
            raise TrainingBudgetError("set max_seconds, max_steps or both")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        self.images = images
        self.labels = labels
        self.preprocess = preprocess
        self.augment = augment
        self.validate = validate
        self.config = config
        self.log = log
        self.sampler = PKSampler(labels, config.classes_per_batch, config.images_per_class, seed=config.seed)
        params = list(self.model.parameters()) + list(self.objective.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def _progress(self, step: int, elapsed: float) -> float:
        fractions = []
        if self.config.max_seconds is not None:
            fractions.append(elapsed / self.config.max_seconds)
        if self.config.max_steps is not None:
            fractions.append(step / self.config.max_steps)
        return max(fractions)

    def _lr(self, step: int, progress: float) -> float:
        cfg = self.config
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        floor = cfg.min_lr_fraction
        cosine = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return cfg.lr * warm * cosine

    def _train_step(self, lr: float) -> tuple[float, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        index = self.sampler.next_batch()
        batch = self.preprocess(self.images[index].to(self.device))
        if self.augment is not None:
            batch = self.augment(batch)
        out = self.objective(self.model(batch), self.labels[index].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        return float(out.loss.detach()), out.active_fraction

    def _score(self) -> float | None:
        if self.validate is None:
            return None
        self.model.eval()
        with torch.no_grad():
            score = self.validate(self.model)
        self.model.train()
        return score

    def fit(self) -> TrainResult:
        """Train until the budget is spent, validating every epoch; the model ends with the best weights."""
        torch.manual_seed(self.config.seed)
        self.model.train()
        self.objective.train()
        start = time.perf_counter()
        best_state, best_score, best_epoch = _state_copy(self.model), None, 0
        history: list[EpochRecord] = []
        step, epoch, done = 0, 0, False
        while not done:
            epoch += 1
            losses, actives, lr = [], [], self.config.lr
            for _ in range(self.config.steps_per_epoch):
                progress = self._progress(step, time.perf_counter() - start)
                if progress >= 1.0:
                    done = True
                    break
                lr = self._lr(step, progress)
                loss, active = self._train_step(lr)
                losses.append(loss)
                actives.append(active)
                step += 1
            if not losses:
                break
            score = self._score()
            record = EpochRecord(
                epoch=epoch,
                step=step,
                seconds=time.perf_counter() - start,
                lr=lr,
                loss=sum(losses) / len(losses),
                active_fraction=sum(actives) / len(actives),
                val_score=score,
            )
            history.append(record)
            if self.log is not None:
                self.log(_format_record(record))
            if score is None or best_score is None or score >= best_score:
                best_state, best_score, best_epoch = _state_copy(self.model), score, epoch
        self.model.load_state_dict(best_state)
        return TrainResult(best_state, best_score, best_epoch, step, time.perf_counter() - start, history)


def _format_record(record: EpochRecord) -> str:
    val = "-" if record.val_score is None else f"{record.val_score:.4f}"
    return (
        f"epoch {record.epoch:3d} step {record.step:6d} {record.seconds:7.1f}s lr {record.lr:.2e} "
        f"loss {record.loss:.4f} active {record.active_fraction:.3f} val {val}"
    )
