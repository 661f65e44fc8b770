"""``file:<path>`` backbones: local safetensors weights plus a JSON config saying what they are.

Accepted layouts:
* a directory with ``model.safetensors`` and ``config.json``;
* ``weights.safetensors`` (or .pt/.pth/.bin, loaded weights-only) with ``weights.json`` beside it;
* a headstart run directory (``headstart.json``): transfer again from your own fine-tuned model.

The JSON needs ``architecture`` (a timm model name); ``preprocess`` (input_size, mean, std,
interpolation, crop_pct) is taken from timm's defaults for that architecture when absent.
"""
from __future__ import annotations

import json
from pathlib import Path

from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import Backbone, timm_stages
from headstart.encoders.cut import truncate_module
from headstart.encoders.timm_source import from_timm_model
from headstart.errors import BackboneError
from headstart.storage import PICKLE_SUFFIXES, load_weights


def _locate(path: Path) -> tuple[Path, dict]:
    if path.is_dir():
        if (path / "headstart.json").is_file():
            meta = json.loads((path / "headstart.json").read_text())
            return path / "model.safetensors", {
                "architecture": meta["backbone"]["architecture"],
                "preprocess": meta["preprocess"],
                "prefix": "backbone.",
                "cut_stage": meta.get("config", {}).get("cut_stage"),  # a truncated run stays truncated
            }
        weights, config = path / "model.safetensors", path / "config.json"
    else:
        weights, config = path, path.with_suffix(".json")
    if not weights.is_file():
        raise BackboneError(f"No weights at {str(weights)!r}. A file: backbone needs model.safetensors.")
    if not config.is_file():
        raise BackboneError(
            f"No config at {str(config)!r}. Write a JSON file there such as "
            '{"architecture": "resnet18"} naming the timm architecture of the weights.'
        )
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{str(config)!r} is not valid JSON: {exc}") from exc
    if "architecture" not in cfg:
        raise BackboneError(f"{str(config)!r} must name the timm 'architecture' of the weights.")
    return weights, cfg


def build_file(spec_path: str, *, allow_unsafe_pickle: bool = False) -> Backbone:
    import timm

    path = Path(spec_path).expanduser()
    if not path.exists():
        raise BackboneError(f"file: backbone {spec_path!r} does not exist.")
    weights, cfg = _locate(path)
    if weights.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise BackboneError(f"Unsupported weights file {str(weights)!r}; use .safetensors.")
    arch = cfg["architecture"].removeprefix("timm:")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=cfg.get("num_classes", 0))
    except RuntimeError as exc:
        raise BackboneError(f"{arch!r} in {str(weights)!r}'s config is not a timm architecture.") from exc
    if cfg.get("cut_stage") is not None:

        model, _, _ = truncate_module(model, timm_stages(model), int(cfg["cut_stage"]))
    state = load_weights(weights, allow_unsafe_pickle=allow_unsafe_pickle)
    prefix = cfg.get("prefix", "")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneError(
            f"{str(weights)!r} does not fit architecture {arch!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )
    pre = cfg.get("preprocess")
    preprocess = PreprocessConfig.from_dict(pre) if pre else None
    return from_timm_model(model, spec=f"file:{spec_path}", architecture=arch,
                           notes=[f"local weights {str(weights)!r}"], preprocess=preprocess)
