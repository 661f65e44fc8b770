"""End-to-end wall time to a target test accuracy: headstart vs a plain timm + PyTorch fine-tuning loop.

Task: Fashion-MNIST, 100 labelled training images per class (1,000), ImageNet-pretrained
EfficientNet-Lite, accuracy on the first ``--test-limit`` test images.

  * headstart, what a user runs (``--backbone auto``, the default): ``headstart rank`` over Lite0/1/2
    on the 1,000 labelled images (LogME on frozen features; the test images are never seen), then
    ``TransferClassifier(<rank's first row>, strategy="linear-probe", baselines=False)`` with every
    other setting at the library default (20 % held out for early stopping, >= 500 head steps on
    cached features), fit, then score the test images once. The clock covers ranking, feature
    extraction, training and testing; the feature cache starts empty (a fresh HEADSTART_CACHE).
    ``--backbone SPEC`` skips the ranking; ``--head-min-steps`` / ``--val-fraction`` change the probe.
  * baseline, on the same backbone and weights (the local safetensors file headstart loads), written
    the way timm's quickstart suggests: ``timm.create_model(..., pretrained=True, num_classes=10)``,
    ``resolve_data_config`` + ``create_transform`` applied to PIL images in a torch Dataset/DataLoader
    every epoch, full fine-tuning with AdamW in fp32, test accuracy after every epoch, stop at the target
    or after ``--max-epochs`` or ``--budget`` seconds (default 1,800). If it never reaches the target,
    its time is a lower bound on its time to target and so is the ratio, printed as ">=".

Fair because: same images, labels, weights and preprocessing (timm's eval transform equals headstart's
resize + centre crop; neither augments), the baseline trains on all the labelled images (headstart on
80 % of them), and both clocks include loading the model, preparing the images, training and testing.
Nothing on headstart's side was chosen by looking at test accuracy: the backbone comes from ``rank``
and the probe from the library defaults. The Fashion-MNIST arrays are read before either clock starts;
a short warm-up runs first.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import _bench as B
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

CANDIDATES = ["timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite1", "timm:tf_efficientnet_lite2"]


def run_headstart(x_tr, y_tr, x_te, y_te, args):
    """Returns (seconds, test accuracy, backbone, rank seconds)."""
    from headstart import TransferClassifier
    from headstart.assess.rank import rank
    from headstart.storage import cache_dir

    with tempfile.TemporaryDirectory() as tmp:  # cold feature cache, but no re-conversion of the weights
        shutil.copytree(cache_dir("weights"), Path(tmp) / "weights")
        saved = dict(os.environ)
        os.environ["HEADSTART_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            spec, rank_s = args.backbone, 0.0
            if spec == "auto":
                rows = rank(x_tr, CANDIDATES, y=list(y_tr))
                spec, rank_s = rows[0]["backbone"], time.perf_counter() - t0
                print(f"rank ({rank_s:.1f} s): " + ", ".join(f"{r['backbone'].split('_')[-1]} LogME {r['logme']:.3f}"
                                                            for r in rows), flush=True)
            opts = {k: v for k, v in (("head_min_steps", args.head_min_steps), ("val_fraction", args.val_fraction))
                    if v is not None}
            clf = TransferClassifier(spec, strategy="linear-probe", baselines=False, seed=0, **opts).fit(x_tr, list(y_tr))
            acc = clf.score(x_te, list(y_te))
            return time.perf_counter() - t0, acc, spec, rank_s
        finally:
            os.environ.clear()
            os.environ.update(saved)


class PILDataset(Dataset):
    """Fashion-MNIST as PIL images, transformed on every access (torchvision style)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i]).convert("RGB")), int(self.labels[i])


@torch.no_grad()
def accuracy(model, loader):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def run_baseline(x_tr, y_tr, x_te, y_te, args, arch):
    """Returns (seconds, best accuracy, reached, per-epoch [(epoch, seconds so far, accuracy)])."""
    weights = B.weights_file(arch)  # outside the clock: headstart's side did not pay for conversion either
    t0 = time.perf_counter()
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=weights), num_classes=10)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    train = DataLoader(PILDataset(x_tr, y_tr, transform), batch_size=32, shuffle=True,
                       num_workers=args.workers, generator=torch.Generator().manual_seed(0))
    test = DataLoader(PILDataset(x_te, y_te, transform), batch_size=64, num_workers=args.workers)
    opt = torch.optim.AdamW(model.parameters(), lr=args.baseline_lr)
    loss_fn = nn.CrossEntropyLoss()
    log, best = [], 0.0
    for epoch in range(1, args.max_epochs + 1):
        model.train()
        for x, y in train:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(model, test)
        best = max(best, acc)
        log.append((epoch, time.perf_counter() - t0, acc))
        if acc >= args.target or (args.budget and time.perf_counter() - t0 > args.budget):
            break
    return time.perf_counter() - t0, best, best >= args.target, log


def warm_up():
    """One fp32 train step and one bf16 inference forward, so library initialisation is not timed."""
    for spec in CANDIDATES:  # converts the packaged weights once, outside both clocks
        B.weights_file(spec.split(":", 1)[1])
    net = timm.create_model(B.ARCH, num_classes=10)
    net(torch.zeros(2, 3, 224, 224)).sum().backward()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        net.eval()(torch.zeros(2, 3, 224, 224))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.85, help="test accuracy to reach")
    ap.add_argument("--per-class", type=int, default=100, help="labelled training images per class")
    ap.add_argument("--test-limit", type=int, default=2000, help="first N test images used for accuracy")
    ap.add_argument("--backbone", default="auto",
                    help="headstart's backbone, or auto: the first row of `rank` over Lite0/1/2 on the training "
                         "images (the baseline fine-tunes the same one)")
    ap.add_argument("--head-min-steps", type=int, default=None,
                    help="headstart: at least this many head optimizer steps (default: the library's, 500)")
    ap.add_argument("--val-fraction", type=float, default=None,
                    help="headstart: held out for early stopping (default: the library's, 0.2)")
    ap.add_argument("--max-epochs", type=int, default=20, help="baseline: give up after this many epochs")
    ap.add_argument("--budget", type=float, default=1800,
                    help="baseline: give up after this many seconds (0: none)")
    ap.add_argument("--baseline-lr", type=float, default=3e-4, help="baseline AdamW learning rate")
    ap.add_argument("--workers", type=int, default=0, help="baseline DataLoader workers")
    ap.add_argument("--quick", action="store_true", help="5 per class, 100 test images, 1 baseline epoch, 100 head steps")
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.per_class, args.test_limit, args.max_epochs, args.head_min_steps = 5, 100, 1, 100
        args.backbone = B.BACKBONE if args.backbone == "auto" else args.backbone

    B.apply_threads(args)
    print(B.machine())
    x_tr, y_tr = B.fashion("train", per_class=args.per_class)
    x_te, y_te = B.fashion("test", n=args.test_limit)
    warm_up()
    hs_t, hs_acc, spec, rank_s = run_headstart(x_tr, y_tr, x_te, y_te, args)
    arch = spec.split(":", 1)[1]
    bl_t, bl_acc, bl_ok, log = run_baseline(x_tr, y_tr, x_te, y_te, args, arch)

    print(f"Fashion-MNIST, {len(x_tr)} labelled training images ({args.per_class}/class); accuracy on the "
          f"first {len(x_te)} of 10,000 test images (--test-limit); target {args.target:.2f}")
    print("baseline epochs (epoch, seconds so far, test accuracy): "
          + ", ".join(f"({e}, {t:.0f}s, {a:.3f})" for e, t, a in log))
    hs_ok = hs_acc >= args.target
    B.table(["pipeline", "wall s", "test acc", "reached target"], [
        [f"headstart {'rank (' + format(rank_s, '.0f') + ' s) -> ' if rank_s else ''}{arch} linear-probe",
         f"{hs_t:.1f}", f"{hs_acc:.4f}", "yes" if hs_ok else "NO"],
        [f"timm + PyTorch {arch} full fine-tune fp32 (lr {args.baseline_lr:g}), {len(log)} epoch(s)",
         f"{bl_t:.1f}", f"{bl_acc:.4f}", "yes" if bl_ok else f"NO: {bl_t:.0f}s is a lower bound"]])
    if not bl_ok:
        print(f"the baseline never reached {args.target:.2f}: its {bl_t:.1f} s is only a lower bound on its "
              "time to target, so the ratio below is a lower bound too")
    if not hs_ok:
        print(f"WARNING: headstart did not reach {args.target:.2f} either; the ratio compares wall times only")
    bound = ">= " if not bl_ok else ""
    print(f"RATIO e2e_time_to_target: {bound}{bl_t / hs_t:.2f}x"
          + (" (lower bound: the baseline never reached the target)" if not bl_ok else ""))


if __name__ == "__main__":
    main()
