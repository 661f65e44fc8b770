"""Progress bars for training (rich): one bar per phase."""
from __future__ import annotations


class EpochProgress:
    """A rich progress bar per training phase: epoch, loss, accuracy, images/s and time left."""

    def __init__(self, console, quiet: bool):
        self.console, self.quiet, self.tasks = console, quiet, {}

    def __enter__(self):
        if self.quiet:
            return None
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
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(f"{phase:9s}", total=total, stats="")
        stats = f"loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}"
        if "val_acc" in rec:
            stats += f" | val {rec['val_acc']:.3f}"
        stats += f" | {rec['images_per_s']:.0f} img/s"
        self.bar.update(self.tasks[phase], completed=rec["epoch"], stats=stats)

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)
        return False
