"""Does the data pipeline keep up with the model? Decode + resize throughput vs model throughput.

Two image sources, each decoded by the library's own loader (``headstart.data.iter_decoded``: PIL,
two threads, resize + centre crop to 224 px, uint8):

  * Fashion-MNIST arrays (28 x 28 grayscale, ``--fashion`` images);
  * real JPEG files (``--jpegs`` of them) written to a temporary folder: random crops of
    scikit-image's sample photographs, 320-640 px a side, quality 90 (Fashion-MNIST scaled to 448 px
    if scikit-image is missing) — closer to what users train on.

For each source, on the same images:

  1. decode img/s: the loader alone (``iter_decoded`` batches of 64, no model);
  2. extraction img/s: ``compute_features`` on the already-decoded pixels (the library's path for
     that many images, see bench_extract.py);
  3. streamed ``extract_to_disk`` (decoding and extraction together, as ``headstart`` runs it on a
     folder): wall time and the fraction of it the model spent waiting for pixels, with the decode
     thread prefetching two batches ahead (the library default) and without (``prefetch=0``: decode
     and compute take turns), interleaved repeats, median.

And for training: a fine-tune step (Lite0 fp32, forward + backward + AdamW, batch 32) against the
only per-epoch data work, the flip + resized-crop augmentation of already-decoded pixels (images are
decoded once per run, before the first epoch).

Decode and model share the same cores in a streamed run, so the streamed wait fraction is the direct
measure; the ratio printed last is decode img/s / extraction img/s for the slower source (>= 1: the
loader produces images faster than the model consumes them, so a prefetching pipeline never starves it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import _bench as B
import numpy as np
import torch

from headstart.data import as_examples, augment, iter_decoded
from headstart.features.cache import compute_features, extract_to_disk


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct JPEG photos (random crops of scikit-image's samples), 320-640 px a side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    try:
        import skimage.data as sd

        photos = [np.asarray(getattr(sd, name)()) for name in
                  ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")]
        photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in photos]
    except ImportError:
        x, _ = B.fashion("train", n=64)
        photos = [np.asarray(Image.fromarray(a).resize((448, 448))) for a in x]
        photos = [np.stack([p] * 3, -1) for p in photos]
    paths = []
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(src[top:top + ch, left:left + cw, :3].astype(np.uint8))
        side = rng.uniform(320, 640)
        img = img.resize((int(side), int(side * rng.uniform(0.66, 1.0))), Image.BILINEAR)
        p = folder / f"img{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(str(p))
    return paths


def decode_rate(ex, preprocess) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    parts = [p.pixels for p in iter_decoded(ex, preprocess, batch_size=64)]
    return len(ex) / (time.perf_counter() - t0), torch.cat(parts)


def extract_rate(model, pixels, precision) -> float:
    compute_features(model, pixels[:32], precision=precision, device=torch.device("cpu"))  # warm (and build)
    t0 = time.perf_counter()
    compute_features(model, pixels, precision=precision, device=torch.device("cpu"))
    return len(pixels) / (time.perf_counter() - t0)


def streamed(model, ex, preprocess, precision, prefetch) -> dict:
    stats = {}
    extract_to_disk(model, ex, preprocess=preprocess, precision=precision, device=torch.device("cpu"),
                    use_cache=False, prefetch=prefetch, stats=stats)
    return stats


def train_rates(model, pixels, steps: int, batch_size: int = 32) -> tuple[float, float]:
    """(training img/s of fine-tune steps, augmentation img/s) on already-decoded pixels."""
    from headstart.device import to_fast_layout

    model.train()
    to_fast_layout(model)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    y = torch.zeros(batch_size, dtype=torch.long)
    xb = pixels[:batch_size]
    if len(xb) < batch_size:
        xb = xb.repeat((batch_size + len(xb) - 1) // len(xb), 1, 1, 1)[:batch_size]

    def step(x):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(augment(xb, gen))  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step(xb)
    train = steps * batch_size / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        augment(xb, gen)
    aug = steps * batch_size / (time.perf_counter() - t0)
    model.eval()
    return train, aug


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion", type=int, default=2000, help="Fashion-MNIST images")
    ap.add_argument("--jpegs", type=int, default=1000, help="JPEG files written to a temporary folder")
    ap.add_argument("--repeats", type=int, default=3, help="streamed runs per setting (interleaved)")
    ap.add_argument("--train-steps", type=int, default=4, help="timed fine-tune steps of batch 32")
    ap.add_argument("--quick", action="store_true", help="128 + 64 images, 1 repeat, 1 train step")
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.fashion, args.jpegs, args.repeats, args.train_steps = 128, 64, 1, 1

    B.apply_threads(args)
    print(B.machine())
    bb, model = B.load_model()
    model.eval()
    precision = B.fast_precision()
    tmp = Path(tempfile.mkdtemp(prefix="headstart-bench-pipeline-"))
    saved = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(tmp / "cache")  # extract_to_disk writes here, never the user's cache
    try:
        sources = {"fashion-mnist": as_examples(B.fashion("train", n=args.fashion)[0]),
                   "jpeg files": as_examples(write_jpegs(tmp, args.jpegs))}
        rows, ratios, pixels_any = [], {}, None
        for name, ex in sources.items():
            dec, pixels = decode_rate(ex, bb.preprocess)
            ext = extract_rate(model, pixels, precision)
            pixels_any = pixels
            runs = {0: [], 2: []}
            for _ in range(args.repeats):
                for pf in (2, 0):
                    runs[pf].append(streamed(model, ex, bb.preprocess, precision, pf))
            med = {pf: sorted(r, key=lambda s: s["wall_s"])[len(r) // 2] for pf, r in runs.items()}
            ratios[name] = dec / ext
            for pf in (2, 0):
                s = med[pf]
                rows.append([name, f"{len(ex)}", f"{dec:.0f}", f"{ext:.1f}", f"{dec / ext:.2f}",
                             "2 batches" if pf else "off", f"{s['images'] / s['wall_s']:.1f}",
                             f"{100 * s['wait_s'] / s['wall_s']:.1f}%", f"{100 * s['compute_s'] / s['wall_s']:.1f}%"])
        B.table(["source", "images", "decode img/s", "extract img/s", "decode/extract", "prefetch",
                 "streamed img/s", "model waits", "model computes"], rows)
        print(f"extraction path: {compute_features.__module__}.compute_features, precision {precision}; "
              "'model waits' = share of the streamed wall time spent blocked on the next decoded batch")
        train, aug = train_rates(model, pixels_any, args.train_steps)
        print(f"training: fine-tune step (fp32, batch 32, forward + backward + AdamW) {train:.1f} img/s; "
              f"augmentation of decoded pixels (flip + resized crop) {aug:.0f} img/s = {aug / train:.0f}x the "
              "training rate (decoding itself happens once per run, not per epoch)")
        worst = min(ratios, key=ratios.get)
        print(f"RATIO decode_vs_model ({worst}, the slower source): {ratios[worst]:.2f}x")
    finally:
        if saved is None:
            os.environ.pop("HEADSTART_CACHE", None)
        else:
            os.environ["HEADSTART_CACHE"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
