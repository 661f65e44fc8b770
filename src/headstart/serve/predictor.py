"""What answers a batch: a run's model on the engine chosen once at start-up.

Images arrive decoded and preprocessed (uint8 (3, S, S) each, the run's own resize and crop); texts as
strings. Image runs use OpenVINO when it is installed (the run's graph converted in memory, bf16 where
the CPU has it) and PyTorch's CPU fast path otherwise; the OpenVINO model is checked against the
PyTorch model before it is used, and dropped if it disagrees. Texts run on PyTorch.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headstart.assess.calibration import apply_temperature
from headstart.device import resolve_precision
from headstart.errors import HeadstartError
from headstart.export.graph import ImageGraph, temperature_of
from headstart.export.writers import OpenVinoRunner, cpu_has_bf16
from headstart.features.fastpath import feature_extractor

log = logging.getLogger("headstart")


def _openvino():
    try:
        import openvino

        return openvino
    except ImportError:
        return None


@dataclass
class Predictor:
    """``predictor(batch) -> probabilities`` (N, classes) float32 for a list of decoded images or texts."""

    clf: Any  # a fitted TransferClassifier
    engine: str = "torch"
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)
    _run: Any = None

    @classmethod
    def build(cls, clf, engine: str = "auto", precision: str = "auto") -> "Predictor":
        clf._check_fitted()
        clf.model_.cpu().eval()
        if clf.modality_.name == "text" or engine == "torch" or (engine == "auto" and _openvino() is None):
            if engine == "openvino":
                raise HeadstartError("engine 'openvino' serves image runs; text runs use 'torch' (or 'auto').")
            return cls._torch(clf, precision)
        if _openvino() is None:
            raise HeadstartError("engine 'openvino' needs OpenVINO: pip install 'headstart[openvino]' (or use "
                                 "--engine torch).")
        return cls._openvino(clf, precision)

    @classmethod
    def _torch(cls, clf, precision: str) -> "Predictor":
        p = resolve_precision(precision, "cpu")
        self = cls(clf, "torch", p)
        temperature = temperature_of(clf)  # a calibrated run answers as `predict` does
        if clf.modality_.name == "image":
            extract = feature_extractor(clf.model_, precision=p, device=torch.device("cpu"), n_images=0,
                                        compile="never")
            self.notes.append(extract.describe)

            def run(pixels: torch.Tensor) -> np.ndarray:
                with torch.inference_mode():
                    return torch.softmax(clf.model_.head(extract(pixels)).float() / temperature, 1).numpy()
        else:
            from headstart.data.texts import TextExamples

            def run(texts: list[str]) -> np.ndarray:
                probs = clf.modality_.predict(clf.model_, clf.tokenizer_, clf.preprocess_,
                                              TextExamples(list(texts), None, "request"), precision=p).probs
                return apply_temperature(probs, temperature) if temperature != 1.0 else probs
        self._run = run
        return self

    @classmethod
    def _openvino(cls, clf, precision: str) -> "Predictor":
        ov = _openvino()
        if precision == "bf16" and not cpu_has_bf16():
            raise HeadstartError("precision 'bf16' was requested but OpenVINO reports no bf16 on this CPU; use "
                                 "'fp32' or 'auto'.")
        # auto tries bf16 first where the CPU has it, then fp32: one conversion, compiled once per precision.
        hints = ["bf16", "f32"] if precision == "auto" and cpu_has_bf16() else ["bf16" if precision == "bf16" else "f32"]
        size = clf.preprocess_.input_size
        graph = ImageGraph(clf.model_, "nchw", temperature_of(clf)).eval()
        started = time.perf_counter()
        with warnings.catch_warnings():  # the converter traces with torch.jit and says it is deprecated
            warnings.simplefilter("ignore")
            model = ov.convert_model(graph, example_input=graph.example_inputs(size),
                                     input=[ov.PartialShape([-1, 3, size, size])])
        converted = f"converted in {time.perf_counter() - started:.1f} s"
        dropped = []
        for hint in hints:
            runner = OpenVinoRunner(model, hint, output=1)  # output 1: the probabilities
            self = cls(clf, "openvino", "bf16" if runner.precision == "bf16" else "fp32")
            self.notes += [f"{runner.describe}, {converted}"] + dropped
            self._run = lambda pixels, runner=runner: runner(pixels.numpy())
            reason = self._disagrees(graph, size)
            if not reason:
                return self
            log.info("OpenVINO %s disagrees with the PyTorch model (%s)", runner.precision, reason)
            dropped.append(f"{runner.precision} dropped: {reason}")
        # Never serve a graph that computes something else: the torch path is always right.
        log.warning("OpenVINO disagrees with the PyTorch model (%s); serving with PyTorch", reason)
        fallback = cls._torch(clf, precision if precision != "auto" else "fp32")
        fallback.notes.append(f"OpenVINO dropped: {reason}")
        return fallback

    def _disagrees(self, graph: ImageGraph, size: int) -> str:
        """Why this engine's answers differ from fp32 PyTorch on a fixed batch ("" when they agree)."""
        x = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = graph(x)[1].numpy()
        got = self._run(x)
        gap = float(np.abs(ref - got).max())
        bound = 0.02 if self.precision == "bf16" else 1e-4  # bf16 keeps 8 bits of mantissa
        if not np.isfinite(got).all() or gap > bound:
            return f"max |Δ probability| {gap:.3g} > {bound:g}"
        self.notes.append(f"checked against PyTorch fp32: max |Δ probability| {gap:.2e}")
        return ""

    @property
    def modality(self) -> str:
        return self.clf.modality_.name

    @property
    def classes(self) -> list:
        return list(self.clf.classes_)

    def describe(self) -> str:
        return f"{self.engine} {self.precision}" + (f" ({'; '.join(self.notes)})" if self.notes else "")

    def __call__(self, batch: list) -> np.ndarray:
        """Probabilities for a list of uint8 (3, S, S) tensors (image runs) or strings (text runs)."""
        return self._run(torch.stack(batch) if self.modality == "image" else list(batch))
