"""TensorBoard: torch's ``SummaryWriter`` (the ``tensorboard`` package writes the event files)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.track.base import Tracker


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises this when the tensorboard package is missing
        raise HeadstartError("--track tensorboard needs the tensorboard package: pip install 'headstart[track]'.") from exc
    return SummaryWriter


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, writer, logdir: Path):
        super().__init__()
        self.writer, self.logdir = writer, logdir
        self.params: dict[str, Any] = {}

    @classmethod
    def open(cls, uri: str | None, run_dir: str | Path | None, name: str) -> "TensorBoardTracker":
        if uri is None and run_dir is None:
            raise HeadstartError("--track tensorboard writes its event files into the run folder: give --out "
                                 "(Python: fit(..., out=...)) or a log directory with --track-uri.")
        logdir = Path(uri) if uri is not None else Path(run_dir) / "tensorboard"
        return cls(_writer_class()(log_dir=str(logdir), comment=name), logdir)

    def _params(self, params):
        self.params = params
        rows = "\n".join(f"| {k} | {json.dumps(v) if isinstance(v, str) else v} |" for k, v in sorted(params.items()))
        self.writer.add_text("options", "| option | value |\n|---|---|\n" + rows, 0)

    def _metrics(self, values, step):
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def _final(self, values, run_dir):
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, self.step)
        # The HPARAMS tab: options beside the final metrics, one row per run of a --logdir.
        # run_name="." keeps them in this run's folder instead of a new timestamped one.
        hparams = {k: v for k, v in self.params.items() if isinstance(v, (bool, int, float, str))}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in values.items()}, run_name=".",
                                global_step=self.step)
        if run_dir is not None:
            self.writer.add_text("run", f"run folder: `{Path(run_dir).resolve()}`", self.step)

    def close(self, status):
        self.writer.add_text("status", status, self.step)
        self.writer.close()

    def info(self):
        return {"kind": self.kind, "logdir": str(self.logdir.resolve())}
