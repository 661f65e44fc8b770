"""The network a user trains: a pretrained backbone, a new head, and the input normalisation."""
from __future__ import annotations

import torch
from torch import nn

from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import Stage


class TransferModel(nn.Module):
    """``backbone`` (pooled features) → ``head`` (a new linear classifier).

    Normalisation lives inside the model as buffers, so a saved model can never be fed inputs
    normalised the wrong way: it takes uint8 images (0..255) or floats in [0, 1], NCHW. A text model
    (``preprocess.modality == "text"``) takes packed token ids + attention mask, (N, 2, L) int64.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 preprocess: PreprocessConfig, stages: list[Stage] | None = None, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.stages = list(stages or [])  # freezable units of the backbone, input to output
        self.train_bn = True  # False: every BatchNorm keeps its running statistics (see TrainConfig)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
        self.modality = preprocess.modality  # "image": uint8 pixels in; "text": packed token ids
        if self.modality == "image":
            self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.modality != "image":
            return x  # token ids go to the encoder as they are
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    @property
    def _channels_last(self) -> bool:
        w = next((p for p in self.backbone.parameters() if p.dim() == 4), None)
        return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode:
            freeze_batchnorm_stats(self.backbone, all_layers=not self.train_bn)
        return self


def freeze_batchnorm_stats(module: nn.Module, all_layers: bool = False) -> None:
    """Put every BatchNorm whose affine parameters are frozen into eval mode.

    A frozen layer must be truly frozen: in train mode BatchNorm would keep updating its running
    mean/var (keras #9965, Lightning #15063) and normalise with batch statistics, silently changing
    the features the head was trained on. With ``all_layers`` even trainable BatchNorm layers keep
    their pretrained statistics (only their scale and shift learn), the safer choice for small
    datasets, where a few dozen batches give noisy estimates.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if all_layers or not params or not any(p.requires_grad for p in params):
                m.eval()
