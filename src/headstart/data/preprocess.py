"""How inputs must be prepared for a model's weights: one type per modality.

The preprocessing travels with the weights (timm's PretrainedCfg idea): a backbone source fills it in,
the data layer decodes or tokenises by it, and a saved run records it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """How inputs must be prepared for the weights (it travels with them, as in timm's PretrainedCfg)."""

    input_size: int = 224  # square side in pixels after resize and crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875  # resize the short side to input_size / crop_pct, then centre-crop
    modality: ClassVar[str] = "image"  # not a field: it is the type (and keeps to_dict, a cache key, as it was)

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(x) for x in kw[key])
        return cls(**kw)

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> "PreprocessConfig":
        size = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
        return cls(
            input_size=int(size[-1]),
            mean=tuple(float(x) for x in cfg.get("mean", cls.mean)),
            std=tuple(float(x) for x in cfg.get("std", cls.std)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            crop_pct=float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875),
        )



@dataclass(frozen=True, kw_only=True)
class TextPreprocess:
    """How texts become model inputs; saved with the run like the image PreprocessConfig."""

    kind: str  # "hf" (subword tokenizer + transformer), "vectors" (words + embedding table) or "tfidf"
    max_length: int  # tokens per text; longer texts are truncated
    pooling: str = "mean"
    normalize: bool = False  # L2-normalise the pooled embedding (sentence-transformers' Normalize module)
    lowercase: bool = False  # word tokenizer only (GloVe 6B is lowercased)
    # > 0: word 1..ngrams TF-IDF features, alone (kind "tfidf") or beside the encoder's embedding (hybrid)
    ngrams: int = 0
    # hf: texts longer than max_length are encoded in up to `windows` overlapping windows of max_length
    # tokens (`stride` shared by neighbours) and pooled; 1 = truncate to the first max_length tokens
    windows: int = 1
    stride: int = 0
    modality: str = "text"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextPreprocess":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
