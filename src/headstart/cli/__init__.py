"""The ``headstart`` command: a thin layer over the Python API.

Only typer is imported at start-up; torch and friends load inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from headstart.cli.progress import EpochProgress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning in one command: fine-tune pretrained models on your data.")


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr)


@app.command()
def train(
    data: str = typer.Argument(..., help="Images: a folder with one subfolder per class, or a CSV (path,label). "
                               "Texts (hf:/vectors: backbones): a CSV, TSV, JSONL, JSON or Parquet file."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Run directory to write."),
    backbone: str = typer.Option("timm:tf_efficientnet_lite0", help="Pretrained backbone (see `headstart backbones`)."),
    strategy: str = typer.Option("two-stage", help="linear-probe | partial | full | two-stage | auto (runs `headstart plan`)"),
    freeze_stages: Optional[int] = typer.Option(None, help="partial: stages kept frozen; two-stage: unfreeze from this stage."),
    epochs: int = typer.Option(8, help="Epochs while the backbone trains."),
    head_epochs: int = typer.Option(40, help="Epochs of head-only training (on cached features)."),
    head_min_steps: int = typer.Option(500, help="At least this many optimizer steps of head-only training."),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(1e-3, help="Learning rate of the new head."),
    backbone_lr_ratio: float = typer.Option(0.1, help="Backbone LR = lr x this."),
    layer_decay: Optional[float] = typer.Option(None, help="Per-stage LR decay from the top (default 0.8 two-stage)."),
    val: Optional[str] = typer.Option(None, help="Validation folder/CSV (default: a stratified split)."),
    val_fraction: float = typer.Option(0.2),
    augment: bool = typer.Option(True, help="Random flip + resized crop while the backbone trains."),
    precision: str = typer.Option("auto", help="auto | bf16 | fp32"),
    seed: int = typer.Option(0),
    strict: bool = typer.Option(False, help="Fail on unreadable images instead of skipping them."),
    path_column: str = typer.Option("path", help="CSV column with image paths."),
    label_column: Optional[str] = typer.Option(None, help="Column with labels (default: label; for text also "
                                               "labels, target or class)."),
    text_column: Optional[str] = typer.Option(None, help="Text data: column with the texts (default: text, or "
                                              "the only text column)."),
    pooling: Optional[str] = typer.Option(None, help="Text backbones: mean | cls | max (hf:), mean | tfidf "
                                          "(vectors:); default: the model's own configuration, else mean."),
    max_length: Optional[int] = typer.Option(None, help="Text backbones: tokens per text (default: the model's own)."),
    pretrained: bool = typer.Option(True, "--pretrained/--random-init", help="Start from pretrained weights (default) or from scratch."),
    allow_unsafe_pickle: bool = typer.Option(False, "--allow-unsafe-pickle",
                                             help="Let file: backbones unpickle arbitrary objects. Only for files you trust."),
    cut_stage: Optional[int] = typer.Option(None, help="Keep backbone stages 0..K, drop the ones above "
                                            "(see `headstart plan`; --strategy auto sets it)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="Compare with a linear probe and a from-scratch model trained for the same time."),
    baseline_seconds: Optional[float] = typer.Option(None, help="Time budget of the from-scratch model "
                                                     "(default: the transfer model's training time)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    resume: bool = typer.Option(False, "--resume", help="Continue this --out run from its last checkpoint."),
):
    """Fine-tune a pretrained backbone on labelled images and save the run."""
    args = dict(locals())
    args["out"] = str(out)
    _run_train(args, resume=resume)


@app.command()
def resume(run: Path = typer.Argument(..., help="The --out directory of an interrupted `headstart train`.")):
    """Continue a killed or interrupted training run from its last checkpoint."""
    from headstart.errors import HeadstartError
    from headstart.io.run import TRAIN_ARGS

    path = run / TRAIN_ARGS
    if not path.is_file():
        raise HeadstartError(f"{str(run)!r} has no {TRAIN_ARGS}; it was not started by `headstart train`.")
    args = json.loads(path.read_text())
    args["out"] = str(run)
    _run_train(args, resume=True)


def _run_train(args: dict, resume: bool) -> None:
    from headstart.config import TrainConfig
    from headstart.estimator import TransferClassifier
    from headstart.io.run import TRAIN_ARGS
    from headstart.storage import check_writable, write_json

    names = ("strategy", "freeze_stages", "epochs", "head_epochs", "head_min_steps", "batch_size", "lr", "backbone_lr_ratio",
             "layer_decay", "val_fraction", "augment", "precision", "seed", "strict", "cut_stage", "baselines",
             "baseline_seconds")
    cfg = TrainConfig(**{k: args[k] for k in names if k in args})  # train_args.json of older runs lack some
    out = Path(args["out"])
    console = _console()
    clf = TransferClassifier(args["backbone"], strategy=cfg.strategy, config=cfg, pretrained=args["pretrained"],
                             allow_unsafe_pickle=args.get("allow_unsafe_pickle", False),
                             path_column=args["path_column"], text_column=args.get("text_column"),
                             label_column=args.get("label_column"), pooling=args.get("pooling"),
                             max_length=args.get("max_length"))
    x, validation = args["data"], args["val"]  # read (and checked) by the run's modality in fit
    check_writable(out)
    if not resume:
        write_json(out / TRAIN_ARGS, {k: v for k, v in args.items() if k not in ("quiet", "resume")})
    with EpochProgress(console, args.get("quiet", False)) as progress:
        clf.fit(x, validation=validation, out=out, progress=progress, resume=resume)
    _print_fit_summary(console, clf, out)


def _print_fit_summary(console, clf, out) -> None:
    m = clf.final_metrics_()
    skipped = clf.data_info_["n_skipped"]
    kind = clf.modality_.noun
    console.print(f"[green]saved[/green] {out}  ({clf.data_info_['n_train']} train / {clf.data_info_['n_val']} val {kind}, "
                  f"{len(clf.classes_)} classes, {clf.fit_seconds_:.1f}s, "
                  f"{clf.history_.precision} training / {clf.history_.inference_precision} inference)")
    if "val_acc" in m:
        console.print(f"best validation accuracy {m['val_acc']:.4f} ({m['phase']} epoch {m['epoch']})")
    if skipped:
        console.print(f"[yellow]skipped {skipped} unusable {kind[:-1]}(s):[/yellow]")
        for name, why in clf.data_info_["skipped"][:10]:
            console.print(f"  {name}: {why}")
    _print_baselines(console, getattr(clf, "baselines_", None))


def _print_baselines(console, rep) -> None:
    if not rep:
        return
    if "skipped" in rep:
        console.print(f"baselines: {rep['skipped']}")
        return
    if "tfidf_logreg" in rep:  # a text run: the no-pretraining baseline is TF-IDF + logistic regression
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        console.print(f"validation accuracy: transfer {fmt(rep['transfer']['val_acc'])} | linear probe "
                      f"{fmt(rep['linear_probe']['val_acc'])} | TF-IDF + logistic regression "
                      f"{fmt(rep['tfidf_logreg']['val_acc'])} on {rep['n_val']} texts")
        for w in rep["warnings"]:
            console.print(f"[bold red]WARNING:[/bold red] {w}", highlight=False)
        return
    lp, sc = rep["linear_probe"], rep["scratch"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    console.print(f"validation accuracy: transfer {fmt(rep['transfer']['val_acc'])} | linear probe {fmt(lp['val_acc'])} "
                  f"| from scratch {fmt(sc['val_acc'])} ({sc['epochs']} epochs, {sc['seconds']:.0f}s at "
                  f"{sc['input_size']}px) on {rep['n_val']} images")
    if rep["compute_saved"].get("summary"):
        console.print(f"compute saved: {rep['compute_saved']['summary']}", highlight=False)
    for w in rep["warnings"]:
        console.print(f"[bold red]WARNING:[/bold red] {w}", highlight=False)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train`."),
    inputs: Optional[List[str]] = typer.Argument(None, help="Image files or folders; for a text run, the texts."),
    input_file: Optional[str] = typer.Option(None, "--input", help="A file of inputs: for a text run a CSV, TSV, "
                                             "JSONL, JSON, Parquet or TXT file; for images a folder or a CSV of paths."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the predictions to this .csv or .jsonl "
                                          "file instead of printing JSON lines."),
    text_column: Optional[str] = typer.Option(None, help="Column with the texts in --input (default: the training one)."),
    path_column: str = typer.Option("path", help="CSV column with image paths in --input."),
    top: int = typer.Option(0, help="Only the top-N class probabilities (0 = all)."),
):
    """One prediction per input (label and class probabilities), as JSON lines or into --output."""
    from headstart.errors import DataError
    from headstart.estimator import load

    if not inputs and not input_file:
        raise DataError("Nothing to predict: pass inputs after the run directory, or --input FILE.")
    clf = load(run)
    if clf.modality_.name == "text":
        rows, failed = _predict_texts(clf, inputs, input_file, text_column)
    else:
        rows, failed = _predict_images(clf, inputs, input_file, path_column)
    for r in rows:
        if "probabilities" in r and top:
            r["probabilities"] = dict(sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:top])
    _write_predictions(rows, output)
    if failed:
        raise typer.Exit(1)


def _predict_texts(clf, inputs, input_file, text_column) -> tuple[list[dict], int]:
    from headstart.data.texts import load_texts

    sources = ([load_texts(input_file, text_column=text_column or clf.text_column, label_column=False)]
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


def _write_predictions(rows: list[dict], output: Path | None) -> None:
    """JSON lines on stdout, or a .jsonl / .csv file (one probability column per class)."""
    if output is None or output.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if output is None:
            sys.stdout.write(text)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
        return
    import csv

    classes = list(dict.fromkeys(c for r in rows for c in r.get("probabilities", {})))
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "probabilities"))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(keys + [f"p_{c}" for c in classes])
        for r in rows:
            probs = r.get("probabilities", {})
            w.writerow([r.get(k, "") for k in keys] + [probs.get(c, "") for c in classes])
    _console().print(f"wrote {len(rows)} predictions to {output}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run directory written by `headstart train`."),
    data: str = typer.Argument(..., help="Labelled test data: class folders or a CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
):
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on labelled test data."""
    from headstart.estimator import load

    clf = load(run)
    report = clf.evaluate(data)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print_report(report)


def _print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"accuracy [bold]{report['accuracy']:.4f}[/bold]  macro-F1 {report['macro_f1']:.4f}  "
                  f"({report['n']} examples, {report['n_skipped']} skipped)")
    table = Table("class", "precision", "recall", "F1", "support")
    for c, m in report["per_class"].items():
        table.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    cm = Table("true \\ predicted", *[c[:10] for c in report["classes"]], title="confusion matrix")
    for c, row in zip(report["classes"], report["confusion_matrix"]):
        cm.add_row(c[:16], *[str(v) for v in row])
    console.print(cm)


@app.command()
def backbones(
    stages: Optional[str] = typer.Option(None, help="Show the freezable stages of this backbone."),
):
    """List available backbones and which work offline right now."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if stages:
        from headstart.encoders import get_backbone
        from headstart.encoders.cut import stage_summary

        bb = get_backbone(stages)
        if bb.modality == "text":
            _print_text_stages(console, bb)
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

    t = Table("backbone", "weights", "offline now", "how")
    for row in list_backbones():
        t.add_row(row["spec"], row["weights"], "yes" if row["offline"] else "no", row["how"])
    console.print(t)


def _print_text_stages(console, bb) -> None:
    from rich.table import Table

    t = Table("#", "stage", "params", title=f"{bb.spec}: {bb.num_features} features, up to "
              f"{bb.preprocess.max_length} tokens, {bb.preprocess.pooling} pooling")
    params = dict(bb.module.named_parameters())
    for i, s in enumerate(bb.stages):
        t.add_row(str(i), s.name, f"{sum(params[n].numel() for n in s.param_names):,}")
    console.print(t)
    console.print("--freeze-stages K freezes stages 0..K-1 (embeddings first).")


@app.command()
def rank(
    data: str = typer.Argument(..., help="Labelled data: class folders or a CSV (path,label)."),
    backbones_: str = typer.Option("timm:tf_efficientnet_lite0,timm:tf_efficientnet_lite1,timm:tf_efficientnet_lite2",
                                   "--backbones", help="Comma-separated candidates."),
    max_images: int = typer.Option(1000, help="Score on a stratified subsample of at most this many images."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """Rank pretrained backbones for your data by transferability (LogME, LEEP, NCE, H-score, k-NN)."""
    from rich.console import Console
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
    console = Console()
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

    from rich.console import Console
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
    console = Console()
    console.print(table)
    cut = "" if the_plan.cut_stage is None else f" --cut-stage {the_plan.cut_stage}"
    console.print(f"[bold]plan:[/bold] --strategy {the_plan.strategy} --freeze-stages {the_plan.freeze_stages} "
                  f"--backbone-lr-ratio {the_plan.backbone_lr_ratio}{cut}")
    for reason in the_plan.reasons:
        console.print(f"  - {reason}")


@app.command()
def demo(
    per_class: int = typer.Option(100, help="Labelled training images per class."),
    test_limit: int = typer.Option(0, help="Evaluate on only the first N test images (0 = all 10,000)."),
    out: Path = typer.Option(Path("runs/demo"), help="Where to save the two runs."),
):
    """The main job: Lite0 ImageNet weights on Fashion-MNIST with 100 labels per class."""
    from headstart.cli.demo import run_demo

    run_demo(per_class=per_class, test_limit=test_limit, out=out)


def main() -> None:
    """Entry point: user errors become one clean line on stderr and exit code 2, never a traceback."""
    from headstart.errors import HeadstartError

    try:
        app()
    except HeadstartError as exc:
        _console().print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
