"""The parity gate: the exported graph must compute what the PyTorch model computes.

On at least ``parity_inputs`` real inputs (the run's data; flips and resized crops of its images, or
prefixes of its texts, when it has fewer), the exported file and the run's model in fp32 eager must
agree to ``max |Δ logit| <= tolerance`` with the same top-1 class everywhere, or the export fails.
timm checks its exports to 1.5e-3; optimum only warns (optimum #978, #1755: exports shipped broken).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from headstart.data.images import augment
from headstart.encoders.text import sort_by_length, tokenize, trim


@dataclass
class ParityInputs:
    """Model inputs in the run's own form (uint8 NCHW pixels, or packed (N, 2, L) token ids)."""

    tensor: torch.Tensor
    real: int  # how many are the data's own examples; the rest are views or prefixes of them
    origin: str

    def __len__(self) -> int:
        return len(self.tensor)


def image_inputs(pixels: torch.Tensor, n: int, origin: str, seed: int = 0) -> ParityInputs:
    """``n`` images: the first ``n`` of ``pixels``, topped up with random flips and resized crops of them."""
    real = pixels[:n]
    parts, have = [real], len(real)
    generator = torch.Generator().manual_seed(seed)
    while have < n:
        take = real[: n - have]
        parts.append(augment(take, generator))
        have += len(take)
    return ParityInputs(torch.cat(parts), len(real), origin)


def text_inputs(tokenizer, texts: list[str], n: int, origin: str, seed: int = 0) -> ParityInputs:
    """``n`` token rows: the texts, topped up with random-length prefixes of them (other sequence lengths)."""
    tokens = tokenize(tokenizer, list(texts[:n]))
    parts, have = [tokens], len(tokens)
    rng = np.random.default_rng(seed)
    while have < n:
        take = tokens[: n - have].clone()
        lengths = take[:, 1].sum(1)
        for row, length in zip(take, lengths.tolist()):
            cut = int(rng.integers(1, max(length, 1) + 1))
            row[:, cut:] = 0  # keep the first `cut` tokens, pad the rest
        parts.append(take)
        have += len(take)
    return ParityInputs(torch.cat(parts), len(tokens), origin)


def batches(inputs: ParityInputs, modality: str, batch_size: int = 32) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(rows, model input): texts by length (each batch cut to its longest text), images in order."""
    x = inputs.tensor
    order = sort_by_length(x) if modality == "text" else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield idx.numpy(), x[idx]


def graph_arrays(batch: torch.Tensor, modality: str, layout: str) -> tuple[np.ndarray, ...]:
    """The exported graph's inputs for one batch in the run's form."""
    if modality == "text":
        ids, mask = trim(batch)
        return ids.numpy(), mask.numpy()
    return ((batch.permute(0, 2, 3, 1) if layout == "nhwc" else batch).contiguous().numpy(),)


def reference(model, inputs: ParityInputs, *, modality: str) -> np.ndarray:
    """The run's model on every input in fp32 eager: what every exported graph is compared with."""
    out = None
    model = model.float().eval()
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        for idx, batch in batches(inputs, modality):
            r = model(batch).float().numpy()
            if out is None:
                out = np.empty((len(inputs), r.shape[1]), np.float32)
            out[idx] = r
    return out


def compare(ref: np.ndarray, run_graph: Callable[..., np.ndarray], inputs: ParityInputs, *, modality: str,
            layout: str, tolerance: float) -> dict:
    """Logits of ``run_graph`` on every input against the :func:`reference` ones ``ref``, and the verdict."""
    got = np.empty_like(ref)
    for idx, batch in batches(inputs, modality):
        got[idx] = np.asarray(run_graph(*graph_arrays(batch, modality, layout)), dtype=np.float32)
    return verdict(ref, got, tolerance, inputs)


def verdict(ref: np.ndarray, got: np.ndarray, tolerance: float, inputs: ParityInputs | None = None) -> dict:
    """The gate's figures: max and mean |Δ logit|, top-1 agreement, and whether both hold."""
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    finite = bool(np.isfinite(got).all())
    agree = float((ref.argmax(1) == got.argmax(1)).mean()) if len(ref) else 1.0
    max_diff = float(diff.max()) if finite and diff.size else (0.0 if finite else math.inf)
    return {
        "inputs": int(len(ref)),
        "real_inputs": inputs.real if inputs is not None else int(len(ref)),
        "origin": inputs.origin if inputs is not None else None,
        "max_abs_logit_diff": max_diff,
        "mean_abs_logit_diff": float(diff.mean()) if finite and diff.size else max_diff,
        "top1_agreement": agree,
        "disagreements": int((ref.argmax(1) != got.argmax(1)).sum()),
        "tolerance": tolerance,
        "passed": finite and max_diff <= tolerance and agree == 1.0,
    }
