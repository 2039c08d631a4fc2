"""A small metric-learning trainer: P x K batches, a wall-time or step budget, best-checkpoint keeping, resume.

Nothing here knows about a particular dataset: it gets uint8 images (or cached features) and integer labels,
a ``preprocess`` that turns a batch of them into the model's float input, an optional ``augment`` on that
float batch, an objective mapping (embeddings, labels) to a :class:`~retrieval.models.losses.LossOutput`, and a
``validate`` callback scoring the model (higher is better).
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from retrieval.atomic import atomic_write
from retrieval.errors import SimsearchError
from retrieval.models.allocator import keep_freed_memory
from retrieval.models.training.sampler import PKSampler

Validate = Callable[[nn.Module], float]
StepCallback = Callable[[int, float, float], None]
"""Called after every step with (step, loss, active fraction)."""
EpochCallback = Callable[["EpochRecord"], None]

CHECKPOINT_FORMAT = 1


class TrainingBudgetError(SimsearchError, ValueError):
    """Neither a time nor a step budget was given."""


class CheckpointError(SimsearchError):
    """A checkpoint cannot be read, or was written for another model or data."""


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


def _generators(owner: object, depth: int = 3) -> list[torch.Generator]:
    """The private random generators of miners and augmentations (found in their attributes and submodules),
    saved so that a resumed run continues them."""
    if isinstance(owner, torch.Generator):
        return [owner]
    if isinstance(owner, list):
        return [g for item in owner for g in _generators(item, depth)]
    if depth == 0 or isinstance(owner, Tensor) or not hasattr(owner, "__dict__"):
        return []
    children = list(vars(owner).values())
    if isinstance(owner, nn.Module):
        children += list(owner.children())
    return [g for child in children for g in _generators(child, depth - 1)]


class Trainer:
    """Fits `model` and `objective` on P x K batches until the budget is spent, keeping the best-scoring epoch.

    On a CPU the process keeps the memory each step frees for the next (`retrieval.models.allocator`): about 1.4 times
    the steps a second for the small CNN on the 2-core machines.
    """

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
        on_step: StepCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        if config.max_seconds is None and config.max_steps is None:
            raise TrainingBudgetError("set max_seconds, max_steps or both")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        self.images = images
        self.labels = labels
        self.preprocess = preprocess
        self.augment = augment
        self.validate = validate
        self.config = config
        self.log = log
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.sampler = PKSampler(labels, config.classes_per_batch, config.images_per_class, seed=config.seed)
        params = [p for p in list(self.model.parameters()) + list(self.objective.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.epoch = 0
        self.seconds = 0.0
        self.history: list[EpochRecord] = []
        self.best_state = _state_copy(self.model)
        self.best_objective_state = _state_copy(self.objective)
        self.best_score: float | None = None
        self.best_epoch = 0
        self.tag = ""
        """Names the data and settings; a checkpoint with another tag is refused."""
        torch.manual_seed(config.seed)

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

    def fit(self, checkpoint: Path | None = None) -> TrainResult:
        """Train until the budget is spent, validating every epoch; model and objective end with the best weights.

        With ``checkpoint``, the whole training state is written there after every epoch, so that
        :meth:`resume` followed by ``fit`` continues where an interrupted run stopped.
        """
        self.model.train()
        self.objective.train()
        start = time.perf_counter() - self.seconds
        done = False
        while not done:
            losses, actives, lr = [], [], self.config.lr
            for _ in range(self.config.steps_per_epoch):
                progress = self._progress(self.step, time.perf_counter() - start)
                if progress >= 1.0:
                    done = True
                    break
                lr = self._lr(self.step, progress)
                loss, active = self._train_step(lr)
                losses.append(loss)
                actives.append(active)
                self.step += 1
                if self.on_step is not None:
                    self.on_step(self.step, loss, active)
            if not losses:
                break
            self.epoch += 1
            self._end_epoch(losses, actives, lr, time.perf_counter() - start)
            if checkpoint is not None:
                self.save_checkpoint(checkpoint)
        self.model.load_state_dict(self.best_state)
        self.objective.load_state_dict(self.best_objective_state)
        return TrainResult(self.best_state, self.best_score, self.best_epoch, self.step, self.seconds, self.history)

    def _end_epoch(self, losses: list[float], actives: list[float], lr: float, seconds: float) -> None:
        score = self._score()
        self.seconds = seconds
        record = EpochRecord(epoch=self.epoch, step=self.step, seconds=seconds, lr=lr,
                             loss=sum(losses) / len(losses), active_fraction=sum(actives) / len(actives),
                             val_score=score)
        self.history.append(record)
        if self.log is not None:
            self.log(format_record(record))
        if self.on_epoch is not None:
            self.on_epoch(record)
        if score is None or self.best_score is None or score >= self.best_score:
            self.best_state, self.best_score, self.best_epoch = _state_copy(self.model), score, self.epoch
            self.best_objective_state = _state_copy(self.objective)

    def state_dict(self) -> dict[str, object]:
        """Everything a resumed run needs: weights, optimiser moments, progress, best weights, random states."""
        return {
            "format": CHECKPOINT_FORMAT,
            "tag": self.tag,
            "model": _state_copy(self.model),
            "objective": _state_copy(self.objective),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step, "epoch": self.epoch, "seconds": self.seconds,
            "history": [asdict(record) for record in self.history],
            "best_state": self.best_state, "best_objective_state": self.best_objective_state,
            "best_score": self.best_score, "best_epoch": self.best_epoch,
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "generators": [g.get_state() for g in _generators([self.objective, self.augment])],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from `state` (a `state_dict`); `CheckpointError` for one of other settings, or an incomplete
        or damaged one."""
        if not isinstance(state, dict):
            raise CheckpointError(f"not a training checkpoint (it holds a {type(state).__name__})")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {state.get('format')!r}")
        if state.get("tag") != self.tag:
            raise CheckpointError("the checkpoint was written for other data or other training settings")
        try:
            self._restore(state)
        except (LookupError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"the checkpoint does not fit this model or is damaged: {_one_line(exc)}") from exc

    def _restore(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.objective.load_state_dict(state["objective"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        generators = _generators([self.objective, self.augment])
        saved = state["generators"]
        if len(saved) != len(generators):  # type: ignore[arg-type]
            raise CheckpointError("the checkpoint was written with another loss or augmentation")
        for generator, generator_state in zip(generators, saved, strict=True):  # type: ignore[call-overload]
            generator.set_state(generator_state)
        self.step, self.epoch, self.seconds = int(state["step"]), int(state["epoch"]), float(state["seconds"])
        self.history = [EpochRecord(**record) for record in state["history"]]  # type: ignore[union-attr]
        self.best_state = state["best_state"]  # type: ignore[assignment]
        self.best_objective_state = state["best_objective_state"]  # type: ignore[assignment]
        self.best_score = state["best_score"]  # type: ignore[assignment]
        self.best_epoch = int(state["best_epoch"])
        self.sampler.load_state_dict(state["sampler"])  # type: ignore[arg-type]
        torch.set_rng_state(state["torch_rng"])  # type: ignore[arg-type]

    def save_checkpoint(self, path: Path) -> None:
        """Write atomically, so a run killed while saving, or a full disk (`OutputWriteError`), leaves the previous
        epoch's checkpoint and nothing else.

        Serialised in memory and written by Python: torch's own writer reports a full disk as a RuntimeError.
        """
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write(path, lambda temporary: temporary.write_bytes(buffer.getbuffer()), "checkpoint")

    def resume(self, path: Path) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint` (tensors and plain values only, no unpickling);
        `CheckpointError` for anything else."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about what it refuses to unpickle; the error says it
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load parses untrusted bytes and raises many types on a damaged file
            raise CheckpointError(f"cannot read checkpoint {path}: {_checkpoint_problem(exc)}") from exc
        self.load_state_dict(state)


def _checkpoint_problem(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or _one_line(exc)
    return f"not a training checkpoint, or a damaged one ({type(exc).__name__})"


def _one_line(exc: Exception, limit: int = 200) -> str:
    """An exception's message on one line, cut short (torch's run to many lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_record(record: EpochRecord) -> str:
    val = "-" if record.val_score is None else f"{record.val_score:.4f}"
    return (
        f"epoch {record.epoch:3d} step {record.step:6d} {record.seconds:7.1f}s lr {record.lr:.2e} "
        f"loss {record.loss:.4f} active {record.active_fraction:.3f} val {val}"
    )
