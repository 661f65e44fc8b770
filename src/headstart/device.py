"""Device and precision: which device, whether bf16 pays, and the inference context.

Training goes through Hugging Face Accelerate (CPU, one GPU, or many processes under
``accelerate launch`` / torchrun, same code). Inference uses channels_last + bf16 autocast where the
hardware has fast bf16 (AVX512-BF16 / AMX on CPUs, Ampere+ GPUs), inside ``torch.inference_mode``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Iterable, Iterator

import torch
from torch import nn

from headstart.errors import HeadstartError

log = logging.getLogger("headstart")


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str = "cpu", purpose: str = "inference") -> str:
    """"auto" → "bf16" where it is faster, else "fp32".

    On CPUs, bf16 autocast speeds up inference (1.4-2x for Lite0 here), but training is no faster
    and, for the depthwise convolutions of EfficientNet/MobileNet blocks, 2x slower: their bf16
    backward kernels are slow. So "auto" trains in fp32 on CPUs and in bf16 on capable GPUs.
    """
    device = torch.device(device)
    if precision == "fp32":
        return "fp32"
    supported = (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) if device.type == "cuda" \
        else cpu_has_fast_bf16()
    if precision == "bf16" and not supported:
        raise HeadstartError(f"precision='bf16' was requested but this {device.type} has no fast bf16; use 'fp32' or 'auto'.")
    if precision == "auto" and purpose == "train" and device.type == "cpu":
        return "fp32"
    return "bf16" if supported else "fp32"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def inference_context(precision: str, device: torch.device):
    with torch.inference_mode():
        if precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def to_fast_layout(model: nn.Module) -> nn.Module:
    """channels_last: oneDNN / cuDNN convolutions run much faster in NHWC (no-op for non-conv nets)."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def batched_apply(fn, batches: Iterable[torch.Tensor], *, precision: str, device: torch.device) -> Iterator[torch.Tensor]:
    """Apply ``fn`` to each batch under the inference fast path, yielding float32 CPU outputs."""
    with inference_context(precision, device):
        for xb in batches:
            yield fn(xb.to(device, non_blocking=True)).float().cpu()


def chunks(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]
