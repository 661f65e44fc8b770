"""Weights files never run code: a malicious pickle is refused (and its payload never runs), plain
tensor checkpoints load, and damaged files give a clear HeadstartError rather than a traceback."""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import struct
from typing import Callable

import pytest
import torch

from headstart.encoders import get_backbone
from headstart.errors import HeadstartError, UnsafeWeightsError
from headstart.storage import load_weights, save_safetensors

# torch warns that the weights-only unpickler was not tested on pickle protocol 4: that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class TouchPayload:
    """Unpickling this calls ``Path(marker).touch()``: arbitrary code, harmless but visible."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class ShellPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def torch_zip(payload) -> Callable:
    """The usual torch.save zip archive, a real tensor beside the payload."""
    def write(path, marker):
        torch.save({"weight": torch.ones(2), "extra": payload(marker)}, path)
    return write


def raw_pickle(payload) -> Callable:
    """An old-style bare pickle (what many .bin files are)."""
    def write(path, marker):
        path.write_bytes(pickle.dumps({"weight": torch.ones(2), "extra": payload(marker)}))
    return write


def lightning_ckpt(payload) -> Callable:
    """A Lightning-style checkpoint: a clean state_dict with a malicious object beside it."""
    def write(path, marker):
        torch.save({"state_dict": {"weight": torch.ones(2)}, "callbacks": payload(marker)}, path)
    return write


MALICIOUS = {
    "pt-zip-touch": ("model.pt", torch_zip(TouchPayload)),
    "pth-zip-system": ("model.pth", torch_zip(ShellPayload)),
    "bin-raw-pickle-touch": ("pytorch_model.bin", raw_pickle(TouchPayload)),
    "bin-raw-pickle-system": ("pytorch_model.bin", raw_pickle(ShellPayload)),
    "ckpt-beside-state-dict": ("last.ckpt", lightning_ckpt(ShellPayload)),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_pickle_is_refused_and_never_runs(case, tmp_path):
    name, write = MALICIOUS[case]
    path, marker = tmp_path / name, tmp_path / "PWNED"
    write(path, marker)
    assert not marker.exists()
    with pytest.raises(UnsafeWeightsError) as err:
        load_weights(path)
    assert not marker.exists(), "the payload ran"
    message = str(err.value)
    assert str(path) in message and ".safetensors" in message and "allow_unsafe_pickle" in message


def test_the_payload_is_live_when_unsafe_loading_is_asked_for(tmp_path):
    """Control: the same file does run its payload through an unrestricted unpickler, so the refusal
    above is what protects us (not a broken payload)."""
    path, marker = tmp_path / "model.pt", tmp_path / "PWNED"
    torch_zip(TouchPayload)(path, marker)
    load_weights(path, allow_unsafe_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_malicious_pickle_is_refused_through_a_file_backbone(suffix, tmp_path):
    weights, marker = tmp_path / f"weights{suffix}", tmp_path / "PWNED"
    torch_zip(ShellPayload)(weights, marker)
    weights.with_suffix(".json").write_text(json.dumps({"architecture": "test_efficientnet"}))
    with pytest.raises(UnsafeWeightsError, match="Refused to load"):
        get_backbone(f"file:{weights}")
    assert not marker.exists(), "the payload ran"


def test_plain_tensor_state_dict_loads(tmp_path):
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.zeros(4), "step": torch.tensor(7)}
    torch.save(state, tmp_path / "model.pth")
    loaded = load_weights(tmp_path / "model.pth")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_nested_state_dict_checkpoint_loads(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 3, "lr": 0.1}, tmp_path / "last.ckpt")
    assert torch.equal(load_weights(tmp_path / "last.ckpt")["w"], torch.ones(3))


def test_plain_pth_works_as_a_file_backbone(tmp_path):
    import timm

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "weights.json").write_text(json.dumps({"architecture": "test_efficientnet"}))
    bb = get_backbone(f"file:{tmp_path / 'weights.pth'}")
    assert bb.num_features == model.num_features


def safetensors_bytes(tmp_path) -> bytes:
    save_safetensors({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "ok.safetensors")
    return (tmp_path / "ok.safetensors").read_bytes()


@pytest.mark.parametrize("cut", ["header-length", "mid-header", "mid-data", "last-byte"])
def test_truncated_safetensors_is_a_clear_error(cut, tmp_path):
    data = safetensors_bytes(tmp_path)
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    keep = {"header-length": 5, "mid-header": header_end // 2, "mid-data": header_end + 100,
            "last-byte": len(data) - 1}[cut]
    path = tmp_path / "model.safetensors"
    path.write_bytes(data[:keep])
    with pytest.raises(HeadstartError, match="is not a valid safetensors file") as err:
        load_weights(path)
    assert str(path) in str(err.value)


DAMAGED = {
    "empty-safetensors": ("model.safetensors", lambda ok, pth: b"", "is empty"),
    "empty-pt": ("model.pt", lambda ok, pth: b"", "is empty"),
    "truncated-pth": ("model.pth", lambda ok, pth: pth[: len(pth) // 2], "truncated or corrupt"),
    "git-lfs-pointer-as-pt": ("model.pt", lambda ok, pth: b"version https://git-lfs.github.com/spec/v1\n",
                              "not a PyTorch checkpoint: it starts with b'version"),
    "html-page-as-bin": ("pytorch_model.bin", lambda ok, pth: b"<!DOCTYPE html><title>404</title>",
                         "not a PyTorch checkpoint"),
    "garbage-after-zip-magic": ("model.pt", lambda ok, pth: b"PK\x03\x04" + bytes(range(200)), "truncated or corrupt"),
    "safetensors-header-too-large": ("model.safetensors", lambda ok, pth: struct.pack("<Q", 2**62) + b"{}",
                                     "not a valid safetensors file"),
    "unknown-suffix": ("model.onnx", lambda ok, pth: ok, r"Unsupported weights format '\.onnx'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_weights_are_a_clear_error_not_a_security_refusal(case, tmp_path):
    name, make, message = DAMAGED[case]
    torch.save({"w": torch.ones(8)}, tmp_path / "ok.pth")
    path = tmp_path / name
    path.write_bytes(make(safetensors_bytes(tmp_path), (tmp_path / "ok.pth").read_bytes()))
    with pytest.raises(HeadstartError, match=message) as err:
        load_weights(path)
    assert not isinstance(err.value, UnsafeWeightsError)  # damaged is not dangerous: say which
    assert str(path) in str(err.value)


def test_missing_weights_file(tmp_path):
    with pytest.raises(HeadstartError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_cli_train_refuses_a_malicious_file_backbone(tmp_path):
    """End to end: `headstart train --backbone file:evil.pt` explains the refusal; the payload never runs."""
    import subprocess
    import sys

    from conftest import make_images, write_folder

    data = write_folder(tmp_path / "data", *make_images(3))
    evil, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    torch_zip(ShellPayload)(evil, marker)
    (tmp_path / "evil.json").write_text(json.dumps({"architecture": "test_efficientnet"}))
    p = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(data), "--backbone", f"file:{evil}",
                        "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    assert p.returncode == 2 and "Refused to load" in p.stderr and "--allow-unsafe-pickle" in p.stderr
    assert "Traceback" not in p.stderr
    assert not marker.exists()


def test_the_same_weights_and_metadata_give_the_same_file_bytes(tmp_path):
    # safetensors orders __metadata__ from a hash map: without a canonical header, a run's
    # model_sha256 differed between bit-identical models.
    from safetensors import safe_open

    from headstart.storage import file_sha256, save_safetensors

    state = {"b.weight": torch.ones(2, 3), "a.bias": torch.arange(4.0), "c": torch.zeros(1, dtype=torch.int64)}
    meta = {"format": "headstart", "version": "2", "zeta": "z", "alpha": "a"}
    digests = set()
    for i in range(12):
        save_safetensors(state, tmp_path / f"m{i}.safetensors", metadata=dict(reversed(meta.items())) if i % 2 else meta)
        digests.add(file_sha256(tmp_path / f"m{i}.safetensors"))
    assert len(digests) == 1
    with safe_open(str(tmp_path / "m0.safetensors"), "pt") as f:  # still a valid file, same content
        assert f.metadata() == meta
        assert all(torch.equal(f.get_tensor(k), v) for k, v in state.items())
