"""Peak resident memory of streaming feature extraction (``extract_to_disk``) vs dataset size.

``headstart.features.cache.extract_to_disk`` decodes images in batches and writes features into a
memory-mapped .npy file, so its memory should not grow with the number of images. Each size runs in
its own child process (a fresh interpreter, a fresh empty HEADSTART_CACHE holding only a copy of the
converted weights, so no features are reused) that reports its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) and the growth of that peak over its RSS right after the
model was loaded. The Fashion-MNIST arrays are loaded before that point in every child, so the
growth measures extraction alone. The RSS split at the end (anonymous vs file-backed pages) shows
where any growth lives.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bench as B


def rss_mb() -> dict:
    """Current RSS and its anonymous / file-backed parts, in MB (from /proc/self/status)."""
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def child(n: int) -> None:
    import torch

    from headstart.data import as_examples
    from headstart.features.cache import extract_to_disk

    x, _ = B.fashion("train", n=n)
    ex = as_examples(x)
    bb, model = B.load_model()
    after_load = rss_mb()["VmRSS"]
    peak_at_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    feats, index, skipped = extract_to_disk(model, ex, preprocess=bb.preprocess, precision=B.fast_precision(),
                                            device=torch.device("cpu"))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    assert feats.shape[0] == n and not skipped, (feats.shape, skipped[:3])
    print(json.dumps({"n": n, "seconds": seconds, "after_load": after_load, "peak_at_load": peak_at_load,
                      "peak": peak, "end": rss_mb(), "file_mb": os.path.getsize(feats.filename) / 2**20}))


def run_child(n: int, threads: int) -> dict:
    from headstart.storage import cache_dir

    with tempfile.TemporaryDirectory(prefix="headstart-bench-memory-") as tmp:
        shutil.copytree(cache_dir("weights"), Path(tmp) / "weights")  # features: none, weights: no re-conversion
        env = dict(os.environ, HEADSTART_CACHE=tmp)
        cmd = [sys.executable, __file__, "--child", str(n)] + (["--threads", str(threads)] if threads else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child for N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 60000])
    ap.add_argument("--quick", action="store_true", help="sizes 200 and 1000 (smoke test)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.child:
        args.quick = False
        B.apply_threads(args)
        return child(args.child)
    if args.quick:
        args.sizes = [200, 1000]

    B.apply_threads(args)
    print(B.machine())
    B.weights_file()  # make sure the converted weights exist to copy into each child's cache
    results = [run_child(n, args.threads) for n in sorted(args.sizes)]
    print(f"extract_to_disk on the first N Fashion-MNIST training images, one child process per N, "
          f"precision {B.fast_precision()}, threads {args.threads or 'default'}; MB = 2^20 bytes")
    rows = []
    for r in results:
        flag = "" if r["peak"] > r["peak_at_load"] else " (never above load peak)"
        rows.append([r["n"], f"{r['seconds']:.1f}", f"{r['n'] / r['seconds']:.1f}", f"{r['after_load']:.0f}",
                     f"{r['peak']:.0f}", f"{r['peak'] - r['after_load']:.0f}{flag}", f"{r['end']['RssAnon']:.0f}",
                     f"{r['end']['RssFile']:.0f}", f"{r['file_mb']:.0f}"])
    B.table(["N", "seconds", "images/s", "RSS after load", "peak RSS", "peak growth", "end anon",
             "end file-backed", "features file"], rows)
    print("peak growth = ru_maxrss - RSS after model load. end anon / file-backed = RssAnon / RssFile after "
          "extract_to_disk returned (features are appended to the .npy with plain writes, so they never count "
          "as resident; the returned read-only memmap counts only the pages a caller touches)")
    first, last = results[0], results[-1]
    ratio = (last["peak"] - last["after_load"]) / max(first["peak"] - first["after_load"], 1e-9)
    print(f"peak growth at N={last['n']} / peak growth at N={first['n']} (flat = 1.0):")
    print(f"RATIO peak_rss_growth: {ratio:.2f}")


if __name__ == "__main__":
    main()
