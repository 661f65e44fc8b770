"""What every backbone provides: a feature extractor, its stages and its preprocessing."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from headstart.data.preprocess import PreprocessConfig
from headstart.storage import file_sha256  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Stage:
    """One freezable unit of a backbone, in input-to-output order."""

    name: str
    param_names: tuple[str, ...]


@dataclass
class Backbone:
    """A pretrained network without its classifier, ready to be put under a new head.

    ``module`` maps a normalised float image batch (or, for text, packed token ids) to pooled features
    of size ``num_features``.
    """

    spec: str  # the registry key it was built from, e.g. "timm:tf_efficientnet_lite0"
    architecture: str  # what rebuilds the module (a timm model name)
    module: nn.Module
    num_features: int
    stages: list[Stage]
    preprocess: PreprocessConfig
    weights_sha256: str  # content hash of the backbone weights (feature-cache key, provenance)
    source_head: nn.Linear | None = None  # the original classifier (ImageNet head), kept for LEEP
    source_classes: int | None = None
    notes: list[str] = field(default_factory=list)
    tokenizer: Any = None  # text backbones: texts -> packed (N, 2, L) token ids + mask

    @property
    def modality(self) -> str:
        return self.preprocess.modality

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's contents (names, dtypes, shapes, values), independent of file format."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def timm_stages(model: nn.Module) -> list[Stage]:
    """Freezable stages from timm's own ``group_matcher`` metadata (stem, block groups, head)."""
    from timm.models import group_parameters

    names = [n for n, _ in model.named_parameters()]
    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError):
        # Model without timm metadata: fall back to one stage per top-level child.
        groups = {}
        for n in names:
            groups.setdefault(n.split(".")[0], []).append(n)
    stages = []
    for params in groups.values():
        params = [p for p in params if p in names]
        if params:
            stages.append(Stage(_stage_name(params), tuple(params)))
    return stages


def _stage_name(params: list[str]) -> str:
    """A readable name: per top-level module, the common path cut after its first index (``blocks.6``)."""
    by_top: dict[str, list[list[str]]] = {}
    for p in params:
        parts = p.split(".")
        path = parts[:-1] or parts  # module path; a bare parameter (cls_token) names itself
        by_top.setdefault(path[0], []).append(path)
    names = []
    for paths in by_top.values():
        common = paths[0]
        for q in paths[1:]:
            n = 0
            while n < min(len(common), len(q)) and common[n] == q[n]:
                n += 1
            common = common[:n]
        for i, part in enumerate(common):
            if part.isdigit():
                common = common[: i + 1]
                break
        names.append(".".join(common))
    return "+".join(names) if len(names) <= 3 else f"{names[0]}..{names[-1]}"
