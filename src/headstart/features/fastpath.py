"""The CPU inference fast path for frozen-backbone features.

Frozen-backbone features on a CPU go through :class:`FeatureExtractor`, a prepared copy of the
backbone: every BatchNorm folded into the convolution before it (in fp32), weights cast once to bf16
where the CPU has native bf16 (no per-call autocast casts), channels_last, small micro-batches that
keep activations in cache, and ``torch.compile`` with inductor freezing once the image count repays
the compile time. See ``benchmarks/bench_extract.py`` for the measured effect of each choice.
"""
from __future__ import annotations

import copy
import logging
import os
import weakref

import torch
from torch import nn

from headstart.device import inference_context, to_fast_layout
from headstart.features.engine import OpenVinoGraph, resolve_engine

log = logging.getLogger("headstart")


# Compiling Lite0 takes 30-60 s on 2 cores (inductor, freezing, cold on-disk cache) and, on the
# folded bf16 copy, raised extraction from about 60-80 to 110 images/s per core on one thread and by
# 1.5-2x on a shared 2-core machine (bench_extract.py): 3-5 ms saved per image on 2 cores, so it
# repays itself after roughly 8,000-15,000 images. Below this, eager (it starts at once).
COMPILE_MIN_IMAGES = 15_000


def cpu_infer_batch() -> int:
    """Images per forward call of the prepared CPU path (``HEADSTART_INFER_BATCH`` overrides).

    On one thread, small batches keep Lite0's activations in cache: 4-8 images ran 1.3-1.5x faster
    per image than 64 (eager and compiled). With several threads each op is split between them and
    pays a barrier; on a shared 2-core machine 32-64 images beat 8-16 by 1.5-2x, so 32 there.
    """
    env = os.environ.get("HEADSTART_INFER_BATCH", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return 8 if torch.get_num_threads() == 1 else 32


def compile_mode(n_images: int, mode: str = "auto") -> bool:
    """Whether to ``torch.compile``: ``HEADSTART_COMPILE`` (always / never / auto) overrides ``mode``."""
    mode = os.environ.get("HEADSTART_COMPILE", mode)
    return mode == "always" or (mode == "auto" and n_images >= COMPILE_MIN_IMAGES)


def maybe_compile(fn, n_images: int, mode: str = "auto"):
    """``torch.compile(fn)`` when ``mode == "always"`` or (auto) the data is large enough to amortise it."""
    if not compile_mode(n_images, mode):
        return fn
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # no compiler toolchain: eager is always correct
        return fn


# OpenVINO runs one synchronous request per call; on 2 cores batches of 8-256 ran within noise of
# each other (and of a 2-stream asynchronous queue), 64 a little ahead (bench_extract.py).
OPENVINO_BATCH = 64
OPENVINO_CHECK_IMAGES = 4  # the first images of the first call, checked against fp32 torch
OPENVINO_MIN_COSINE = 0.99  # bf16 rounding stays above 0.995 on real photos; a wrong graph falls far below


# ------------------------------------------------------------------ prepared feature extractor

def fold_batchnorm(module: nn.Module) -> int:
    """In place, inference only: fold each BatchNorm2d that directly follows a Conv2d into that conv.

    A pair is two consecutive children of one parent (``conv`` then ``bn``), the layout of timm's
    EfficientNet / MobileNet / ResNet blocks. The BatchNorm becomes what runs after its normalisation:
    ``Identity`` for ``nn.BatchNorm2d``, its ``drop`` + ``act`` for timm's ``BatchNormAct2d``; any
    other BatchNorm subclass is left alone. Registration order is only a hint of execution order, so
    callers must check the folded copy against the original (:class:`FeatureExtractor` does).
    Returns the number of BatchNorms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
                continue
            if type(bn) is nn.BatchNorm2d:
                after = nn.Identity()
            elif type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
                after = nn.Sequential(bn.drop, bn.act)
            else:
                continue
            with torch.no_grad():
                scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
            parent._modules[b] = after
            folded += 1
    return folded


def folded_copy(backbone: nn.Module) -> tuple[nn.Module, int]:
    """A private, frozen eval copy of ``backbone`` with its BatchNorms folded, and how many were folded."""
    backbone = copy.deepcopy(backbone).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone, fold_batchnorm(backbone)


def cast_for_cpu(backbone: nn.Module, precision: str) -> tuple[torch.dtype, bool, bool]:
    """In place: bf16 weights when ``precision="bf16"`` and every weighted layer is a conv or linear
    layer, channels_last when there are convolutions. Returns (input dtype, autocast needed, channels_last)."""
    dtype = torch.float32
    if precision == "bf16" and _only_conv_linear(backbone):
        dtype = torch.bfloat16
        backbone.to(torch.bfloat16)
    cl = any(isinstance(m, nn.Conv2d) for m in backbone.modules())
    if cl:
        backbone.to(memory_format=torch.channels_last)
    return dtype, precision == "bf16" and dtype != torch.bfloat16, cl


class _Prepared(nn.Module):
    """uint8 (or float in [0, 1]) NCHW → float32 features: normalise, cast, channels_last, backbone."""

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype,
                 channels_last: bool):
        super().__init__()
        self.backbone, self.dtype, self.channels_last = backbone, dtype, channels_last
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = ((x - self.mean) / self.std).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).float()


def _only_conv_linear(module: nn.Module) -> bool:
    """True when every module that owns parameters is a Conv2d or Linear (safe to run wholly in bf16)."""
    return all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules()
               if next(m.parameters(recurse=False), None) is not None)


def _fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a weight or buffer is replaced or modified in place (optimizer steps included)."""
    return tuple((t.data_ptr(), t._version) for t in list(module.parameters()) + list(module.buffers()))


class FeatureExtractor:
    """Pooled features of ``model`` (a TransferModel) for uint8 batches, the fastest faithful CPU way.

    Built once per model, weights and settings (see :func:`feature_extractor`). On a CPU it runs a
    private copy of the backbone: BatchNorm folded into the convolutions in fp32 (checked against
    the original forward on the first batch; if they disagree the copy is dropped), then, for
    ``precision="bf16"``, the weights cast to bf16 when every remaining layer with weights is a
    convolution or linear layer (else bf16 autocast), channels_last, micro-batches of
    :func:`cpu_infer_batch`, and ``torch.compile`` (inductor, ``freezing``) when ``compile`` is set.
    Elsewhere (GPUs) it is the model's own ``features`` under channels_last + autocast.
    ``describe`` says which path ran. The features agree with fp32 eager to cosine >= 0.999 on real
    photos in bf16 and to float rounding in fp32 (tests/test_fast_features.py).

    ``engine="openvino"`` (image backbones on the CPU) runs the same uint8-in graph, unfolded, compiled
    by OpenVINO (:class:`headstart.features.engine.OpenVinoGraph`) on the first call, at ``precision``
    where the CPU has it. Its features on the first images are checked against the fp32 torch backbone
    (min cosine ``OPENVINO_MIN_COSINE``); a failed check or conversion falls back to the torch path, and
    ``describe`` says so.
    """

    def __init__(self, model, *, precision: str, device: torch.device, compile: bool = False,
                 engine: str = "torch"):
        self.model, self.precision, self.device = model, precision, torch.device(device)
        self.batch_size = cpu_infer_batch()
        self.autocast = precision == "bf16"
        self.compiled = False
        self.engine, self._graph = engine, None
        if engine == "openvino":
            # Built on the first call, from its images (the input size is known then).
            self.batch_size, self._compile, self._checked = OPENVINO_BATCH, compile, True
            self.parts = ["OpenVINO (not built yet)"]
            return
        self._torch_path(model, precision, compile)

    def _torch_path(self, model, precision: str, compile: bool) -> None:
        # Text encoders take token ids (nothing to fold or cast, and shapes vary with text length, which
        # would make a compiled graph recompile): like GPUs, they run the model's own forward.
        plain = self.device.type != "cpu" or model.modality != "image"
        compile = compile and model.modality == "image"
        self._checked = plain
        if plain:
            to_fast_layout(model)
            self.module, self.batch_size, self.parts = model.features, 64, ["model.features", "channels_last"]
        else:
            backbone, folded = folded_copy(model.backbone)
            # Checked on the first batch, in fp32, before any bf16 rounding (see _check_fold).
            self._fp32_folded = copy.deepcopy(backbone) if folded else None
            dtype, self.autocast, cl = cast_for_cpu(backbone, precision)
            self.module = _Prepared(backbone, model.mean, model.std, dtype, cl).eval()
            self._checked = folded == 0
            self.parts = [f"{folded} BatchNorm folded" if folded else "no BatchNorm folded",
                          "bf16 weights" if dtype == torch.bfloat16 else
                          ("bf16 autocast" if self.autocast else "fp32"),
                          "channels_last" if cl else "NCHW", f"micro-batch {self.batch_size}"]
        self._eager = self.module
        if compile:
            try:
                self.module = torch.compile(self.module, dynamic=False, options={"freezing": True})
                self.compiled = True
            except Exception as exc:  # no compiler toolchain: eager is always correct
                log.info("torch.compile unavailable (%s); extracting features eagerly", exc)

    @property
    def describe(self) -> str:
        if self.engine == "openvino":
            return ", ".join(self.parts)
        return ", ".join(self.parts + (["torch.compile (inductor, freezing)"] if self.compiled else ["eager"]))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) → float32 (N, D) on the CPU."""
        if self.engine == "openvino" and pixels.dtype != torch.uint8:
            self._openvino_failed(f"the OpenVINO graph takes uint8 pixels, got {pixels.dtype}")
        if self.engine == "openvino" and len(pixels):
            if self._graph is None or self._graph_size != tuple(pixels.shape[1:]):
                self._build_openvino(pixels)
            if self.engine == "openvino":
                run = self._graph
                return torch.cat([torch.from_numpy(run(pixels[i:i + self.batch_size])[0])
                                  for i in range(0, len(pixels), self.batch_size)])
        outs = []
        if not self._checked:
            with torch.inference_mode():
                self._check_fold(pixels[:2])
        with inference_context("bf16" if self.autocast else "fp32", self.device):
            for i in range(0, len(pixels), self.batch_size):
                outs.append(self._run(pixels[i:i + self.batch_size]))
        return torch.cat(outs) if outs else torch.empty(0, 0)

    def _build_openvino(self, pixels: torch.Tensor) -> None:
        """Convert + compile on these images' size, check against fp32 torch; on any failure use torch."""
        model = self.model
        backbone = copy.deepcopy(model.backbone).eval()  # OpenVINO folds BatchNorm and picks layouts itself
        module = _Prepared(backbone, model.mean, model.std, torch.float32, False).eval()
        probe = pixels[:OPENVINO_CHECK_IMAGES].cpu()
        try:
            graph = OpenVinoGraph(module, probe, self.precision)
            got = torch.from_numpy(graph(probe)[0])
        except Exception as exc:  # an op OpenVINO cannot convert, a plugin error: torch is always correct
            return self._openvino_failed(f"OpenVINO could not run this backbone ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
        with torch.inference_mode():
            ref = module(probe).float()
        cos = float(torch.nn.functional.cosine_similarity(got, ref, dim=1).min())
        if not cos >= OPENVINO_MIN_COSINE:  # also catches NaN
            return self._openvino_failed(f"OpenVINO's features disagreed with fp32 torch (min cosine {cos:.4f})")
        self._graph, self._graph_size = graph, tuple(pixels.shape[1:])
        self.parts = [graph.describe, "uint8 in, normalisation and BatchNorm folded in the graph",
                      f"batch {self.batch_size}", f"checked vs fp32 torch: min cosine {cos:.4f}",
                      "converted graph from the cache" if graph.cached else "converted now"]

    def _openvino_failed(self, why: str) -> None:
        log.warning("%s; extracting features with the torch fast path", why)
        self.engine, self._graph = "torch", None
        self.batch_size = cpu_infer_batch()
        self._torch_path(self.model, self.precision, self._compile)
        self.parts.insert(0, f"torch ({why})")

    def _run(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self.device, non_blocking=True)
        n = len(xb)
        if self.compiled:
            if n < self.batch_size:  # one input shape: no recompilation for the last, short batch
                xb = torch.cat([xb, xb[-1:].expand(self.batch_size - n, *xb.shape[1:])])
            try:
                return self.module(xb)[:n].float().cpu()
            except Exception as exc:  # compilation failed (no C++ compiler, unsupported op): stay correct
                log.warning("torch.compile failed (%s: %s); extracting features eagerly", type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
                self.module, self.compiled = self._eager, False
                xb = xb[:n]
        return self.module(xb).float().cpu()

    def _check_fold(self, xb: torch.Tensor) -> None:
        """The folded copy must compute the original forward (fp32, same images), else it is dropped."""
        self._checked = True
        model = self.model
        original = model.backbone if not model.backbone.training else copy.deepcopy(model.backbone).eval()
        folded, self._fp32_folded = self._fp32_folded, None
        with torch.autocast(self.device.type, enabled=False):
            ref = original(model.normalize(xb.to(self.device)).float()).float()
            got = _Prepared(folded, model.mean, model.std, torch.float32, False)(xb.to(self.device))
        if torch.allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max()))):
            return
        log.warning("folding BatchNorm changed this backbone's output (max difference %.3g); using the "
                    "unfolded model", float((got - ref).abs().max()))
        backbone = copy.deepcopy(model.backbone).eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.module = self._eager = _Prepared(backbone, model.mean, model.std, torch.float32, False).eval()
        self.autocast, self.compiled = self.precision == "bf16", False
        self.parts = ["BatchNorm not folded (the folded copy disagreed)",
                      "bf16 autocast" if self.autocast else "fp32", "NCHW", f"micro-batch {self.batch_size}"]


_EXTRACTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model → {settings: (fingerprint, extractor)}


def feature_extractor(model, *, precision: str, device: torch.device, n_images: int,
                      compile: str = "auto", engine: str | None = None) -> FeatureExtractor:
    """The :class:`FeatureExtractor` for ``model`` now, reused while its weights are unchanged.

    ``compile``: "auto" compiles for ``n_images >= COMPILE_MIN_IMAGES``; "always" / "never" force it;
    the ``HEADSTART_COMPILE`` environment variable overrides all three (torch engine only).
    ``engine``: see :func:`headstart.features.engine.resolve_engine` (None: the block's or the
    environment's choice, else auto: OpenVINO for image backbones on the CPU from
    ``OPENVINO_MIN_IMAGES`` images on, when it is installed).
    """
    want = compile_mode(n_images, compile)
    engine = resolve_engine(engine, modality=model.modality, device=torch.device(device), n_images=n_images)
    settings = (precision, str(torch.device(device)), want, engine)
    fingerprint = _fingerprint(model.backbone)  # the head does not change the features
    entries = _EXTRACTORS.setdefault(model, {})
    hit = entries.get(settings)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    for key in [k for k, (f, _) in entries.items() if f != fingerprint]:
        del entries[key]  # stale weights: free the copy
    extractor = FeatureExtractor(model, precision=precision, device=device, compile=want, engine=engine)
    entries[settings] = (fingerprint, extractor)
    return extractor
