"""Which engine runs frozen-backbone inference on a CPU: the torch fast path or OpenVINO.

OpenVINO compiles the same uint8-in graph the torch fast path runs (normalisation inside) for the CPU
plugin, which fuses BatchNorm and layouts itself and runs bf16 on AVX512-BF16 / AMX units. On Lite0 at
224 px it ran 2.4-3.8x faster than the torch fast path here (``benchmarks/bench_extract.py``), but
converting and compiling costs about a second or two, so "auto" takes it from ``OPENVINO_MIN_IMAGES``
images on, and only for image backbones on the CPU: text encoders take token ids of varying length and
stay on torch.

The choice, in order: an explicit engine ("torch" / "openvino") passed by the caller or set for a block
with :func:`use_engine` (what ``TrainConfig.engine`` does), else ``HEADSTART_ENGINE``, else "auto".
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from headstart.config import ENGINES
from headstart.encoders.base import tensors_sha256
from headstart.errors import HeadstartError, check_choice
from headstart.storage import cache_dir

log = logging.getLogger("headstart")

# Converting + compiling Lite0 took 1-2 s here, about what OpenVINO saves over the torch fast path on
# 250-500 images; below that (single predictions, tiny tests) torch starts at once.
OPENVINO_MIN_IMAGES = 256
_ENGINE: contextvars.ContextVar[str] = contextvars.ContextVar("headstart_engine", default="auto")


@contextlib.contextmanager
def use_engine(engine: str):
    """Within the block, frozen-feature extraction uses ``engine`` (unless a caller names one); "auto"
    leaves an enclosing block's choice in force."""
    if check_engine(engine) == "auto":
        yield
        return
    token = _ENGINE.set(engine)
    try:
        yield
    finally:
        _ENGINE.reset(token)


def check_engine(engine: str) -> str:
    check_choice("engine", engine, ENGINES)
    return engine


def requested_engine(engine: str | None = None) -> str:
    """The caller's engine, else the block's (:func:`use_engine`), else ``HEADSTART_ENGINE``, else auto."""
    if engine not in (None, "auto"):
        return check_engine(engine)
    if _ENGINE.get() != "auto":
        return _ENGINE.get()
    env = os.environ.get("HEADSTART_ENGINE", "").strip().lower()
    if env:
        if env not in ENGINES:
            raise HeadstartError(f"HEADSTART_ENGINE must be one of {ENGINES}, got {env!r}.")
        return env
    return "auto"


def resolve_engine(engine: str | None, *, modality: str, device: torch.device, n_images: int) -> str:
    """"torch" or "openvino" for this extraction; an impossible explicit request is an error."""
    want = requested_engine(engine)
    can = modality == "image" and torch.device(device).type == "cpu"
    if want == "openvino":
        if not can:
            raise HeadstartError(f"engine 'openvino' runs image backbones on the CPU; this is a {modality} model on "
                                 f"{torch.device(device)}. Use engine 'auto' or 'torch'.")
        if openvino() is None:
            raise HeadstartError("engine 'openvino' needs OpenVINO: pip install 'headstart[openvino]' "
                                 "(or use engine 'torch').")
        return "openvino"
    if want == "torch" or not can or n_images < OPENVINO_MIN_IMAGES:
        return "torch"
    return "openvino" if openvino() is not None else "torch"


def engine_label(engine: str, precision: str) -> str:
    """What the features depend on, for the feature cache key: ``torch-bf16``, ``openvino-f32``, ..."""
    if engine == "openvino":
        return f"openvino-{'bf16' if precision == 'bf16' and cpu_has_bf16() else 'f32'}"
    return f"torch-{precision}"


@functools.lru_cache(maxsize=1)
def openvino():
    """The ``openvino`` module, or None when it is not installed (or cannot load here)."""
    try:
        import openvino as ov

        ov.Core()
        return ov
    except Exception:
        return None


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512-BF16 or AMX); it says so in its capabilities."""
    ov = openvino()
    try:
        return ov is not None and "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


class OpenVinoGraph:
    """A torch module taking uint8 (N, 3, S, S) compiled by OpenVINO for the CPU.

    ``precision`` "bf16" asks the plugin for bf16 (it uses it only where the CPU has it), "fp32" keeps
    fp32; ``self.precision`` is what the plugin really uses. The batch axis is dynamic. Weights are
    copied into the OpenVINO model, so later changes to the torch module do not reach it. Threads follow
    ``torch.get_num_threads()``, so a user's or a worker's thread limit holds for both engines.
    Calling it returns a list of float32 arrays, one per output of the module.

    Converting traces the module (about 3-5 s for Lite0 on 2 cores, most of the setup), so the converted
    model is kept on disk under ``$HEADSTART_CACHE/openvino``, keyed on the module's weights, structure,
    input size and both libraries' versions: the next run on the same frozen backbone loads it in a
    fraction of a second. ``self.cached`` says whether it did.
    """

    def __init__(self, module: nn.Module, example: torch.Tensor, precision: str, *, use_cache: bool = True):
        ov = openvino()
        if ov is None:
            raise HeadstartError("OpenVINO is not installed: pip install 'headstart[openvino]'.")
        self.version = ov.get_version().split("-")[0]
        module = module.eval()
        model, self.cached = None, False
        folder = cache_dir("openvino") / _graph_key(module, tuple(example.shape[1:]), self.version) if use_cache else None
        if folder is not None and (folder / "model.xml").is_file():
            try:
                model, self.cached = ov.Core().read_model(str(folder / "model.xml")), True
            except Exception:  # unreadable entry: convert again and overwrite it
                model = None
        if model is None:
            model = _convert(ov, module, example)
            if folder is not None:
                _save(ov, model, folder)
        hint = "bf16" if precision == "bf16" else "f32"
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = (used.get_type_name() if hasattr(used, "get_type_name") else str(used)).lower()
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)

    @property
    def describe(self) -> str:
        return f"OpenVINO {self.version} CPU {self.precision}"

    def __call__(self, pixels: torch.Tensor) -> list[np.ndarray]:
        x = np.ascontiguousarray(pixels.cpu().numpy())
        result = self.request.infer([x])
        # Copies: the request's output buffers are reused by the next call.
        return [np.array(result[o], dtype=np.float32) for o in self.outputs]


def _convert(ov, module: nn.Module, example: torch.Tensor):
    """Trace ``module`` on ``example`` into an OpenVINO model with a uint8 input and a dynamic batch."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter traces with torch.jit.trace, which warns it is deprecated
        return ov.convert_model(module, example_input=example, share_weights=False,
                                input=[(ov.PartialShape([-1, *example.shape[1:]]), ov.Type.u8)])


def _graph_key(module: nn.Module, size: tuple, version: str) -> str:
    """Everything the converted graph depends on: weights and buffers, structure, input size, versions."""
    h = hashlib.sha256(tensors_sha256(module.state_dict()).encode())
    h.update(repr(module).encode())
    h.update(f"{size}|openvino {version}|torch {torch.__version__}|graph 1".encode())
    return h.hexdigest()[:32]


def _save(ov, model, folder) -> None:
    """Write model.xml + model.bin into a temporary folder, then rename it into place (atomic)."""
    tmp = tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent)
    try:
        ov.save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        os.rename(tmp, folder)
    except OSError:  # another process wrote it first, or the disk is full: the cache is only a cache
        shutil.rmtree(tmp, ignore_errors=True)
