"""The report as one self-contained HTML file: inline CSS and SVG, images as data URLs, no scripts,
no network. Nothing in it depends on the clock or the machine, so the same inputs give the same bytes.
"""
from __future__ import annotations

from html import escape
from typing import Any

from headstart.report import plots
from headstart.report.build import Contents

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2430;max-width:1080px;margin:2rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2.2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
.sub{color:#5a6475}table{border-collapse:collapse;margin:.6rem 0}td,th{padding:.25rem .6rem;border-bottom:1px solid #eef;text-align:left}
th{background:#f5f7fb;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{background:#f5f7fb;border-radius:8px;padding:.6rem .9rem;min-width:9rem}
.card b{display:block;font-size:1.3rem}.note{background:#fff7e0;border-left:3px solid #e0a800;padding:.4rem .7rem;margin:.5rem 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.7rem}.ex{background:#f5f7fb;border-radius:6px;padding:.4rem;font-size:12px}
.ex img{display:block;width:72px;height:72px;object-fit:contain;image-rendering:pixelated;margin-bottom:.3rem}
.ex q{display:block;max-height:6em;overflow:hidden}figure{margin:.5rem 0}svg{max-width:100%;height:auto}
"""


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class=n>{escape(_fmt(v))}</td>" if i in numeric else f"<td>{escape(_fmt(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _summary(c: Contents) -> str:
    run, m, (lo, hi) = c.run, c.metrics, c.accuracy_interval
    data = run.meta.get("data") or {}
    cfg = run.meta.get("config") or {}
    cards = [("accuracy", f"{m['accuracy']:.4f}", f"95 % CI {lo:.3f}–{hi:.3f} (bootstrap)"),
             ("macro-F1", f"{m['macro_f1']:.4f}", f"{c.evaluated.name}, {m['n']:,} examples"),
             ("classes", f"{len(run.classes)}", ""),
             ("trained on", f"{data.get('n_train', 0):,}", f"+ {data.get('n_val', 0):,} validation"),
             ("fit time", f"{run.seconds:.0f} s" if run.seconds else "–", "training phases")]
    html = '<div class="cards">' + "".join(f"<div class=card>{escape(k)}<b>{escape(v)}</b><span class=sub>{escape(s)}</span></div>"
                                           for k, v, s in cards) + "</div>"
    rows = [["backbone", (run.backbone or {}).get("spec")], ["strategy", cfg.get("strategy")],
            ["evaluated on", f"{c.evaluated.name}: {c.evaluated.origin}"
             + (f" ({c.evaluated.n_skipped} unreadable, skipped)" if c.evaluated.n_skipped else "")],
            ["training data", data.get("origin")], ["precision", (run.meta.get("history") or {}).get("precision")],
            ["saved", run.meta.get("saved_at")], ["weights sha256", (run.meta.get("model_sha256") or "")[:16] + "…"]]
    html += _table(["", ""], rows)
    html += "".join(f'<p class="note">{escape(n)}</p>' for n in c.notes)
    return html


def _curves(c: Contents) -> str:
    epochs = c.run.epochs()
    svg = plots.learning_curves(epochs)
    if svg is None:
        return "<p>No per-epoch records in this run.</p>"
    phases = (c.run.meta.get("history") or {}).get("phases") or []
    rows = [[p.get("name"), p.get("epochs_run"), p.get("seconds"), p.get("features_engine", "")] for p in phases]
    return (f"<figure>{svg}</figure><p class=sub>Dashed: validation. Dotted red: the epoch whose weights were kept "
            "(best validation loss).</p>" + _table(["phase", "epochs run", "seconds", "features engine"], rows, {1, 2}))


def _classes(c: Contents) -> str:
    m = c.metrics
    rows = [[k, v["precision"], v["recall"], v["f1"], v["support"]] for k, v in m["per_class"].items()]
    confused = [[r["true"], r["predicted"], r["count"], r["share_of_true"]] for r in c.confused]
    html = f"<figure>{plots.confusion(m['confusion_matrix'], m['classes'])}</figure>"
    html += "<p class=sub>Rows: the true class, normalised to 1 (the diagonal is each class's recall).</p>"
    html += "<h3>Most confused pairs</h3>" + (_table(["true", "predicted as", "count", "share of true class"],
                                                    confused, {2, 3}) if confused else "<p>No confusions.</p>")
    html += "<h3>Per class</h3>" + _table(["class", "precision", "recall", "F1", "support"], rows, {1, 2, 3, 4})
    return html


def _losses(c: Contents) -> str:
    if not c.top_losses:
        return "<p>Nothing to show.</p>"
    cells = []
    for r in c.top_losses:
        media = f'<img src="{r["thumbnail"]}" alt="">' if r.get("thumbnail") else ""
        label = f"<q>{escape(r['id'][:300])}</q>" if not media or not r["id"].startswith("#") else ""
        if media and not r["id"].startswith("#"):
            label = f"<span class=sub>{escape(r['id'][-40:])}</span>"
        cells.append(f"<div class=ex>{media}{label}<div>true <b>{escape(r['true'])}</b> · p {r['p_true']:.3f}</div>"
                     f"<div>predicted <b>{escape(r['predicted'])}</b> · p {r['p_predicted']:.3f}</div></div>")
    return "<p class=sub>The examples whose true class got the lowest probability, worst first.</p>" \
           f"<div class=grid>{''.join(cells)}</div>"


def _calibration(c: Contents) -> str:
    info = c.calibration
    svg = plots.reliability_diagram(c.reliability_before, c.reliability_after, info.get("temperature"))
    rows = [["expected calibration error (15 bins)", info["ece"]]]
    if info.get("temperature"):
        cut = 1 - info["ece_calibrated"] / info["ece"] if info["ece"] else 0.0
        rows += [["temperature T (fitted on " + info["fitted_on"] + ")", info["temperature"]],
                 ["ECE after temperature scaling", info["ece_calibrated"]], ["ECE cut", f"{100 * cut:.0f} %"],
                 ["stored in the run", "yes, predictions use it" if info.get("stored") else
                  "no (headstart report RUN --calibrate stores it)"]]
    return f"<figure>{svg}</figure>" + _table(["", ""], rows)


def _baselines(c: Contents) -> str:
    b = c.run.meta.get("baselines")
    if not b:
        return "<p>This run was trained without baselines (--no-baselines).</p>"
    if "skipped" in b:
        return f"<p>{escape(str(b['skipped']))}</p>"
    simple = b.get("simple", "scratch")
    names = {"transfer": "transfer (this run)", "linear_probe": "linear probe on the frozen backbone",
             "scratch": "small net from scratch", "tfidf_logreg": "TF-IDF + logistic regression"}
    rows = [[names.get(k, k), (b.get(k) or {}).get("val_acc"), (b.get(k) or {}).get("seconds")]
            for k in ("transfer", "linear_probe", simple) if b.get(k)]
    html = _table(["model", f"validation accuracy ({b.get('n_val', 0)} examples)", "seconds"], rows, {1, 2})
    saved = (b.get("compute_saved") or {}).get("summary")
    if saved:
        html += f"<p>Compute saved: {escape(str(saved))}</p>"
    html += "".join(f'<p class="note">{escape(str(w))}</p>' for w in b.get("warnings", []))
    return html


def _robustness(c: Contents) -> str:
    """`headstart audit`'s tables (RUN/audit.json) and the --harden record, when the run has them."""
    a, hard = c.audit, c.run.meta.get("hardening")
    html = ""
    if hard:
        html += f"<p>Hardened ({escape(hard['method'])}): {escape(hard['what'])}.</p>"
        val = hard.get("validation") or {}
        if val:
            html += _table(["on the validation split", ""], [
                ["images", val["n"]], ["accuracy", val["val_acc"]],
                [f"share of the right ones the {val['attack']} fools", val["teacher_only_success"]]], {1})
    if not a:
        return html + "<p>Not audited yet: <code>headstart audit RUN TEST</code> writes RUN/audit.json, shown here.</p>"
    if not a["applies"]:
        return html + f"<p>{escape(a['statement'])}</p>"
    t = a["threat_model"]
    html += (f"<p>{escape(a['statement'])}.</p><p class=sub>{t['n_points']} test points, inputs in "
             f"{escape(t['input_space'])}, seed {t['seed']}{', quick mode' if t.get('quick') else ''}; "
             f"the audit took {a['seconds']:.0f} s. Clean accuracy on these points: {a['clean_acc']:.4f}.</p>")
    html += _table(["white-box attack", "norm", "budget", "accuracy"],
                   [[r["attack"], r["norm"], f"{r['eps_255']:g}/255" if r["norm"] == "linf" else f"{r['eps']:g}",
                     r["accuracy"]] for r in a["white_box"]], {3})
    if a["teacher_only"]:
        html += _table(["budget", "teacher-only success", "random-noise control", "unrelated-network control"],
                       [[f"{r['eps_255']:g}/255", r["teacher_success"], r["random_noise_success"],
                         r.get("unrelated_success")] for r in a["teacher_only"]], {1, 2, 3})
    html += _table(["sanity check", "passed"], [[s["check"], "yes" if s["passed"] else "NO"] for s in a["sanity"]])
    return html


def _json_block(title: str, value: Any) -> str:
    import json

    text = json.dumps(value, indent=1, sort_keys=True, default=str)
    return f"<details><summary>{escape(title)}</summary><pre>{escape(text[:20000])}</pre></details>"


def render(c: Contents) -> str:
    run = c.run
    title = f"headstart report · {run.path.name}"
    sections = [_section("Summary", _summary(c), "summary"), _section("Learning curves", _curves(c), "curves"),
                _section("Classes", _classes(c), "classes"), _section("Top losses", _losses(c), "losses"),
                _section("Calibration", _calibration(c), "calibration"),
                _section("Was transfer worth it? Baselines", _baselines(c), "baselines")]
    if c.audit or run.meta.get("hardening"):
        sections.append(_section("What the model inherits: robustness", _robustness(c), "robustness"))
    for key, title_ in (("plan", "Plan (strategy auto)"), ("distillation", "Distillation"),
                        ("adaptation", "Domain adaptation")):
        if run.meta.get(key):
            sections.append(_section(title_, _json_block(f"{key} as recorded in headstart.json", run.meta[key]), key))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"<p class=sub>{escape(str(len(run.classes)))} classes · {escape(run.modality)} · "
            f"{escape(str((run.backbone or {}).get('spec')))}</p>" + "".join(sections) + "</body></html>\n")
