"""Head-training epoch: on cached backbone features vs recomputing the frozen backbone every epoch.

Compared: one epoch of training the new linear head (1280 → 10) with AdamW
  * cached:    on features computed once by ``headstart.features.cache.compute_features`` (what
               headstart's linear-probe / head phase does), and
  * recompute: running the frozen backbone under ``torch.no_grad()`` in eval mode on every batch of
               every epoch, then the head (what a plain loop with a frozen backbone does).

Fair because: the same training loop, head initialisation, AdamW settings, batch size, shuffling and
images; the recompute variant gets the same fast backbone forward as the cache (channels_last, the same
bf16/fp32 precision), so the ratio measures caching alone, not precision or layout. The one-off cost
of computing the cache is reported separately. Warm-up excluded.
"""
from __future__ import annotations

import argparse
import contextlib

import _bench as B
import torch
import torch.nn.functional as F
from torch import nn

from headstart.features.cache import compute_features


def train_epoch(head, opt, inputs, labels, batch_size, gen, features=None) -> float:
    """One epoch; ``features`` (if given) maps a pixel batch to backbone features first."""
    head.train()
    perm = torch.randperm(len(labels), generator=gen)
    total = 0.0
    for i in range(0, len(labels), batch_size):
        idx = perm[i:i + batch_size]
        x = inputs[idx]
        if features is not None:
            x = features(x)
        loss = F.cross_entropy(head(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(labels)


def new_head(dim, classes, seed=0):
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(dim, classes))
    return head, torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05, fused=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3, help="epochs measured for each variant")
    ap.add_argument("--batch-size", type=int, default=128, help="headstart's head-phase batch size")
    ap.add_argument("--quick", action="store_true", help="64 images, 1 epoch (smoke test)")
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.images, args.epochs = 64, 1

    B.apply_threads(args)
    print(B.machine())
    bb, model = B.load_model()
    x, y = B.fashion("train", n=args.images)
    pixels, labels = B.decoded(x, bb.preprocess), torch.from_numpy(y)
    precision, cpu = B.fast_precision(), torch.device("cpu")
    compute_features(model, pixels[:32], precision=precision, device=cpu)  # warm-up (and channels_last)
    t_cache, feats = B.clock(compute_features, model, pixels, precision=precision, device=cpu)

    def backbone(xb):  # the frozen backbone, recomputed: eval mode, no_grad, same precision as the cache
        model.eval()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.no_grad(), amp:
            return model.features(xb).float()

    results = {}
    for name, inputs, fn in (("cached", feats, None), ("recompute", pixels, backbone)):
        head, opt = new_head(bb.num_features, 10)
        gen = torch.Generator().manual_seed(0)
        warm = min(args.batch_size, len(labels))
        train_epoch(head, opt, inputs[:warm], labels[:warm], args.batch_size, gen, fn)  # warm-up
        head, opt = new_head(bb.num_features, 10)
        times, losses = [], []
        for _ in range(args.epochs):
            t, loss = B.clock(train_epoch, head, opt, inputs, labels, args.batch_size, gen, fn)
            times.append(t)
            losses.append(loss)
        results[name] = (sum(times) / len(times), losses[-1])

    print(f"{args.images} Fashion-MNIST images at {pixels.shape[-1]} px, batch {args.batch_size}, AdamW, "
          f"{args.epochs} epoch(s) each (mean), warm-up excluded; backbone precision {precision}")
    B.table(["variant", "s/epoch", "images/s", "last loss"],
            [[n, f"{t:.4f}", f"{args.images / t:.0f}", f"{loss:.4f}"] for n, (t, loss) in results.items()])
    print(f"one-off cache computation (compute_features on {args.images} images): {t_cache:.2f} s")
    c, r = results["cached"][0], results["recompute"][0]
    print(f"40 head epochs (headstart default): cached {t_cache + 40 * c:.1f} s incl. the cache, "
          f"recompute {40 * r:.1f} s")
    print(f"RATIO head_epoch_cached_vs_recompute: {r / c:.1f}x")


if __name__ == "__main__":
    main()
