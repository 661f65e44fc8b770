"""``partial`` fine-tuning epoch with the frozen-prefix cache vs without it.

Compared: ``TransferClassifier(strategy="partial", freeze_stages=K, augment=False)`` (K=6 by default) on Lite0 with
``use_feature_cache=True`` (the frozen stem + blocks 0-3 run once, their output is reused every epoch)
vs ``use_feature_cache=False`` (the whole network runs every epoch, the prefix under the same freeze).

Fair because: both are the same headstart training run (same images, seed, optimizer, batch size,
precision, no validation set); only the flag differs. Per-epoch seconds come from the library's own
``history_.epochs`` records; the one-off prefix computation (phase time minus its epochs) is reported
separately, and so is the same overhead of the run without the cache. A short fit of each variant is
run first as warm-up.
"""
from __future__ import annotations

import argparse

import _bench as B

from headstart import TransferClassifier


def run(x, y, *, epochs, batch_size, cache, freeze):
    clf = TransferClassifier(B.BACKBONE, strategy="partial", freeze_stages=freeze, augment=False, epochs=epochs,
                             batch_size=batch_size, use_feature_cache=cache, val_fraction=0.0, seed=0)
    clf.fit(x, list(y))
    recs = clf.history_.epochs
    per_epoch = [r["seconds"] for r in recs]
    one_off = clf.history_.phases[0].get("prefix_cache_seconds", clf.history_.phases[0]["seconds"] - sum(per_epoch))
    return per_epoch, one_off, recs[-1]["train_loss"]


def prefix_cut(freeze: int) -> str:
    """Check that the prefix cache really applies (else both runs are alike) and what it can save at best."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from headstart.encoders.chain import sequential_chain
    from headstart.features.prefix import split_for_prefix_cache
    from headstart.train.strategies import apply_freeze

    bb, model = B.load_model()
    apply_freeze(model, bb.stages, freeze)
    split = split_for_prefix_cache(model)
    if split is None:
        return "WARNING: split_for_prefix_cache returned None: the prefix cache does NOT apply"
    chain, cut = sequential_chain(model.backbone), split[2]
    flops, x = [], torch.zeros(1, 3, bb.preprocess.input_size, bb.preprocess.input_size)
    with torch.no_grad():
        for _, m in chain:
            with FlopCounterMode(display=False) as counter:
                x = m.eval()(x)
            flops.append(counter.get_total_flops())
    share = sum(flops[:cut]) / sum(flops)
    # Uncached epoch: prefix fwd + suffix fwd + suffix bwd (~2x fwd); cached: suffix fwd + bwd only. Real
    # times differ: the high-resolution early layers are memory-bound, i.e. slower per FLOP.
    ceiling = (1 + 2 * (1 - share)) / (3 * (1 - share))
    return (f"prefix cache applies: the first {cut} of {len(chain)} chain modules are cached "
            f"({', '.join(n for n, _ in chain[:cut])}), {100 * share:.0f}% of forward FLOPs; "
            f"were time proportional to FLOPs (backward = 2 x forward) the ratio would be {ceiling:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--freeze-stages", type=int, default=6,
                    help="stages kept frozen (Lite0 has 8; 6 trains blocks.5 and blocks.6 + conv_head)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup-images", type=int, default=0, help="images in the warm-up fits (default: a batch)")
    ap.add_argument("--quick", action="store_true", help="32 images, 1 epoch, 8 warm-up images (smoke test)")
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.images, args.epochs, args.warmup_images = 32, 1, 8
    warm = args.warmup_images or args.batch_size

    B.apply_threads(args)
    print(B.machine())
    x, y = B.fashion("train", n=args.images)
    for cache in (True, False):  # warm-up: one batch, one epoch of each variant
        run(x[:warm], y[:warm], epochs=1, batch_size=args.batch_size, cache=cache, freeze=args.freeze_stages)
    results = {cache: run(x, y, epochs=args.epochs, batch_size=args.batch_size, cache=cache, freeze=args.freeze_stages)
               for cache in (True, False)}

    print(f"partial, freeze_stages={args.freeze_stages}, no augmentation, {args.images} Fashion-MNIST images, batch "
          f"{args.batch_size}, {args.epochs} epoch(s) (mean s/epoch), precision {B.fast_precision()}, "
          "warm-up excluded")
    print(prefix_cut(args.freeze_stages))
    rows = []
    for cache, (per_epoch, one_off, loss) in results.items():
        mean = sum(per_epoch) / len(per_epoch)
        rows.append(["prefix cache" if cache else "no cache", f"{mean:.2f}", f"{args.images / mean:.1f}",
                     f"{one_off:.2f}", f"{loss:.4f}"])
    B.table(["variant", "s/epoch", "images/s", "one-off s", "last train loss"], rows)
    print("one-off s = the prefix forward over all images, once (cache); without the cache: setup only")
    with_c, without = (sum(results[c][0]) / len(results[c][0]) for c in (True, False))
    print(f"RATIO prefix_epoch_cached_vs_uncached: {without / with_c:.2f}x")


if __name__ == "__main__":
    main()
