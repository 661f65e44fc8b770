"""The ``headstart`` command: a thin layer over the Python API.

Only typer is imported at start-up; torch and friends load inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from headstart.adapt.config import AdaptConfig
from headstart.cli import render
from headstart.cli.options import with_config_options
from headstart.cli.progress import EpochProgress
from headstart.config import DEFAULT_BACKBONE, TrainConfig
from headstart.distill.config import DistillConfig
from headstart.export.config import ExportConfig
from headstart.serve.config import ServeConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning in one command: fine-tune pretrained models on your data.")


def _print_version(value: bool) -> None:
    if value:
        from headstart import __version__

        print(f"headstart {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    """Transfer learning in one command: fine-tune pretrained models on your data."""


@app.command()
@with_config_options(TrainConfig)
def train(
    data: str = typer.Argument(..., help="Images: a folder with one subfolder per class, or a CSV (path,label). "
                               "Texts (hf:/vectors: backbones): a CSV, TSV, JSONL, JSON or Parquet file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (default: a new "
                                       "runs/run-YYYYMMDD-HHMMSS). A finished run there is never replaced "
                                       "without --overwrite."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, help="Pretrained backbone (see `headstart backbones`); "
                                 "hf: and vectors: backbones read texts."),
    val: Optional[str] = typer.Option(None, help="Validation folder/table (default: a stratified split, see "
                                      "--val-fraction)."),
    unlabeled: Optional[str] = typer.Option(None, help="Unlabelled examples that train the head after the fit "
                                            "(see --ssl-method): a folder of images (flat or nested), a CSV of "
                                            "image paths, or a text table (any label column is ignored)."),
    target: Optional[str] = typer.Option(None, help="Unlabelled examples from where the model will be used, "
                                         "when that differs from DATA (read like --unlabeled): aligned with the "
                                         "training data while the backbone trains (see --target-method)."),
    path_column: str = typer.Option("path", help="Image CSVs: the column with image paths."),
    label_column: Optional[str] = typer.Option(None, help="Column with labels (default: label; for text also "
                                               "labels, target or class)."),
    text_column: Optional[str] = typer.Option(None, help="Text data: column with the texts (default: text, or "
                                              "the only text column)."),
    pooling: Optional[str] = typer.Option(None, help="Text backbones: mean | cls | max (hf:), mean | tfidf "
                                          "(vectors:); default: the model's own configuration, else mean."),
    max_length: Optional[int] = typer.Option(None, help="Text backbones: tokens per text (default: the model's own)."),
    pretrained: bool = typer.Option(True, "--pretrained/--random-init",
                                    help="Start from pretrained weights (default) or from random ones."),
    allow_unsafe_pickle: bool = typer.Option(False, "--allow-unsafe-pickle",
                                             help="Let file: backbones unpickle arbitrary objects. Only for files you trust."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    resume: bool = typer.Option(False, "--resume", help="Continue this --out run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished (or interrupted) run in --out."),
    encoding: Optional[str] = typer.Option(None, help="Text tables: their encoding (default: UTF-8, and "
                                           "Windows-1252 for lines that are not UTF-8, with a warning)."),
    report: bool = typer.Option(False, "--report", help="After the fit, write RUN/report.html from the validation "
                                "split (`headstart report RUN TEST` adds a test set)."),
    config: TrainConfig = None,
):
    """Fine-tune a pretrained backbone on labelled images or texts and save the run.

    Every training option below the inputs is a field of headstart.TrainConfig (same name, same default).
    """
    args = {"data": data, "out": str(out or _fresh_out()), "backbone": backbone, "val": val, "unlabeled": unlabeled,
            "target": target, "path_column": path_column, "label_column": label_column, "text_column": text_column,
            "encoding": encoding, "pooling": pooling, "max_length": max_length, "pretrained": pretrained,
            "allow_unsafe_pickle": allow_unsafe_pickle, "report": report, "config": config.to_dict()}
    _run_train(args, resume=resume, quiet=quiet, overwrite=overwrite)


def _fresh_out(root: Path = Path("runs")) -> Path:
    """A run directory no earlier run used: runs/run-YYYYMMDD-HHMMSS (-2, -3 ... within one second)."""
    import os
    import time

    from headstart.errors import HeadstartError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own name
        raise HeadstartError("Under torchrun / accelerate launch pass --out: every process must write to the "
                             "same run directory.")
    base = root / time.strftime("run-%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


@app.command()
def resume(run: Path = typer.Argument(..., help="The --out directory of an interrupted `headstart train` "
                                     "or `headstart distill`.")):
    """Continue a killed or interrupted training or distillation run from its last checkpoint."""
    from headstart.errors import HeadstartError
    from headstart.io.run import DISTILL_ARGS, TRAIN_ARGS

    if (run / DISTILL_ARGS).is_file():
        args = json.loads((run / DISTILL_ARGS).read_text())
        args["out"] = str(run)
        _run_distill(args, resume=True, quiet=False)
        return
    path = run / TRAIN_ARGS
    if not path.is_file():
        raise HeadstartError(f"{str(run)!r} has no {TRAIN_ARGS}; it was not started by `headstart train` "
                             "or `headstart distill`.")
    args = json.loads(path.read_text())
    args["out"] = str(run)
    _run_train(args, resume=True, quiet=False)


def _config_of(args: dict) -> TrainConfig:
    """The TrainConfig of a train_args.json; headstart 0.1.0 wrote its fields flat among the other options."""
    if "config" in args:
        return TrainConfig.from_dict(args["config"])
    fields = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in args.items() if k in fields})


def _run_train(args: dict, resume: bool, quiet: bool, overwrite: bool = False) -> None:
    from headstart.estimator import TransferClassifier
    from headstart.io.run import TRAIN_ARGS
    from headstart.train.distributed import is_main_process

    cfg = _config_of(args)
    out = Path(args["out"])
    clf = TransferClassifier(args["backbone"], strategy=cfg.strategy, config=cfg, pretrained=args.get("pretrained", True),
                             allow_unsafe_pickle=args.get("allow_unsafe_pickle", False),
                             path_column=args.get("path_column", "path"), text_column=args.get("text_column"),
                             label_column=args.get("label_column"), encoding=args.get("encoding"),
                             pooling=args.get("pooling"), max_length=args.get("max_length"))
    main = is_main_process()  # one writer when several processes train
    console = render.console()
    with _run_folder(out, TRAIN_ARGS, args, resume=resume, overwrite=overwrite, main=main), \
            _interruptible(out, console), render.show_logs(console, quiet), EpochProgress(console, quiet) as progress:
        clf.fit(args["data"], validation=args.get("val"), unlabeled=args.get("unlabeled"), target=args.get("target"),
                out=out, progress=progress, resume=resume)
    if clf.run_ is None:  # the main process saved the run; the others have nothing to report
        return
    render.print_fit_summary(console, clf.run_, clf.fit_seconds_)
    tracked = clf.run_.meta.get("tracking")
    if tracked:
        where = (f"tensorboard --logdir {tracked['logdir']}" if tracked["kind"] == "tensorboard" else
                 f"MLflow run {tracked['run_id']} in experiment {tracked['experiment']!r} at {tracked['uri']}")
        console.print(f"tracked: {where}", highlight=False, soft_wrap=True)
    if args.get("report"):
        from headstart.report import write_report

        path, _ = write_report(out)
        console.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train`."),
    inputs: Optional[List[str]] = typer.Argument(None, help="Image files or folders; for a text run, the texts."),
    input_file: Optional[str] = typer.Option(None, "--input", help="A file of inputs: for a text run a CSV, TSV, "
                                             "JSONL, JSON, Parquet or TXT file; for images a folder or a CSV of paths."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the predictions to this file instead of "
                                          "printing JSON lines: .jsonl, .json (an array), .csv or .tsv."),
    text_column: Optional[str] = typer.Option(None, help="Column with the texts in --input (default: the training one)."),
    encoding: Optional[str] = typer.Option(None, help="Encoding of a text --input (default: the run's, else UTF-8 "
                                           "with Windows-1252 for lines that are not)."),
    path_column: str = typer.Option("path", help="CSV column with image paths in --input."),
    top: int = typer.Option(0, help="Only the top-N class probabilities (0 = all)."),
    engine: Optional[str] = typer.Option(None, help="Inference engine for image runs: auto, torch or openvino "
                                         "(default: the run's own setting, auto unless it was trained with another)."),
):
    """One prediction per input (label and class probabilities), as JSON lines or into --output."""
    from headstart.errors import DataError
    from headstart.estimator import load

    if not inputs and not input_file:
        raise DataError("Nothing to predict: pass inputs after the run directory, or --input FILE.")
    render.prediction_format(output)  # a suffix it cannot write fails now, not after the predictions
    clf = _with_engine(load(run), engine)
    if clf.modality_.name == "text":
        rows, failed = _predict_texts(clf, inputs, input_file, text_column, encoding)
    else:
        rows, failed = _predict_images(clf, inputs, input_file, path_column)
    for r in rows:
        if "probabilities" in r and top:
            r["probabilities"] = dict(sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:top])
    render.write_predictions(rows, output)
    if failed:
        raise typer.Exit(1)


def _with_engine(clf, engine: str | None):
    """The loaded run, predicting on ``engine`` when one is given (validated by the config)."""
    if engine is not None:
        clf.set_params(engine=engine)
        clf.resolved_config()  # a bad value fails here, naming the choices
    return clf


def _predict_texts(clf, inputs, input_file, text_column, encoding=None) -> tuple[list[dict], int]:
    from headstart.data.texts import load_texts

    sources = ([load_texts(input_file, text_column=text_column or clf.text_column, label_column=False,
                           encoding=encoding or clf.encoding)]
               if input_file else []) + ([load_texts(list(inputs), label_column=False)] if inputs else [])
    rows: list[dict] = []
    failed = 0
    for ex in sources:
        probs = clf.predict_examples(ex).probs
        for rid, text, pr in zip(ex.ids, ex.texts, probs):
            rows.append({"id": rid, "text": text, "label": clf.classes_[int(pr.argmax())],
                         "probabilities": {str(c): round(float(v), 6) for c, v in zip(clf.classes_, pr)}})
        for rid, why in ex.skipped:
            rows.append({"id": rid, "error": why})
            failed += 1
    return rows, failed


def _predict_images(clf, inputs, input_file, path_column) -> tuple[list[dict], int]:
    from headstart.data import Examples, as_examples
    from headstart.data.sources import IMAGE_SUFFIXES
    from headstart.errors import DataError

    paths: list[str] = []
    if input_file:
        paths += [str(p) for p in as_examples(input_file, path_column=path_column, label_column=None).items]
    for item in inputs or []:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise DataError(f"No images found in {inputs or input_file}; pass image files or folders holding images.")
    pred = clf.predict_examples(Examples(paths, None, "inputs"))
    probs, skipped, kept = pred.probs, pred.skipped, pred.index
    found = {i: probs[j] for j, i in enumerate(kept)}
    errors = dict(skipped)
    rows = []
    for i, path in enumerate(paths):
        if i in found:
            rows.append({"path": path, "label": clf.classes_[int(found[i].argmax())],
                         "probabilities": {str(c): round(float(v), 6) for c, v in zip(clf.classes_, found[i])}})
        else:
            rows.append({"path": path, "error": errors.get(path, "unreadable")})
    return rows, len(skipped)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train`."),
    data: str = typer.Argument(..., help="Labelled test data: class folders or a CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    report_html: Optional[Path] = typer.Option(None, "--report", help="Also write the HTML report of this "
                                               "evaluation there (`headstart report`; same single prediction pass)."),
    engine: Optional[str] = typer.Option(None, help="Inference engine for image runs: auto, torch or openvino "
                                         "(default: the run's own setting, auto unless it was trained with another)."),
):
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on labelled test data."""
    from headstart.estimator import load

    clf = _with_engine(load(run), engine)
    if report_html is not None:
        from headstart.report import write_report

        path, summary = write_report(run, data, out=report_html, clf=clf)  # the run loaded once, engine set
        report = summary["metrics"]
        render.console(stderr=True).print(f"report: {path}", highlight=False, soft_wrap=True)
    else:
        report = clf.evaluate(data)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    render.print_report(report)


@app.command()
def backbones(
    stages: Optional[str] = typer.Option(None, help="Show the freezable stages of this backbone."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """List available backbones and which work offline right now."""
    from rich.table import Table

    console = render.console(stderr=False)
    if stages:
        from headstart.encoders import get_backbone
        from headstart.encoders.cut import stage_summary

        # Stages are the architecture's: no need to download timm weights to list them.
        bb = get_backbone(stages, pretrained=False) if stages.startswith("timm:") else get_backbone(stages)
        if as_json:
            rows = render.text_stage_rows(bb) if bb.modality == "text" else stage_summary(bb.module, bb.stages)
            print(json.dumps({"spec": bb.spec, "modality": bb.modality, "num_features": bb.num_features,
                              "stages": rows}, indent=2))
            return
        if bb.modality == "text":
            render.print_text_stages(console, bb)
            return
        t = Table("#", "stage", "params", "output channels", "backbone params with --cut-stage #",
                  title=f"{bb.spec}: {bb.num_features} features, input {bb.preprocess.input_size}px")
        for r in stage_summary(bb.module, bb.stages):
            t.add_row(str(r["index"]), r["name"], f"{r['params']:,}", str(r["channels"] or "-"), f"{r['params_if_cut']:,}")
        console.print(t)
        console.print("--freeze-stages K freezes stages 0..K-1; --cut-stage K keeps stages 0..K and drops the rest "
                      "(features = that stage's pooled output channels).")
        return
    from headstart.encoders import list_backbones

    if as_json:
        print(json.dumps(list_backbones(), indent=2))
        return
    t = Table("backbone", "weights", "offline now", "how")
    for row in list_backbones():
        t.add_row(row["spec"], row["weights"], "yes" if row["offline"] else "no", row["how"])
    console.print(t)


@app.command()
def rank(
    data: str = typer.Argument(..., help="Labelled data: class folders or a CSV (path,label)."),
    backbones_: str = typer.Option("timm:tf_efficientnet_lite0,timm:tf_efficientnet_lite1,timm:tf_efficientnet_lite2",
                                   "--backbones", help="Comma-separated candidates."),
    max_images: int = typer.Option(1000, help="Score on a stratified subsample of at most this many images."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """Rank pretrained backbones for your data by transferability (LogME, LEEP, NCE, H-score, k-NN)."""
    from rich.table import Table

    from headstart.assess.rank import rank as rank_backbones
    from headstart.assess.rank import recommendation

    rows = rank_backbones(data, [b.strip() for b in backbones_.split(",") if b.strip()], max_images=max_images)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    fmt = lambda r, k: f"{r[k]:.3f} ± {r[k + '_std']:.3f}" if k in r else "-"  # noqa: E731
    table = Table("backbone", "LogME", "LEEP", "NCE", "H-score", "k-NN acc", "linear acc", "params", "img/s",
                  title=f"transferability on {rows[0]['n_images'] if rows else 0} "
                  f"{'texts' if 'leep' not in (rows[0] if rows else {}) else 'images'} (higher is better)")
    for r in rows:
        table.add_row(r["backbone"], fmt(r, "logme"), fmt(r, "leep"), fmt(r, "nce"), fmt(r, "hscore"),
                      f"{r['knn_acc']:.3f}", f"{r['linear_acc']:.3f}", f"{r['params_m']}M",
                      "cached" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}")
    console = render.console(stderr=False)
    console.print(table)
    console.print(recommendation(rows))


@app.command()
def plan(
    data: str = typer.Argument(..., help="Labelled data: class folders or a CSV (path,label)."),
    backbone: str = typer.Option("timm:tf_efficientnet_lite0", help="The pretrained backbone to profile."),
    max_images: int = typer.Option(600, help="Profile on a stratified subsample of at most this many images."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Per-stage profile and the recommended strategy: features, freeze depth, learning-rate ratio."""
    from dataclasses import asdict

    from rich.table import Table

    from headstart.assess.plan import plan_for_data
    from headstart.data import as_examples
    from headstart.encoders import get_backbone

    bb = get_backbone(backbone)
    if bb.modality == "text":
        from headstart.errors import HeadstartError

        raise HeadstartError("`headstart plan` profiles the stages of image backbones; for text, compare "
                             "backbones with `headstart rank DATA --backbones hf:...,vectors:...` and start "
                             "with --strategy linear-probe.")
    ex = as_examples(data)
    rows, the_plan = plan_for_data(ex, bb, max_images=max_images)
    if as_json:
        print(json.dumps({"profile": [asdict(r) for r in rows], "plan": the_plan.to_dict()}, indent=2))
        return
    table = Table("#", "stage", "channels", "LogME", "linear acc", "domain distance", "plan",
                  title=f"{backbone}: per-stage profile (domain distance: 0 = like natural photos, 2 = unlike)")
    cut = the_plan.cut_stage
    for r in rows:
        role = ("dropped" if cut is not None and r.index > cut else
                "frozen" if r.index < the_plan.freeze_stages else "fine-tuned")
        if r.index == cut:
            role += ", cut here"
        table.add_row(str(r.index), r.name, str(r.channels), f"{r.logme:.3f}", f"{r.linear_acc:.3f}",
                      f"{r.domain_distance:.2f}", role)
    console = render.console(stderr=False)
    console.print(table)
    cut = "" if the_plan.cut_stage is None else f" --cut-stage {the_plan.cut_stage}"
    console.print(f"[bold]plan:[/bold] --strategy {the_plan.strategy} --freeze-stages {the_plan.freeze_stages} "
                  f"--backbone-lr-ratio {the_plan.backbone_lr_ratio}{cut}")
    for reason in the_plan.reasons:
        console.print(f"  - {reason}")


@app.command()
def discover(
    pool: str = typer.Argument(..., help="Unlabelled data: a folder of images (flat or nested), a CSV of image "
                               "paths, or for hf:/vectors: backbones a text table (CSV, TSV, JSONL, JSON, Parquet)."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, help="Pretrained backbone, or a run directory written by "
                                 "`headstart train` (its fine-tuned backbone); hf:/vectors: read texts."),
    k: Optional[int] = typer.Option(None, "--k", help="Number of groups (default: estimated)."),
    k_min: int = typer.Option(2, help="Smallest number of groups tried when K is estimated."),
    k_max: int = typer.Option(30, help="Largest number of groups tried when K is estimated."),
    stage: str = typer.Option("auto", help="Image representation: auto (the most cohesive of the last stages "
                              "and sizes), pooled, or a stage name from `headstart backbones --stages`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write discovery.json, groups.csv and contact "
                                       "sheets here."),
    export_folders: Optional[Path] = typer.Option(None, help="Copy the pool into one folder per group (texts: "
                                                  "a labelled texts.csv) to rename, correct and train on."),
    link: bool = typer.Option(False, "--link", help="With --export-folders: symlink images instead of copying."),
    text_column: Optional[str] = typer.Option(None, help="Text tables: the column with the texts."),
    path_column: str = typer.Option("path", help="Image CSVs: the column with image paths."),
    seed: int = typer.Option(0, help="Seed of the reduction and clustering (same seed, same groups)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also group the raw inputs (pixels or "
                                  "TF-IDF) to show what the pretrained features bought."),
    pretrained: bool = typer.Option(True, "--pretrained/--random-init", help="Pretrained weights (default) or "
                                    "random ones (a control: what pretraining bought)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Find the groups in unlabelled images or texts (K estimated unless --k), with a baseline beside them."""
    from headstart.discover import discover as run_discover

    grouping = run_discover(pool, backbone=backbone, k=k, k_min=k_min, k_max=k_max, stage=stage, seed=seed,
                            baseline=baseline, text_column=text_column, path_column=path_column,
                            pretrained=pretrained)
    if out is not None:
        grouping.save(out)
    if export_folders is not None:
        grouping.export_folders(export_folders, link=link)
    if as_json:
        print(json.dumps(grouping.to_dict(), indent=2))
        return
    render.print_grouping(render.console(stderr=False), grouping, out=out, export=export_folders)


@app.command()
@with_config_options(DistillConfig, into="settings")
@with_config_options(TrainConfig)
def distill(
    run: Path = typer.Argument(..., help="The teacher: a run directory written by `headstart train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory of the student (default: a new "
                                       "runs/run-YYYYMMDD-HHMMSS; a finished run there is never replaced without "
                                       "--overwrite)."),
    data: Optional[str] = typer.Option(None, help="Labelled data (default: the teacher's training data, as its "
                                       "run recorded it; split as the teacher split it)."),
    val: Optional[str] = typer.Option(None, help="Validation folder/table, if the teacher was trained with one."),
    unlabeled: Optional[str] = typer.Option(None, help="Unlabelled images (a folder, flat or nested, or a CSV of "
                                            "paths) or texts (a table) for the teacher to label for the student."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    resume: bool = typer.Option(False, "--resume", help="Continue this --out distillation (same options)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished (or interrupted) run in --out."),
    settings: DistillConfig = None,
    config: TrainConfig = None,
):
    """Distil a trained run (the teacher) into a smaller, faster student; the student is a normal run.

    Training options left at their defaults take the student's own: a scratch: student trains every layer
    for 30 epochs at lr 2e-3, batch 64; a pretrained one the usual two-stage schedule. Augmentation is the
    --views (teacher and student see the same views).
    """
    defaults = TrainConfig().to_dict()
    args = {"run": str(run), "out": str(out or _fresh_out()), "data": data, "val": val, "unlabeled": unlabeled,
            "settings": settings.to_dict(),
            "options": {k: v for k, v in config.to_dict().items() if v != defaults[k]}}  # what the user set
    _run_distill(args, resume=resume, quiet=quiet, overwrite=overwrite)


def _run_distill(args: dict, resume: bool, quiet: bool, overwrite: bool = False) -> None:
    from headstart.estimator import load
    from headstart.io.run import DISTILL_ARGS

    out = Path(args["out"])
    settings = dict(args["settings"])
    student = settings.pop("student")
    console = render.console()
    with _run_folder(out, DISTILL_ARGS, args, resume=resume, overwrite=overwrite), \
            _interruptible(out, console), render.show_logs(console, quiet), EpochProgress(console, quiet) as progress:
        teacher = load(args["run"])
        result = teacher.distill(student, data=args["data"], validation=args["val"], unlabeled=args["unlabeled"],
                                 out=out, progress=progress, resume=resume, **settings, **args["options"])
    render.print_fit_summary(console, result.run_, result.fit_seconds_)
    render.print_distillation(console, result.run_)


@app.command()
@with_config_options(AdaptConfig, into="settings")
def adapt(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train` (the source model)."),
    target: str = typer.Argument(..., help="Unlabelled examples of where the model will be used: a folder of "
                                 "images (flat or nested), a CSV of image paths, or a text table (any label "
                                 "column is ignored)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory of the adapted model (default: a "
                                       "new runs/run-YYYYMMDD-HHMMSS; a finished run there is never replaced "
                                       "without --overwrite)."),
    data: Optional[str] = typer.Option(None, help="The source's labelled data (default: the run's training data, "
                                       "as it recorded it; split as the fit split it)."),
    val: Optional[str] = typer.Option(None, help="The source validation folder/table, if the run was trained "
                                      "with one."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out."),
    settings: AdaptConfig = None,
):
    """Adapt a trained run to a shifted target domain from unlabelled target examples.

    Every method that applies is tried and scored without target labels; one is kept only when the scores
    agree it beats the source model, else the adapted run holds the source model. `headstart evaluate`
    on labelled target data measures the result.
    """
    from headstart.estimator import load

    console = render.console()
    with render.show_logs(console, quiet):
        result = load(run).adapt(target, data=data, validation=val, out=out or _fresh_out(), overwrite=overwrite,
                                 **settings.to_dict())
    render.print_adaptation(render.console(stderr=False), result.adaptation_, result.run_.path)


@app.command()
def audit(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train` or `headstart distill`."),
    data: str = typer.Argument(..., help="Labelled test images (a class-per-folder directory or a CSV)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to save the result (default: "
                                       "RUN/audit.json)."),
    eps: str = typer.Option("2/255,4/255,8/255", help="L-inf budgets in [0, 1] pixel units, comma-separated; "
                            "fractions such as 4/255 are fine."),
    l2_eps: str = typer.Option("0.5,1.0", help="L2 budgets per image, comma-separated."),
    n: int = typer.Option(500, help="Test points attacked (a seeded draw)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer points (at most 100) and attack steps: faster, and "
                               "weaker attacks (saved as quick in the threat model)."),
    control_seconds: float = typer.Option(60.0, help="Training budget of the unrelated from-scratch control "
                                          "network (trained on the run's training data)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
):
    """What the model inherits: white-box attacks (FGSM, PGD, APGD-CE) and teacher-only attacks built on the
    public pretrained backbone alone, with random-noise and unrelated-network controls and sanity checks."""
    from headstart.audit import audit as run_audit
    from headstart.estimator import load

    clf = load(run)
    console = render.console()
    with render.show_logs(console, quiet=as_json):
        result = run_audit(clf, data, eps=_budgets(eps, "--eps"), l2_eps=_budgets(l2_eps, "--l2-eps"), n=n,
                           quick=quick, control_seconds=control_seconds, seed=seed)
    path = result.save(out or Path(run) / "audit.json")
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    render.print_audit(render.console(stderr=False), result, path)


def _budgets(text: str, flag: str) -> tuple[float, ...]:
    from fractions import Fraction

    from headstart.errors import HeadstartError

    try:
        values = tuple(float(Fraction(v.strip())) for v in text.split(",") if v.strip())
    except (ValueError, ZeroDivisionError):
        raise HeadstartError(f"{flag} {text!r}: give numbers or fractions, comma-separated (e.g. 2/255,8/255).")
    if not values or any(v < 0 for v in values):
        raise HeadstartError(f"{flag} {text!r}: give at least one budget, none negative.")
    return values


@app.command("export")
@with_config_options(ExportConfig)
def export_run(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train` or `headstart distill`."),
    out: Path = typer.Option(..., "--out", "-o", help="An .onnx file (or a folder for model.onnx); for "
                             "--format openvino a folder (model.xml, model.bin). export.json is written beside."),
    data: Optional[str] = typer.Option(None, help="Real inputs for the parity check (default: the run's training "
                                       "data, when that file or folder exists here)."),
    as_json: bool = typer.Option(False, "--json", help="Print export.json instead of a summary."),
    config: ExportConfig = None,
):
    """Export a run for serving: uint8 images (or token ids) in, logits and probabilities out, any batch.

    The export fails, and leaves no model, unless the exported graph matches the PyTorch model on
    --parity-inputs real inputs to --tolerance (max |logit difference|) with every top-1 class the same.
    """
    from headstart.export import export

    result = export(run, out, config, data=data)
    if as_json:
        print(json.dumps(result.report, indent=2))
        return
    render.print_export(render.console(stderr=False), result)


@app.command()
@with_config_options(ServeConfig)
def serve(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train` or `headstart distill`."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
    config: ServeConfig = None,
):
    """Serve a run over HTTP: POST /predict, GET /health, /metadata, OpenAPI at /docs, a web page at /.

    Inputs from concurrent requests share model calls (dynamic batching, --max-batch, --max-wait-ms). Bind
    anything but loopback only with --token; bodies over --max-body-mb get 413.
    """
    from headstart.serve import serve as run_server

    run_server(run, config, access_log=access_log)


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train` or `headstart distill`."),
    data: Optional[str] = typer.Argument(None, help="Labelled test data (class folders or a table); default: the "
                                         "run's validation split, whose predictions the fit saved."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The HTML file (default RUN/report.html)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Store the temperature fitted on the validation split "
                                   "in the run: its predictions (predict, evaluate, serve) use it from then on."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a line."),
):
    """One self-contained HTML page: summary, learning curves, confusion matrix, per-class scores, the most
    confused pairs, top losses, calibration, baselines. One prediction pass per data set, cached in the run."""
    from headstart.report import write_report

    path, summary = write_report(run, data, out=out, calibrate=calibrate)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    ece = f", ECE {summary['ece']:.3f}" + (f" → {summary['ece_calibrated']:.3f} at T={summary['temperature']:.2f}"
                                          if summary.get("temperature") else "")
    render.console(stderr=False).print(f"report: {path} ({summary['evaluated_on']}, {summary['n']:,} examples, "
                                       f"accuracy {summary['accuracy']:.4f}{ece})", highlight=False,
                                       soft_wrap=True)


@app.command()
def demo(
    per_class: int = typer.Option(100, help="Labelled training images per class."),
    test_limit: int = typer.Option(0, help="Evaluate on only the first N test images (0 = all 10,000)."),
    out: Path = typer.Option(Path("runs/demo"), help="Where to save the two runs (OUT/linear-probe, OUT/two-stage; "
                             "a second demo replaces them)."),
):
    """The main job: Lite0 ImageNet weights on Fashion-MNIST with 100 labels per class."""
    from headstart.cli.demo import run_demo

    run_demo(per_class=per_class, test_limit=test_limit, out=out)


@contextlib.contextmanager
def _run_folder(out: Path, args_file: str, args: dict, *, resume: bool, overwrite: bool, main: bool = True):
    """The --out folder of `train` / `distill`: a finished or interrupted run there is refused unless
    --overwrite (which clears it), the command's arguments are saved for `headstart resume`, and a start
    that fails before anything resumable exists leaves no half-made folder behind."""
    from headstart.io.run import clear_run, discard_unfinished, refuse_to_replace
    from headstart.storage import check_writable, write_json

    refuse_to_replace(out, resume=resume, overwrite=overwrite, cli=True)
    created = not out.exists()
    check_writable(out)
    if main:
        if overwrite:
            clear_run(out)  # before the arguments are written: those are this run's
        if not resume:
            write_json(out / args_file, args)
    try:
        yield
    except BaseException:  # a checkpoint or finished stages are kept for resume
        if main:
            discard_unfinished(out, created)
        raise


@contextlib.contextmanager
def _interruptible(out: Path, console):
    """Ctrl-C or SIGTERM while training: one line saying what was saved and the exact resume command."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/yellow] {render.interrupted(out)}", highlight=False)
        sys.exit(130)


def main() -> None:
    """Entry point: user errors become one clean line on stderr and exit code 2, never a traceback."""
    import signal

    from headstart.errors import HeadstartError
    from headstart.train.interrupt import request_stop

    # SIGTERM (a scheduler, `kill`) ends a run the way Ctrl-C does; both also leave a stop request
    # that the training loop checks, in case the KeyboardInterrupt lands where Python swallows it.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        app()
    except HeadstartError as exc:
        render.console().print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        render.console().print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
