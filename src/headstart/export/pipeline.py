"""`headstart export`: a run → an ONNX file or an OpenVINO IR folder that passed the parity gate.

Read the pipeline top to bottom: load the run, wrap its model (preprocessing inside, see graph.py),
write the file, check it on real inputs (parity.py) — removing it if it fails — and write export.json
beside it: the inputs, outputs, classes, how to resize images or where the tokenizer is, and the figures.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headstart.errors import HeadstartError
from headstart.export.config import ExportConfig
from headstart.export.graph import OUTPUTS, graph_for, output_specs, temperature_of
from headstart.export.parity import (
    ParityInputs,
    compare,
    image_inputs,
    reference,
    text_inputs,
)
from headstart.export.writers import (
    OnnxRunner,
    OpenVinoRunner,
    cpu_has_bf16,
    onnx_opset,
    set_onnx_metadata,
    write_onnx,
    write_openvino,
)
from headstart.storage import write_json

log = logging.getLogger("headstart")


class ExportError(HeadstartError):
    """The exported graph failed the parity gate (the report says by how much)."""


@dataclass
class Exported:
    model: Path  # the .onnx file, or the OpenVINO model.xml
    metadata: Path  # export.json
    report: dict[str, Any]

    def __str__(self) -> str:
        p = self.report["parity"]
        return (f"{self.model} ({self.report['format']}): parity on {p['inputs']} inputs, max |Δ logit| "
                f"{p['max_abs_logit_diff']:.2e} <= {p['tolerance']:g}, top-1 agreement {p['top1_agreement']:.1%}")


@dataclass(frozen=True)
class Target:
    """Where the files go: ``model`` (.onnx or .xml), ``metadata`` (JSON) and, for texts, ``tokenizer``."""

    model: Path
    metadata: Path
    tokenizer: Path

    @classmethod
    def of(cls, out: str | Path, fmt: str) -> "Target":
        out = Path(out)
        suffix = ".onnx" if fmt == "onnx" else ".xml"
        if out.suffix.lower() == suffix:  # a file name: the metadata and tokenizer go beside it
            return cls(out, out.with_suffix(".export.json"), out.with_suffix(".tokenizer"))
        if out.suffix.lower() in (".onnx", ".xml"):
            raise HeadstartError(f"--out {str(out)!r} names a {out.suffix} file but --format is {fmt}; use a "
                                 f"{suffix} file or a folder.")
        return cls(out / f"model{suffix}", out / "export.json", out / "tokenizer")

    def files(self) -> list[Path]:
        extra = [self.model.with_suffix(".bin")] if self.model.suffix == ".xml" else []
        return [self.model, *extra, self.metadata, self.tokenizer]


def export(run, out: str | Path, config: ExportConfig | None = None, *, data=None, **options) -> Exported:
    """Export a run (a directory or a fitted TransferClassifier) and gate it on parity.

    ``data``: inputs for the parity check (default: the data the run was trained on, when it is a file
    or folder that exists here). ``options`` are :class:`ExportConfig` fields (format, layout, opset,
    parity_inputs, tolerance). Raises :class:`ExportError`, and leaves no model file, when the gate fails.
    """
    from headstart.estimator import TransferClassifier, load

    config = dataclasses.replace(config, **options) if config is not None else ExportConfig(**options)
    clf = run if isinstance(run, TransferClassifier) else load(run)
    clf._check_fitted()
    target = Target.of(out, config.format)
    inputs = parity_inputs(clf, data, config.parity_inputs)
    graph = graph_for(clf.model_.cpu(), config.layout, temperature_of(clf))
    size = getattr(clf.preprocess_, "input_size", 0)
    names = [s.name for s in graph.input_specs(size)]
    target.model.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.model.parent, prefix=".export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        exporter = write_onnx(graph, graph.example_inputs(size), names, list(OUTPUTS), onnx_path, config.opset)
        opset = onnx_opset(onnx_path)
        if config.format == "onnx":
            set_onnx_metadata(onnx_path, _props(clf, config))
            runner = OnnxRunner(onnx_path)
            written = [onnx_path]
        else:
            exporter += f" → {write_openvino(onnx_path, Path(tmp) / 'model.xml')}"
            runner = OpenVinoRunner(Path(tmp) / "model.xml", "f32")
            written = [Path(tmp) / "model.xml", Path(tmp) / "model.bin"]
        modality = clf.modality_.name
        ref = reference(clf.model_, inputs, modality=modality)
        parity = compare(ref, runner, inputs, modality=modality, layout=config.layout, tolerance=config.tolerance)
        parity["engine"] = runner.describe
        report = _report(clf, config, target, exporter, opset, graph.input_specs(size), parity)
        if config.format == "openvino" and cpu_has_bf16():
            bf16 = compare(ref, OpenVinoRunner(Path(tmp) / "model.xml", "bf16"), inputs, modality=modality,
                           layout=config.layout, tolerance=config.tolerance)
            report["bf16"] = {k: bf16[k] for k in ("max_abs_logit_diff", "mean_abs_logit_diff", "top1_agreement")}
        del runner
        if not parity["passed"]:
            write_json(target.metadata, report)
            raise ExportError(
                f"The exported graph does not compute what the model computes: on {parity['inputs']} inputs "
                f"max |Δ logit| = {parity['max_abs_logit_diff']:.3g} (gate {config.tolerance:g}), top-1 agreement "
                f"{parity['top1_agreement']:.2%} ({parity['disagreements']} differ). Nothing was exported; the "
                f"figures are in {target.metadata}. Try --opset 17 or the other --format, or report the backbone.")
        _install(written, target)
    if modality == "text":
        _copy_tokenizer(clf, target.tokenizer)
    write_json(target.metadata, report)
    result = Exported(target.model, target.metadata, report)
    log.info("exported %s", result)
    return result


def parity_inputs(clf, data, n: int) -> ParityInputs:
    """``n`` real inputs from ``data`` (default: the run's training data), in the model's own form."""
    source = data if data is not None else clf._training_source()
    modality = clf.modality_
    examples = modality.read(source, columns=clf._columns(), purpose="predict")
    if not len(examples):
        raise HeadstartError(f"No inputs in {source!r} to check the export on; pass --data with real inputs.")
    # A seeded shuffle: the first n of a class-per-folder source would all be the first classes.
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0))[:n].tolist()
    examples = examples.subset(order)
    origin = str(source) if not hasattr(source, "__len__") or isinstance(source, (str, Path)) else "data"
    if modality.name == "text":
        return text_inputs(clf.tokenizer_, examples.texts, n, origin)
    from headstart.data.images import decode_all

    return image_inputs(decode_all(examples, clf.preprocess_).pixels, n, origin)


def _props(clf, config: ExportConfig) -> dict[str, str]:
    return {"headstart.classes": json.dumps([str(c) for c in clf.classes_]),
            "headstart.modality": clf.modality_.name,
            "headstart.preprocess": json.dumps(clf.preprocess_.to_dict()),
            "headstart.layout": config.layout if clf.modality_.name == "image" else "token_ids",
            "headstart.backbone": str(clf.backbone_info_.get("spec")),
            "headstart.temperature": repr(temperature_of(clf))}


def _report(clf, config: ExportConfig, target: Target, exporter: str, opset: int, inputs, parity: dict) -> dict:
    from headstart import __version__

    run = getattr(clf, "run_", None)
    modality = clf.modality_.name
    report: dict[str, Any] = {
        "format": config.format,
        "model": target.model.name,
        "modality": modality,
        "classes": list(clf.classes_),
        "backbone": clf.backbone_info_.get("spec"),
        "architecture": clf.backbone_info_.get("architecture"),
        "cut_stage": clf.fitted_config_.cut_stage,
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in output_specs(len(clf.classes_))],
        "preprocess": clf.preprocess_.to_dict(),
        "opset": opset,
        "exporter": exporter,
        "parity": parity,
        "temperature": temperature_of(clf),  # probabilities = softmax(logits / temperature)
        "run": str(run.path) if run is not None else None,
        "run_model_sha256": (run.meta.get("model_sha256") if run is not None else None),
        "metrics": (run.meta.get("metrics") if run is not None else None),
        "headstart": __version__,
    }
    if modality == "image":
        p = clf.preprocess_
        report["layout"] = config.layout
        report["how_to_prepare"] = (
            f"decode to RGB, resize the short side to {p.resize_size} px ({p.interpolation}), centre-crop "
            f"{p.input_size}x{p.input_size}, uint8 {config.layout.upper()}; the graph normalises "
            f"(mean {list(p.mean)}, std {list(p.std)}) itself")
    else:
        kind, pre = clf.preprocess_.kind, clf.preprocess_
        report["tokenizer"] = target.tokenizer.name
        windows = (f"; the run itself reads longer texts in up to {pre.windows} overlapping windows pooled "
                   "together, the graph one window" if pre.windows > 1 else "")
        report["how_to_prepare"] = (
            f"tokenize with the tokenizer in {target.tokenizer.name}/ (truncate to {clf.preprocess_.max_length} "
            f"tokens, pad to the longest in the batch), feed input_ids and attention_mask as int64{windows}"
            if kind == "hf" else
            f"split texts as scikit-learn's TfidfVectorizer(ngram_range=(1, {pre.ngrams})) analyzer does "
            "(lowercased words of 2+ word characters, then their n-grams joined by a space), look each term up "
            f"in tfidf_vocab.txt in {target.tokenizer.name}/ (row i+1 is line i; unknown terms are dropped); "
            "input_ids: the row of every term occurrence, attention_mask 1 there and 0 for padding, int64; the "
            f"graph counts them, applies the idf and normalises (at most {pre.max_length} terms a text)"
            if kind == "tfidf" else
            f"split words as headstart.encoders.text.WordTokenizer does ({'lowercased, ' if clf.preprocess_.lowercase else ''}"
            f"vocab.txt in {target.tokenizer.name}/: row i+1 is word i, 0 is unknown or padding, mask 0 there), "
            f"at most {clf.preprocess_.max_length} words")
    return report


def _install(written: list[Path], target: Target) -> None:
    """Move the checked files into place (same filesystem: a rename, never a half-written model)."""
    for src in written:
        dst = target.model if src.suffix == target.model.suffix else target.model.with_suffix(src.suffix)
        src.replace(dst)


def _copy_tokenizer(clf, directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    clf.tokenizer_.save(directory)
