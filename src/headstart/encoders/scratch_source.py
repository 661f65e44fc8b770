"""``scratch:<size>`` backbones: small residual convnets with random weights and no pretraining.

They serve where even Lite0 is too big: as distillation students (``headstart distill RUN --student
scratch:tiny``), and, at the ``small`` size, as the from-scratch baseline every image run is compared
with (``modalities/scratch.py``). They read 32-pixel inputs, the CIFAR regime they are built for.

==========  ========================  ============
size        channels per block        parameters
==========  ========================  ============
tiny        8, 16, 32, 32             about 40 k
small       16, 32, 64, 128           about 0.3 M
==========  ========================  ============
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import Backbone, Stage, tensors_sha256
from headstart.errors import BackboneError, did_you_mean

SCRATCH_WIDTHS = {"tiny": (8, 16, 32, 32), "small": (16, 32, 64, 128)}
SCRATCH_INPUT = 32  # input side in pixels
# Inputs scaled to [0, 1] then centred: no pretraining statistics to match.
SCRATCH_PREPROCESS = PreprocessConfig(input_size=SCRATCH_INPUT, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                      interpolation="bilinear", crop_pct=1.0)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ScratchBody(nn.Module):
    """3x3 stem, four residual blocks (the last three halve the resolution), global average pool.

    Takes normalised float images (N, 3, H, W); returns pooled features (N, widths[-1]).
    """

    def __init__(self, widths: tuple[int, int, int, int] = SCRATCH_WIDTHS["small"]):
        super().__init__()
        w0 = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        cin, blocks = w0, []
        for i, w in enumerate(widths):
            blocks.append(ResidualBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))


def scratch_stages(body: ScratchBody) -> list[Stage]:
    """The stem and each residual block: five freezable units, input to output."""
    parts = [("stem", body.stem)] + [(f"blocks.{i}", b) for i, b in enumerate(body.blocks)]
    return [Stage(name, tuple(f"{name}.{p}" for p, _ in module.named_parameters())) for name, module in parts]


def _widths(name: str) -> tuple[int, int, int, int]:
    if name not in SCRATCH_WIDTHS:
        raise BackboneError(f"Unknown scratch size {name!r}; available: {sorted(SCRATCH_WIDTHS)} "
                            "(e.g. 'scratch:tiny')." + did_you_mean(name, SCRATCH_WIDTHS))
    return SCRATCH_WIDTHS[name]


def build_scratch(name: str) -> Backbone:
    """A randomly initialised :class:`ScratchBody` (seed it with ``torch.manual_seed`` for repeatable weights)."""
    body = ScratchBody(_widths(name))
    return Backbone(spec=f"scratch:{name}", architecture=f"scratch:{name}", module=body,
                    num_features=body.num_features, stages=scratch_stages(body), preprocess=SCRATCH_PREPROCESS,
                    weights_sha256=tensors_sha256(body.state_dict()),
                    notes=["random initialisation: a small convnet without pretraining"])


def empty_scratch(architecture: str) -> ScratchBody:
    """The architecture named ``scratch:<size>``, to load saved weights into."""
    return ScratchBody(_widths(architecture.partition(":")[2]))
