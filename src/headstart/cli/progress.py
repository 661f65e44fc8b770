"""Training progress: a rich bar per phase on a terminal, a plain line per epoch anywhere else."""
from __future__ import annotations


class EpochProgress:
    """Epoch, loss, accuracy, images/s and time left, per training phase.

    On a terminal: a rich progress bar per phase. In a pipe or a log file a bar only renders when the run
    ends (the file stays empty for hours, and its times read ``0:0…``), so there each epoch prints one
    flushed line instead.
    """

    def __init__(self, console, quiet: bool):
        self.console, self.quiet, self.tasks = console, quiet, {}
        self.lines = not quiet and not console.is_terminal
        self.started: dict[str, float] = {}

    def __enter__(self):
        if self.quiet:
            return None
        if self.lines:
            return self
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, transient=False)
        self.bar.__enter__()
        return self

    def __call__(self, rec: dict, total: int) -> None:
        phase = rec["phase"]
        stats = f"loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}"
        if "val_acc" in rec:
            stats += f" | val {rec['val_acc']:.3f}"
        stats += f" | {rec['images_per_s']:.0f} img/s"
        if self.lines:
            self._line(phase, rec["epoch"], total, stats, rec.get("seconds", 0.0))
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(f"{phase:9s}", total=total, stats="")
        self.bar.update(self.tasks[phase], completed=rec["epoch"], stats=stats)

    def _line(self, phase: str, epoch: int, total: int, stats: str, seconds: float) -> None:
        spent = self.started[phase] = self.started.get(phase, 0.0) + seconds  # this phase's epochs so far
        left = spent / epoch * (total - epoch)  # at most: early stopping may end the phase sooner
        self.console.print(f"{phase} epoch {epoch}/{total}: {stats} | {_clock(spent)} elapsed, at most about "
                           f"{_clock(left)} left", highlight=False, soft_wrap=True)
        self.console.file.flush()

    def __exit__(self, *exc):
        if not self.quiet and not self.lines:
            self.bar.__exit__(*exc)
        return False


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
