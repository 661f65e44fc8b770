"""Write the graph as ONNX or OpenVINO IR, and run a written file (the parity gate's other side).

ONNX goes through ``torch.onnx.export`` with the dynamo exporter (torch.export, the maintained path),
falling back to the TorchScript exporter for graphs torch.export cannot capture; which one ran is
recorded. OpenVINO IR is converted from that same ONNX file, so both formats share one graph.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from headstart.errors import HeadstartError

log = logging.getLogger("headstart")
MAX_DIM = 1 << 16  # upper bound of the dynamic axes (torch.export wants one); a batch or text never reaches it


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HeadstartError(f"{module} is not installed: pip install 'headstart[{extra}]'.") from exc


def write_onnx(graph: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
               path: Path, opset: int) -> str:
    """Export ``graph`` to ``path`` with every input's axis 0 (and a text's axis 1) dynamic; returns the exporter."""
    _need("onnx", "export")
    graph.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_DIM)
    sequence = torch.export.Dim("sequence", min=1, max=MAX_DIM)
    dims = [{0: batch} if x.dim() != 2 or x.dtype != torch.long else {0: batch, 1: sequence} for x in inputs]
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter prints a progress line per pass
    try:
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, inputs, str(path), input_names=names, output_names=outputs,
                              opset_version=opset, dynamo=True, dynamic_shapes=tuple(dims), external_data=False,
                              verbose=False)
        return f"torch.onnx (dynamo) {torch.__version__}"
    except Exception as exc:  # torch.export could not capture it: the TorchScript exporter traces instead
        log.info("dynamo ONNX export failed (%s: %s); tracing with the TorchScript exporter",
                 type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
    axes = {n: {a: ("batch" if a == 0 else "sequence") for a in d} for n, d in zip(names, dims)}
    axes.update({o: {0: "batch"} for o in outputs})
    graph.eval()  # the exporter restores the module's mode on exit: make sure it is eval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, str(path), input_names=names, output_names=outputs, opset_version=opset,
                          dynamo=False, dynamic_axes=axes)
    return f"torch.onnx (TorchScript) {torch.__version__}"


def set_onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Record classes and preprocessing in the file itself (onnxruntime: ``get_modelmeta().custom_metadata_map``)."""
    onnx = _need("onnx", "export")
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def onnx_opset(path: Path) -> int:
    onnx = _need("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_openvino(onnx_path: Path, xml_path: Path) -> str:
    """ONNX → OpenVINO IR (model.xml + model.bin), weights kept in fp32 (the runtime picks bf16 at load)."""
    ov = _need("openvino", "openvino")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return f"openvino {ov.get_version().split('-')[0]}"


class OnnxRunner:
    """onnxruntime on the CPU: ``runner(*arrays) -> logits``."""

    def __init__(self, path: Path):
        ort = _need("onnxruntime", "export")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.describe = f"onnxruntime {ort.__version__} CPUExecutionProvider"

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], dict(zip(self.names, arrays)))[0]


class OpenVinoRunner:
    """OpenVINO on the CPU at ``precision`` ("f32" or "bf16", an inference precision hint), returning
    ``output`` ("logits" or "probabilities"); ``model`` is an IR file or an in-memory ``openvino.Model``."""

    def __init__(self, model, precision: str = "f32", output: str = "logits"):
        ov = _need("openvino", "openvino")
        model = str(model) if isinstance(model, Path) else model
        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin will really use
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.describe = f"openvino {ov.get_version().split('-')[0]} CPU {self.precision}"
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(output)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer(list(arrays))[self.output], dtype=np.float32)


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512-BF16 or AMX); it says so in its capabilities."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False
