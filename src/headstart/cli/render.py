"""What the command line prints: fit summaries, baseline comparisons, evaluation reports, predictions.

Renderers read the fitted estimator or the typed run; the demo uses these same public functions.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

# Width of output that is not a terminal (a pipe, a log file): wide enough that tables keep full names
# (rich would wrap and cut them at 80 columns: `headstart backbones | cat` read `timm:tf_efficientn…`).
PIPE_WIDTH = 400


def console(stderr: bool = True):
    """A rich console on stderr (progress, summaries) or stdout (tables asked for); $COLUMNS wins."""
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=PIPE_WIDTH if piped else None)


@contextlib.contextmanager
def show_logs(console, quiet: bool):
    """headstart's log lines on ``console`` while a command runs: what ``auto`` plans, what the baselines
    train, what distillation tries (INFO), and every warning; only warnings with ``--quiet``."""
    import logging

    from rich.markup import escape

    class _ToConsole(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                prefix = "[yellow]warning:[/yellow] " if record.levelno >= logging.WARNING else ""
                console.print(prefix + escape(record.getMessage()), highlight=False, soft_wrap=True)
            except Exception:  # noqa: BLE001 - logging must never break the run
                self.handleError(record)

    logger = logging.getLogger("headstart")
    handler = _ToConsole(logging.WARNING if quiet else logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    if not quiet and (level == logging.NOTSET or level > logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def print_fit_summary(console, run, fit_seconds: float) -> None:
    """What a finished ``train`` saved, read back from the run directory (a :class:`~headstart.io.run.Run`)."""
    m, data, history = run.metrics, run.data, run.meta["history"]
    kind = "images" if run.modality == "image" else "texts"
    console.print(f"[green]saved[/green] {run.path}  ({data.n_train} train / {data.n_val} val {kind}, "
                  f"{len(run.classes)} classes, {fit_seconds:.1f}s, "
                  f"{history['precision']} training / {history['inference_precision']} inference)")
    if "val_acc" in m and "phase" in m:
        console.print(f"best validation accuracy {m['val_acc']:.4f} ({m['phase']} epoch {m['epoch']})")
    elif "val_acc" in m and "supervised" in m:
        console.print(f"validation accuracy {m['val_acc']:.4f} ({m.get('model')}, trained with the unlabelled pool)")
    elif "val_acc" in m:
        console.print(f"validation accuracy {m['val_acc']:.4f} ({m.get('model')}, kept by --strategy auto)")
    if data.n_skipped:
        console.print(f"[yellow]skipped {data.n_skipped} unusable {kind[:-1]}(s):[/yellow]")
        for name, why in data.skipped[:10]:
            console.print(f"  {name}: {why}")
    print_baselines(console, run.meta.get("baselines"))
    print_selection(console, run.meta.get("selection"))
    print_hardening(console, run.meta.get("hardening"))
    print_semi_supervised(console, run.meta.get("semi_supervised"))
    print_target_adaptation(console, run.meta.get("target_adaptation"))


def print_semi_supervised(console, record) -> None:
    """``--unlabeled``: each method's validation accuracy beside the supervised head's, and what was kept."""
    if not record:
        return
    dropped = (f", {record['n_dropped_labelled']} copies of labelled examples dropped"
               if record["n_dropped_labelled"] else "")
    if record["method"] == "fixmatch":
        rate = "-" if record["mask_rate"] is None else f"{100 * record['mask_rate']:.0f} %"
        console.print(f"unlabelled pool: {record['n_used']:,} used of {record['n_pool']:,}{dropped}; FixMatch while "
                      f"the backbone trained: {rate} of the drawn pool images were confident enough "
                      f"(>= {record['threshold']}) to be pseudo-labelled", highlight=False)
        return
    console.print(f"unlabelled pool: {record['n_used']:,} used of {record['n_pool']:,}{dropped} "
                  f"(embedded in {record['embed_seconds']:.0f}s)", highlight=False)
    rows = " | ".join(f"{c['name']} {c['val_acc']:.4f} ({c['n_pseudo']:,} pseudo-labels)" if c["val_acc"] is not None
                      else f"{c['name']} ({c['n_pseudo']:,} pseudo-labels)" for c in record["candidates"])
    console.print(f"  validation: {rows}", highlight=False)
    console.print(f"  [bold]kept: {record['method']}[/bold] — {record['reason']}", highlight=False)


def print_target_adaptation(console, record) -> None:
    """``train --target``: what aligned the domains, and the label-free scores before and after."""
    if not record:
        return
    console.print(f"target: {record['n_target_used']:,} of {record['n_target']:,} examples aligned by "
                  f"{record['objective']} (weight {record['weight']:g})", highlight=False)
    cmp = record.get("comparison") or {}
    if "skipped" in cmp:
        console.print(f"  label-free comparison skipped: {cmp['skipped']}", highlight=False)
        return
    fmt = (lambda v: "-" if v is None else f"{v:.4f}")  # noqa: E731
    for name, s in cmp["scores"].items():
        console.print(f"  {name}: entropy {fmt(s.get('entropy'))}, IM {fmt(s.get('im'))}, SND {fmt(s.get('snd'))}, "
                      f"ClassAMI {fmt(s.get('class_ami'))}, DEV {fmt(s.get('dev'))}", highlight=False)
    verdict = "estimated better than" if cmp["estimated_better"] else "[bold]not estimated better[/bold] than"
    console.print(f"  adapted model {verdict} source-only: {cmp['reason']}", highlight=False)
    console.print(f"  [bold]kept: {record['kept']}[/bold]", highlight=False)


def print_adaptation(console, record, path) -> None:
    """``adapt``: every candidate's label-free scores beside source-only's, the decision, and where it went."""
    from rich.table import Table

    console.print(f"target: {record['n_target_used']:,} of {record['n_target']:,} examples; source: "
                  f"{record['n_source']:,} training, {record['n_source_val']:,} validation", highlight=False)
    abstained = record.get("abstained") or {}
    of = 5 - len(abstained)
    table = Table("method", "entropy (lower)", "IM (higher)", "SND (higher)", "ClassAMI (higher)", "DEV risk (lower)",
                  "source val acc", "votes", title="label-free scores on the target")
    for name, s in record["scores"].items():
        fmt = (lambda v: "-" if v is None else f"{v:.4f}")  # noqa: E731
        votes = "" if name == "source-only" else f"{record['votes'].get(name, '-')}/{of}" if record["votes"] else ""
        table.add_row(name, fmt(s.get("entropy")), fmt(s.get("im")), fmt(s.get("snd")), fmt(s.get("class_ami")),
                      fmt(s.get("dev")), fmt(s.get("source_val_acc")), votes)
    console.print(table)
    for score, why in abstained.items():
        console.print(f"  {score} did not vote: {why}", highlight=False)
    for name, why in record["not_applicable"].items():
        console.print(f"  not tried: {name} ({why})", highlight=False)
    console.print(f"[bold]kept: {record['method']}[/bold] — {record['reason']}", highlight=False)
    console.print(f"saved {path} ({record['seconds']:.0f}s); measure it with `headstart evaluate {path} TARGET_TEST`",
                  highlight=False)


def print_selection(console, selection) -> None:
    """``--strategy auto``: every candidate on the same validation examples, and which one was saved."""
    if not selection:
        return
    rows = " | ".join(f"{c['name']} {c['val_acc']:.4f} ({c['seconds']:.0f}s)" for c in selection["candidates"])
    console.print(f"auto candidates on {selection['n_val']} validation examples: {rows}", highlight=False)
    console.print(f"[bold]kept: {selection['winner']}[/bold] — {selection['reason']}", highlight=False)


def print_hardening(console, record) -> None:
    """``--harden``: the defence that ran, and what it measured on the validation split."""
    if not record:
        return
    console.print(f"hardened ({record['method']}): {record['what']}", highlight=False)
    val = record.get("validation") or {}
    if val:
        console.print(f"  on {val['n']} validation images: accuracy {val['val_acc']:.4f}, the {val['attack']} fools "
                      f"{100 * val['teacher_only_success']:.1f} % of the ones it gets right "
                      "(`headstart audit` for the full picture)", highlight=False)


def print_baselines(console, rep) -> None:
    """One line per model on the same validation split, then what it means (the saved comparison, any modality)."""
    if not rep:
        return
    if "skipped" in rep:
        console.print(f"baselines: {rep['skipped']}")
        return
    simple = rep[rep["simple"]]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    if rep["simple"] == "scratch":
        what = (f"from scratch {fmt(simple['val_acc'])} ({simple['epochs']} epochs, {simple['seconds']:.0f}s at "
                f"{simple['input_size']}px) on {rep['n_val']} images")
    else:
        what = f"TF-IDF + logistic regression {fmt(simple['val_acc'])} on {rep['n_val']} texts"
    console.print(f"validation accuracy: transfer {fmt(rep['transfer']['val_acc'])} | linear probe "
                  f"{fmt(rep['linear_probe']['val_acc'])} | {what}")
    if (rep.get("compute_saved") or {}).get("summary"):
        console.print(f"compute saved: {rep['compute_saved']['summary']}", highlight=False)
    verdict = rep.get("verdict")  # runs saved before the paired verdict have none
    if verdict and not rep["warnings"]:  # a warning already carries the verdict's figures
        word = {"better": "transfer is better", "no difference": "no significant difference",
                "worse": "transfer is worse"}.get(verdict["outcome"], verdict["outcome"])
        console.print(f"verdict: {word}: {verdict['why']}", highlight=False)
    for w in rep["warnings"]:
        console.print(f"[bold red]WARNING:[/bold red] {w}", highlight=False)


PREDICTION_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


def prediction_format(output: Path | None) -> str:
    """What ``--output`` asks for, from its suffix; checked before predicting, not after."""
    if output is None:
        return "jsonl"
    fmt = PREDICTION_FORMATS.get(output.suffix.lower())
    if fmt is None:
        from headstart.errors import DataError

        raise DataError(f"--output {str(output)!r}: cannot tell the format from {output.suffix or 'no suffix'!r}; "
                        f"end it in one of {sorted(PREDICTION_FORMATS)} (.csv/.tsv: one p_<class> column per class).")
    return fmt


def write_predictions(rows: list[dict], output: Path | None) -> None:
    """JSON lines on stdout, or the file ``--output`` names: .jsonl/.ndjson (a JSON object per line), .json
    (one JSON array), .csv or .tsv (one probability column per class)."""
    fmt = prediction_format(output)
    if output is None:
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows))
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("jsonl", "json"):
        text = ("".join(json.dumps(r) + "\n" for r in rows) if fmt == "jsonl"
                else json.dumps(rows, indent=1) + "\n")
        output.write_text(text, encoding="utf-8")
    else:
        import csv

        classes = list(dict.fromkeys(c for r in rows for c in r.get("probabilities", {})))
        keys = list(dict.fromkeys(k for r in rows for k in r if k != "probabilities"))
        with open(output, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(keys + [f"p_{c}" for c in classes])
            for r in rows:
                probs = r.get("probabilities", {})
                w.writerow([r.get(k, "") for k in keys] + [probs.get(c, "") for c in classes])
    console().print(f"wrote {len(rows)} predictions to {output} ({fmt})")


def print_report(report: dict) -> None:
    from rich.table import Table

    out = console(stderr=False)
    out.print(f"accuracy [bold]{report['accuracy']:.4f}[/bold]  macro-F1 {report['macro_f1']:.4f}  "
                  f"({report['n']} examples, {report['n_skipped']} skipped)")
    table = Table("class", "precision", "recall", "F1", "support")
    for c, m in report["per_class"].items():
        table.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    out.print(table)
    cm = Table("true \\ predicted", *[c[:10] for c in report["classes"]], title="confusion matrix")
    for c, row in zip(report["classes"], report["confusion_matrix"]):
        cm.add_row(c[:16], *[str(v) for v in row])
    out.print(cm)


def text_stage_rows(bb) -> list[dict]:
    """Index, name and parameter count of each stage of a text backbone (`backbones --stages`)."""
    params = dict(bb.module.named_parameters())
    return [{"index": i, "name": s.name, "params": sum(params[n].numel() for n in s.param_names)}
            for i, s in enumerate(bb.stages)]


def print_text_stages(console, bb) -> None:
    from rich.table import Table

    t = Table("#", "stage", "params", title=f"{bb.spec}: {bb.num_features} features, up to "
              f"{bb.preprocess.max_length} tokens, {bb.preprocess.pooling} pooling")
    for r in text_stage_rows(bb):
        t.add_row(str(r["index"]), r["name"], f"{r['params']:,}")
    console.print(t)
    console.print("--freeze-stages K freezes stages 0..K-1 (embeddings first).")


def print_grouping(console, grouping, *, out=None, export=None) -> None:
    """The groups found by ``discover``: one row each, then how K was chosen and the baseline."""
    from rich.table import Table

    s = grouping.to_dict()
    text = grouping.modality == "text"
    table = Table("group", "size", "cohesion", "confidence", "outliers", "distinctive terms" if text else "most typical",
                  title=f"{s['k']} group(s) in {s['n_grouped']} {'texts' if text else 'images'} "
                  f"({s['method']} on {s['representation']}, {s['reducer']})")
    for g in s["groups"]:
        what = ", ".join(g.get("terms", [])) if text else grouping.items[g["typical"][0]]
        table.add_row(g["name"], str(g["size"]), f"{g['cohesion']:.3f}", f"{g['confidence']:.3f}",
                      str(g["outliers"]), what)
    console.print(table)
    for reason in s["reasons"]:
        console.print(f"  - {reason}")
    c, r = s["criteria"], s["runner_up"]
    if r and not s["forced_k"]:
        density = [x["k"] for x in s["candidates"] if x["method"] == "hdbscan"]
        console.print(f"  - other readings of K: runner-up {r['method']} k={r['k']} (silhouette {r['silhouette']:.3f})"
                      + (f", HDBSCAN k={density[0]}" if density else "")
                      + (f", eigengap k={c['eigengap_k']}" if c["eigengap_k"] else "") + "; force one with --k")
    b = s["baseline"]
    if b:
        console.print(f"  - baseline on {b['name']}: k={b['k']}, silhouette {b['silhouette']:.3f} "
                      f"(features: {c['silhouette']:.3f})" if b["silhouette"] is not None and c["silhouette"] is not None
                      else f"  - baseline on {b['name']}: k={b['k']}")
    t = s["seconds"]
    console.print(f"  - {t['features']:.1f}s features, {t['grouping']:.1f}s grouping"
                  + (f", {t['baseline']:.1f}s baseline" if t["baseline"] is not None else ""))
    if s["n_skipped"]:
        console.print(f"[yellow]skipped {s['n_skipped']} unreadable item(s)[/yellow], e.g. {s['skipped'][0][0]}")
    if out is not None:
        console.print(f"[green]saved[/green] {out}/groups.csv, discovery.json"
                      + (", sheets/" if not text else ""))
    if export is not None:
        console.print(f"[green]exported[/green] {export}: rename the groups, move any misplaced item, then "
                      f"`headstart train {export / 'texts.csv' if text else export}`")


def print_distillation(console, run) -> None:
    """Teacher, distilled student and direct student side by side (a distilled run's ``distillation`` record)."""
    from rich.table import Table

    rep = run.distillation
    if not rep:
        return
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table(title=f"distillation on {run.data.n_val} validation examples")
    for col in ("model", "val acc", "params", "file", "latency (batch 1)", "throughput"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, m in (("teacher " + rep["teacher"]["spec"], rep["teacher"]), ("student " + rep["student"]["spec"],
                                                                             rep["student"])):
        table.add_row(label, fmt(m["val_acc"]), f"{m['params']:,}", f"{m['file_bytes'] / 1e6:.2f} MB",
                      f"{m['latency_ms']:.1f} ms", f"{m['throughput_per_s']:,.0f}/s")
    direct = rep["direct"]
    table.add_row("same student, labels only", fmt(direct.get("val_acc")) if "skipped" not in direct
                  else f"skipped ({direct['skipped']})", "", "", "", "")
    console.print(table)
    ts = rep["transfer_set"]
    console.print(f"T={rep['temperature']:g}, alpha={rep['alpha']:g} ({rep['chosen_by']}); transfer set "
                  f"{ts['labelled']} labelled x {ts['views']} views + {ts['unlabeled']} unlabelled = {ts['rows']} rows",
                  highlight=False)
    if rep.get("gain") is not None:
        ratio = "-" if rep["ratio"] is None else f"{rep['ratio']:.2f}"
        console.print(f"distillation gain {rep['gain']:+.4f} over the direct student; ratio {ratio} "
                      f"(share of the teacher's lead recovered); student throughput x{rep['throughput_ratio']:g} the "
                      f"teacher's, file {rep['size_ratio']:g}x smaller", highlight=False)
        if rep["gain"] < 0:
            console.print("[bold red]WARNING:[/bold red] distillation did worse than training the student on the "
                          "labels alone; use the direct student (`headstart train --backbone "
                          f"{rep['student']['spec']}`) or another T/alpha.", highlight=False)


def print_export(console, result) -> None:
    """Where the export went, what it takes, and the parity gate's figures."""
    r, p = result.report, result.report["parity"]
    ins = ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in r["inputs"])
    console.print(f"[green]exported[/green] {result.model} ({r['format']}, opset {r['opset']}); metadata in "
                  f"{result.metadata}", highlight=False)
    console.print(f"inputs: {ins}; outputs: logits, probabilities over {len(r['classes'])} classes", highlight=False)
    console.print(f"parity ({p['engine']}): {p['inputs']} inputs ({p['real_inputs']} of them the data's own), "
                  f"max |Δ logit| {p['max_abs_logit_diff']:.2e} (gate {p['tolerance']:g}), top-1 agreement "
                  f"{p['top1_agreement']:.2%}", highlight=False)
    if r.get("bf16"):
        b = r["bf16"]
        console.print(f"OpenVINO bf16 (this CPU has it; fp32 is the default at load): max |Δ logit| "
                      f"{b['max_abs_logit_diff']:.2e}, top-1 agreement {b['top1_agreement']:.2%}", highlight=False)
    console.print(f"prepare inputs: {r['how_to_prepare']}", highlight=False)


def interrupted(out) -> str:
    """What an interrupted ``train`` or ``distill`` left in ``out``, and how to continue it."""
    from headstart.io.run import CHECKPOINT, DISTILL_ARGS

    out = Path(out)
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        from headstart.train.loop import load_checkpoint

        try:
            c = load_checkpoint(ckpt)
            where = f" (phase {c['phase_index'] + 1}, epoch {c['epoch']})"
        except Exception:  # being replaced at this very moment: the file is still there
            where = ""
        return f"the last checkpoint{where} is saved in {ckpt}; continue with: headstart resume {out}"
    if (out / DISTILL_ARGS).is_file() and (out / "distill_state.json").is_file():
        return f"the finished stages are saved in {out}; continue with: headstart resume {out}"
    return f"stopped before the first checkpoint, so {out} holds nothing to resume; run the same command again"


def print_audit(console, result, path) -> None:
    """The audit as tables: white-box accuracy per attack and budget, the teacher-only rows, the checks."""
    from rich.table import Table

    if not result.applies:
        console.print(result.statement, highlight=False)
        return
    tm = result.threat_model
    console.print(f"threat model: {tm['input_space']}; {tm['n_points']} test points, seed {tm['seed']}, "
                  f"{tm['precision']}{' (quick: weaker attacks)' if tm['quick'] else ''}", highlight=False)
    console.print(f"clean accuracy {result.clean_acc:.4f}")
    table = Table("attack", "norm", "eps", "accuracy", "seconds", title="white-box (the fine-tuned model)")
    for r in result.white_box:
        eps = f"{r['eps_255']:g}/255" if r["norm"] == "linf" else f"{r['eps']:g}"
        table.add_row(r["attack"], r["norm"], eps, f"{r['accuracy']:.4f}", f"{r['seconds']:.1f}")
    console.print(table)
    if result.teacher_only:
        t = Table("eps", "teacher-only", "random noise", "unrelated net", title="teacher-only: share of the "
                  "correct points fooled")
        for r in result.teacher_only:
            unrelated = f"{100 * r['unrelated_success']:.1f} %" if "unrelated_success" in r else "-"
            t.add_row(f"{r['eps_255']:g}/255", f"{100 * r['teacher_success']:.1f} %",
                      f"{100 * r['random_noise_success']:.1f} %", unrelated)
        console.print(t)
    for c in result.sanity:
        mark = "[green]ok[/green]" if c["passed"] else "[bold red]FAILED[/bold red]"
        console.print(f"{mark} {c['check']}: {c['measured']}", highlight=False)
    console.print(result.statement, highlight=False)
    console.print(f"audit took {result.seconds:.0f}s; saved {path}")
