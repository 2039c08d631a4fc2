"""Rich progress display for the indexing pipeline (an `retrieval.report.Reporter`)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from cli.output import terminal_text


class RateColumn(ProgressColumn):
    """Items per second, as images/s."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} images/s" if speed else "        images/s", style="progress.data.speed")


class RichReporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                                 RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.task: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def start(self, stage: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=self.progress.tasks[self.task].completed > 0)
        self.task = self.progress.add_task(stage, total=total)

    def advance(self, count: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, count)

    def warn(self, path: str, reason: str) -> None:
        self.console.print(f"[yellow]warning[/]: {escape(terminal_text(path))}: {escape(terminal_text(reason))}",
                           highlight=False, soft_wrap=True)


class TrainingProgress:
    """Training steps with the running loss and fraction of active triplets or pairs; epoch lines above."""

    def __init__(self, console: Console, total_steps: int, first_step: int = 0) -> None:
        self.console = console
        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}  active {task.fields[active]:.2f}  "
                                            "validation {task.fields[validation]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.task = self.progress.add_task("training", total=total_steps, completed=first_step, loss=0.0,
                                           active=0.0, validation="-")

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def step(self, step: int, loss: float, active: float) -> None:
        self.progress.update(self.task, completed=step, loss=loss, active=active)

    def log(self, message: str) -> None:
        self.console.print(escape(message), highlight=False)

    def validation(self, score: float | None) -> None:
        self.progress.update(self.task, validation="-" if score is None else f"{score:.4f}")
