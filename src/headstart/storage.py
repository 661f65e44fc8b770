"""Files: where caches live, atomic writes, and safe loading of weights.

Two rules hold everywhere in headstart:
* an artefact is written to a temporary file, fsynced, then renamed over the target, so a crash
  mid-write leaves the previous version intact;
* weights never go through an unrestricted unpickler (``torch.load(weights_only=True)`` or safetensors).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Iterator

from headstart.errors import HeadstartError, UnsafeWeightsError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def cache_dir(*parts: str) -> Path:
    """``$HEADSTART_CACHE`` (default ``~/.cache/headstart``), joined with ``parts`` and created."""
    root = Path(os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600 (and some writers, safetensors', recreate it so): the artefact
        # should be readable like any file the user writes (0644 under the usual umask 022), not
        # private because it passed through a temporary name.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (os.umask must set one to
    read it, which would briefly affect files other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _canonical_header(tmp)


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with its keys in a fixed order, in place and at the same length.

    safetensors writes ``__metadata__`` from a hash map, so with two or more entries the same tensors
    and metadata give different bytes from one save to the next, and a file hash (a run's
    ``model_sha256``) would differ between bit-identical models. Readers ignore key order; the format
    allows trailing spaces in the header, which keep the tensor data where it was.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
        ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
        raw = json.dumps(ordered, separators=(",", ":")).encode()
        if len(raw) > size:  # cannot happen for the same content; never move the data
            return
        f.seek(8)
        f.write(raw + b" " * (size - len(raw)))


def load_weights(path: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> dict:
    """Load a state dict without ever running code from the file.

    ``.safetensors`` is read directly. Pickle-based formats go through ``torch.load(weights_only=True)``;
    a file that needs arbitrary objects is refused unless ``allow_unsafe_pickle`` is set explicitly.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"Weights file {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise HeadstartError(f"Weights file {str(path)!r} is empty (0 bytes); download or export it again.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise HeadstartError(f"{str(path)!r} is not a valid safetensors file ({exc}).") from exc
    if path.suffix not in PICKLE_SUFFIXES:
        raise HeadstartError(
            f"Unsupported weights format {path.suffix!r} for {str(path)!r}; use .safetensors "
            f"or one of {list(PICKLE_SUFFIXES)}."
        )
    head = _head(path)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # a zip (torch.save) or a binary pickle
        raise HeadstartError(
            f"{str(path)!r} is not a PyTorch checkpoint: it starts with {head!r} (a Git LFS pointer or "
            "an HTML error page is common). Download or export the weights again."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as exc:
        if allow_unsafe_pickle:
            raise HeadstartError(f"Could not load {str(path)!r}: {exc}") from exc
        raise UnsafeWeightsError(
            f"Refused to load {str(path)!r}: it is not a plain tensor checkpoint, and unpickling it "
            f"could run arbitrary code ({_brief(exc)}). "
            "Convert it to .safetensors, or pass allow_unsafe_pickle=True "
            "(CLI: --allow-unsafe-pickle) only if you trust whoever made the file."
        ) from exc
    except Exception as exc:
        # Only an UnpicklingError means the restricted unpickler refused something; anything else
        # (a truncated zip archive, garbage bytes) is a damaged file, not a dangerous one.
        raise HeadstartError(
            f"{str(path)!r} is not a readable PyTorch checkpoint; it may be truncated or corrupt "
            f"({_brief(exc)}). Download or export it again, preferably as .safetensors."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HeadstartError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _brief(exc: BaseException) -> str:
    """An exception as one short line (torch's messages run to paragraphs, or are empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def check_writable(directory: str | os.PathLike) -> Path:
    """Fail early, before any training, when the output directory cannot be written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise HeadstartError(
            f"Cannot write to output directory {str(directory)!r} ({exc.strerror or exc}). "
            "Choose another --out, or fix its permissions / free some disk space."
        ) from exc
    return directory
