"""The exported graph: preprocessing inside, logits and probabilities out, any batch size.

An image graph takes uint8 pixels already resized and centre-cropped to the run's input size (the
resize depends on the decoder, so it stays outside and export.json says how to do it) and applies the
run's mean/std itself: a deployed model can never be fed inputs normalised the wrong way. A text graph
takes ``input_ids`` and ``attention_mask`` (int64, any batch and length) from the tokenizer saved beside it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from headstart.errors import HeadstartError

OUTPUTS = ("logits", "probabilities")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints, or names of dynamic axes ("batch", "sequence")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _frozen_copy(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module).float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ImageGraph(nn.Module):
    """uint8 (N, 3, S, S) or (N, S, S, 3) → (logits, probabilities), both float32 (N, classes).

    ``temperature``: the run's calibration (``headstart report --calibrate``) divides the logits
    before the softmax, so the probabilities match ``predict``; the logits are left as trained."""

    def __init__(self, model, layout: str = "nchw", temperature: float = 1.0):
        super().__init__()
        self.backbone, self.head = _frozen_copy(model.backbone), _frozen_copy(model.head)
        self.layout = layout
        self.temperature = float(temperature)
        self.register_buffer("mean", model.mean.detach().clone().float())
        self.register_buffer("std", model.std.detach().clone().float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) if self.layout == "nhwc" else images
        x = (x.float() / 255.0 - self.mean) / self.std
        logits = self.head(self.backbone(x))
        return logits, torch.softmax(logits / self.temperature, dim=1)

    def input_specs(self, size: int) -> list[TensorSpec]:
        shape = ("batch", 3, size, size) if self.layout == "nchw" else ("batch", size, size, 3)
        return [TensorSpec("images", "uint8", shape)]

    def example_inputs(self, size: int) -> tuple[torch.Tensor, ...]:
        shape = (2, 3, size, size) if self.layout == "nchw" else (2, size, size, 3)
        return (torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),)


class TextGraph(nn.Module):
    """int64 ``input_ids``, ``attention_mask`` (N, L) → (logits, probabilities), float32 (N, classes)."""

    def __init__(self, model, temperature: float = 1.0):
        super().__init__()
        self.encoder, self.head = _frozen_copy(model.backbone), _frozen_copy(model.head)
        self.temperature = float(temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encoder.forward_ids(input_ids, attention_mask).float())
        return logits, torch.softmax(logits / self.temperature, dim=1)

    def input_specs(self, size: int = 0) -> list[TensorSpec]:
        return [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence"))]

    def example_inputs(self, size: int = 0) -> tuple[torch.Tensor, ...]:
        ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 8, 10, 12, 13, 14, 3]], dtype=torch.long)
        return ids.clamp(max=self._vocab() - 1), (ids > 0).long()

    def _vocab(self) -> int:
        if hasattr(self.encoder, "vocab_size"):  # TF-IDF: rows of the term vocabulary
            return int(self.encoder.vocab_size)
        emb = next(m for m in self.encoder.modules() if isinstance(m, nn.Embedding))
        return emb.num_embeddings


def graph_for(model, layout: str = "nchw", temperature: float = 1.0) -> ImageGraph | TextGraph:
    """The export wrapper of a TransferModel (its weights copied: the run's model is left as it was)."""
    if model.modality == "text":
        if not hasattr(model.backbone, "forward_ids"):
            raise HeadstartError("This run is the hybrid of TF-IDF and an embedding (kept by --strategy auto); it "
                                 "takes two tokenisations, which the exported graph does not yet: serve it with "
                                 "`headstart serve RUN`, or train with --strategy linear-probe to export.")
        return TextGraph(model, temperature)
    return ImageGraph(model, layout, temperature)


def temperature_of(clf) -> float:
    """The calibration temperature stored in a run (1.0 when it was never calibrated)."""
    return float((getattr(clf, "calibration_", None) or {}).get("temperature") or 1.0)


def output_specs(n_classes: int) -> list[TensorSpec]:
    return [TensorSpec(name, "float32", ("batch", n_classes)) for name in OUTPUTS]
