"""The saved run: ``model.safetensors`` + ``headstart.json`` (+ ``metrics.jsonl`` written while training).

The weights file holds backbone and head together, so the head can never be lost; the JSON holds
everything needed to rebuild the model offline and to know how it was made. One schema serves every
modality (``FORMAT_VERSION``); :class:`Run` reads any earlier format into it, so runs saved by older
releases keep loading. The CLI, the demo and later report/export/serve read runs through :class:`Run`.

Format history:
  1  headstart 0.1.0. Text runs kept ``modality``, ``text_column`` and ``label_column`` at the top;
     image runs recorded no modality; baselines named their no-pretraining model ``scratch`` (images)
     or ``tfidf_logreg`` (texts) with nothing saying which.
  2  every run records ``modality`` and the ``inputs`` it was read with (columns); baselines say
     which entry holds the no-pretraining model (``simple``).
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from headstart.config import TrainConfig
from headstart.errors import HeadstartError
from headstart.storage import check_writable, file_sha256, save_safetensors, write_json
from headstart.train.loop import load_checkpoint

FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
META = "headstart.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"  # crash-safe training state; loaded with weights_only=True
TRAIN_ARGS = "train_args.json"  # what `headstart resume` needs to restart the command
DISTILL_ARGS = "distill_args.json"  # the same for `headstart distill`


# What a run directory holds besides its weights, metadata and checkpoint: cleared when it is overwritten.
RUN_EXTRAS = (METRICS, "predictions", "report.html", "tensorboard", "distill_state.json")


def existing_run(out: str | Path) -> str | None:
    """``"finished"`` (headstart.json), ``"interrupted"`` (a checkpoint to resume) or None."""
    out = Path(out)
    if (out / META).is_file():
        return "finished"
    if (out / CHECKPOINT).is_file() or (out / "distill_state.json").is_file():  # train's or distill's
        return "interrupted"
    return None


def refuse_to_replace(out: str | Path, *, resume: bool, overwrite: bool, cli: bool = False) -> None:
    """Never replace a finished run or drop an interrupted one's checkpoint unless told to.

    ``cli`` words the fix as flags (``--overwrite``), else as Python keywords (``overwrite=True``).
    """
    state = None if resume or overwrite else existing_run(out)
    flag = "--overwrite" if cli else "overwrite=True"
    if state == "finished":
        raise HeadstartError(
            f"{str(out)!r} already holds a finished run (headstart.json); training there would replace it. "
            f"Choose another {'--out' if cli else 'out'}, or pass {flag} to replace it.")
    if state == "interrupted":
        raise HeadstartError(
            f"{str(out)!r} holds an interrupted run (its checkpoint); continue it with "
            f"`headstart resume {out}`" + ("" if cli else " (or fit(..., resume=True))")
            + f", or pass {flag} to discard it and start again.")


def clear_run(out: str | Path) -> None:
    """Remove a previous run from ``out`` (``overwrite``): its metadata first, so nothing half-replaced
    ever looks finished, then its weights, checkpoint and everything derived from them."""
    import shutil

    out = Path(out)
    for name in (META, WEIGHTS, CHECKPOINT) + RUN_EXTRAS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def discard_unfinished(out: str | Path, created: bool) -> None:
    """After a failed start: no half-made run folder. Keeps anything resumable (a checkpoint) or finished;
    removes the argument and metrics files, and the folder itself when this run created it and it is empty."""
    out = Path(out)
    if not out.is_dir() or existing_run(out) is not None:
        return
    try:
        for name in (TRAIN_ARGS, DISTILL_ARGS, METRICS):
            (out / name).unlink(missing_ok=True)
        if created:
            out.rmdir()  # only when empty: never anything the user put there
    except OSError:  # cleaning up must never hide the error that brought us here
        pass


def prepare_out(out: str | Path | None, resume: bool, cfg: TrainConfig, *, overwrite: bool = False) -> dict | None:
    """Check the run directory before any training; the checkpoint to resume from, if asked."""
    if out is None:
        if resume:
            raise HeadstartError("resume=True needs out=<the run directory of the interrupted run>.")
        return None
    if resume and overwrite:
        raise HeadstartError("resume=True continues the run in out; overwrite=True replaces it: pass one of them.")
    refuse_to_replace(out, resume=resume, overwrite=overwrite)
    check_writable(out)  # fail before any training, never after an hour of it
    if overwrite:
        clear_run(out)
    return resume_checkpoint(Path(out), cfg) if resume else None


def run_paths(out: str | Path | None, fresh: bool) -> tuple[Path | None, Path | None]:
    """(metrics.jsonl, checkpoint.pt) of a run directory; a fresh run starts a new metrics log."""
    if out is None:
        return None, None
    metrics_path, checkpoint_path = Path(out) / METRICS, Path(out) / CHECKPOINT
    if fresh:
        metrics_path.unlink(missing_ok=True)
    return metrics_path, checkpoint_path


def resume_checkpoint(out: Path, cfg: TrainConfig) -> dict:
    path = out / CHECKPOINT
    if not path.is_file():
        done = (out / "headstart.json").is_file()
        raise HeadstartError(
            f"Nothing to resume in {str(out)!r}: " + (
                "the run already finished. To train it again, run the same `headstart train` command with "
                "--overwrite (Python: fit(..., overwrite=True))." if done else
                "no checkpoint.pt (the run never finished an epoch). Start it again with `headstart train` and "
                "the same options (Python: fit(...))."))
    ckpt = load_checkpoint(path)
    planned = {"strategy", "freeze_stages", "backbone_lr_ratio", "cut_stage"} if cfg.strategy == "auto" else set()
    planned |= {"baselines", "baseline_seconds"}  # run after training: they never change its course
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in planned and ckpt["config"].get(k) != v)
    if changed:
        raise HeadstartError(
            f"Cannot resume {str(out)!r} with different options {changed}; resume with the options of "
            "the original run (`headstart resume RUN` reads them for you).")
    return ckpt


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("headstart", "torch", "timm", "accelerate", "safetensors", "numpy", "pillow", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_run(directory: str | Path, model, meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_safetensors(state, directory / WEIGHTS, metadata={"format": "headstart", "version": str(FORMAT_VERSION)})
    meta = dict(meta)
    meta.update({
        "format_version": FORMAT_VERSION,
        "model_sha256": file_sha256(directory / WEIGHTS),
        "library_versions": library_versions(),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    write_json(directory / META, meta)  # written last: a run dir with headstart.json is complete
    return directory


def read_run(directory: str | Path) -> tuple[dict[str, Any], dict]:
    """(meta, state_dict) of a saved run, with the weights checked against the recorded sha256."""
    run = Run.open(directory)
    return run.meta, run.state_dict()


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``headstart.json`` of a run directory, in the current schema."""
    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise HeadstartError(
            f"{str(directory)!r} is not a headstart run (no {META}). Pass the --out directory of "
            "`headstart train`."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise HeadstartError(f"{str(meta_path)!r} is corrupt ({exc}).") from exc
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise HeadstartError(f"{str(directory)!r} was saved by a newer headstart; upgrade to load it.")
    return migrate(meta)


def verified_weights(directory: Path, meta: dict[str, Any]) -> Path:
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise HeadstartError(f"{str(directory)!r} has no {WEIGHTS}; the run did not finish saving.")
    expected = meta.get("model_sha256")
    if expected and file_sha256(weights) != expected:
        raise HeadstartError(
            f"{str(weights)!r} does not match the sha256 recorded in {META}: the file was modified or "
            "corrupted. Re-train or restore it from a backup."
        )
    return weights


def migrate(meta: dict[str, Any]) -> dict[str, Any]:
    """``headstart.json`` of any earlier format in the current schema (the file itself is not rewritten)."""
    meta = dict(meta)
    saved = meta.get("format_version", 1)
    if saved < 2:
        preprocess = meta.get("preprocess") or {}
        meta.setdefault("modality", "text" if preprocess.get("modality") == "text" else "image")
        meta["inputs"] = {"text_column": meta.pop("text_column", None), "label_column": meta.pop("label_column", None)}
        baselines = meta.get("baselines")
        if baselines and "skipped" not in baselines:
            meta["baselines"] = {**baselines, "simple": "tfidf_logreg" if "tfidf_logreg" in baselines else "scratch"}
    meta["saved_format_version"] = saved
    meta["format_version"] = FORMAT_VERSION
    return meta


@dataclass(frozen=True)
class DataRecord:
    """What the model was trained on."""

    origin: str
    n_train: int
    n_val: int
    n_skipped: int
    skipped: list  # (example, reason) pairs, the first 50
    extra: dict  # modality-specific facts, e.g. a text run's vocabulary_coverage

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataRecord":
        known = ("origin", "n_train", "n_val", "n_skipped", "skipped")
        return cls(d.get("origin", ""), d.get("n_train", 0), d.get("n_val", 0), d.get("n_skipped", 0),
                   [tuple(s) for s in d.get("skipped", [])], {k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class BaselineRecord:
    """Did transfer help: the transfer model beside its linear probe and a no-pretraining model."""

    n_val: int
    transfer_val_acc: float | None
    linear_probe_val_acc: float | None
    simple: str  # which entry of ``detail`` is the no-pretraining model: "scratch" or "tfidf_logreg"
    simple_val_acc: float | None
    warnings: list[str]
    detail: dict  # the whole saved comparison (times, curves, compute saved)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BaselineRecord | None":
        if not d or "skipped" in d:
            return None
        simple = d.get("simple", "scratch")
        return cls(d.get("n_val", 0), (d.get("transfer") or {}).get("val_acc"),
                   (d.get("linear_probe") or {}).get("val_acc"), simple, (d.get(simple) or {}).get("val_acc"),
                   list(d.get("warnings", [])), d)


@dataclass(frozen=True)
class Run:
    """A saved run directory, read and checked: paths, metadata in the current schema, typed records."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: str | Path) -> "Run":
        directory = Path(directory)
        return cls(directory, read_meta(directory))

    # ---- what the run holds
    @property
    def modality(self) -> str:
        return self.meta["modality"]

    @property
    def classes(self) -> list:
        return list(self.meta["classes"])

    @property
    def backbone(self) -> dict[str, Any]:
        return self.meta["backbone"]

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["config"])

    @property
    def inputs(self) -> dict[str, Any]:
        return {k: v for k, v in (self.meta.get("inputs") or {}).items() if v is not None}

    @property
    def data(self) -> DataRecord | None:
        return DataRecord.from_dict(self.meta["data"]) if self.meta.get("data") else None

    @property
    def baselines(self) -> BaselineRecord | None:
        return BaselineRecord.from_dict(self.meta.get("baselines"))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics") or {})

    @property
    def plan(self) -> dict[str, Any] | None:
        return self.meta.get("plan")

    @property
    def distillation(self) -> dict[str, Any] | None:
        """A distilled student's report: teacher, student and direct-student accuracy, ratio, speeds."""
        return self.meta.get("distillation")

    @property
    def seconds(self) -> float | None:
        return (self.meta.get("history") or {}).get("seconds")

    # ---- files
    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def epochs(self) -> list[dict[str, Any]]:
        """``metrics.jsonl``: one record per training epoch, in order."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def state_dict(self) -> dict:
        """The weights, checked against the sha256 recorded in ``headstart.json``."""
        from safetensors.torch import load_file

        return load_file(str(verified_weights(self.path, self.meta)))
