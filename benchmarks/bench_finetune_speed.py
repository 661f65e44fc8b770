"""Fine-tuning throughput: headstart's training loop against a plain timm fp32 loop, side by side in one run.

    .venv/bin/python -u benchmarks/bench_finetune_speed.py [--steps 8] [--sizes 224,192,160,128] [--accuracy]

Both train EfficientNet-Lite0 (the real ImageNet weights) end to end on the same 256 Fashion-MNIST images
decoded at 224 px, batch 32, AdamW, random flip + resized crop each step. The *plain* loop is what a user
writes from the timm README: NCHW float32 inputs, ``model.train()`` (BatchNorm updating), the per-tensor
AdamW. *headstart* is ``headstart.train.loop.fit`` with strategy ``full`` (every layer trains), as
``headstart train`` runs it: channels_last, BatchNorm statistics kept (``train_bn=False``), fused AdamW,
and ``train_size`` (``--train-size``) for the smaller training crops. The same number of optimizer steps
(after one warm-up epoch that is not timed) is timed for each; img/s counts training images only
(validation excluded). bf16 rows run only where the CPU has fast bf16 (``precision='auto'`` trains in
fp32 on CPUs: the depthwise convolutions' bf16 backward is slower).

``--accuracy`` adds the price in accuracy: two-stage fits on 100 labels/class (1,000 images, 200 of them the
validation split) at 224 px and at ``--accuracy-size`` (160), scored on 2,000 test images at the full 224 px.
The plain loop runs first and again last; ratios are to the faster of its two runs.

Goal of issue 12 (part 5): >= 2x the plain loop's img/s. Results: benchmarks/results/finetune_speed.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _bench import BACKBONE, decoded, fashion, load_model, machine

HERE = Path(__file__).resolve().parent


def plain_loop(pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch: int) -> float:
    """img/s of the loop a timm user writes: float NCHW, model.train(), per-tensor AdamW."""
    from headstart.data import augment

    bb, model = load_model()
    net = torch.nn.Sequential(bb.module, model.head)  # the timm backbone and a new linear head
    mean = torch.tensor(bb.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.preprocess.std).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    net.train()
    seen, t0 = 0, None
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            t0 = time.perf_counter()
        idx = torch.randint(len(pixels), (batch,), generator=gen)
        x = (augment(pixels[idx], gen).float() / 255.0 - mean) / std
        loss = F.cross_entropy(net(x), labels[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += batch if step >= 2 else 0
    return seen / (time.perf_counter() - t0)


def headstart_loop(pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, *, train_size: int | None,
                   precision: str = "fp32") -> float:
    """img/s of headstart's fit (strategy full) over the timed epochs (the first epoch warms up)."""
    from headstart.config import TrainConfig
    from headstart.modalities import modality_for
    from headstart.train.loop import TrainData, fit

    bb, model = load_model()
    per_epoch = len(pixels) // batch
    epochs = 1 + max(1, round(steps / per_epoch))
    cfg = TrainConfig(strategy="full", epochs=epochs, batch_size=batch, lr=1e-3, precision=precision,
                      train_size=train_size, baselines=False, val_fraction=0.0, patience=epochs)
    augment = modality_for(BACKBONE).augmentation(cfg)
    hist = fit(model, bb, TrainData(pixels, labels), cfg, augment=augment)
    timed = hist.epochs[1:]
    return sum(r["images_per_s"] * r["seconds"] for r in timed) / sum(r["seconds"] for r in timed)


def accuracy_rows(sizes: list[int]) -> list[dict]:
    from headstart import TransferClassifier

    x, y = fashion("train", per_class=100)
    xt, yt = fashion("test", n=2000)
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        clf = TransferClassifier(BACKBONE, strategy="two-stage", baselines=False,
                                 train_size=None if size == 224 else size).fit(x, y)
        fit_s = time.perf_counter() - t0
        tuned = [r for r in clf.history_.epochs if r["phase"] != "head"]
        rows.append({"train_size": size, "test_acc": round(float(clf.score(xt, yt)), 5), "fit_seconds": round(fit_s, 1),
                     "fine_tune_images_per_s": round(sum(r["images_per_s"] for r in tuned) / max(len(tuned), 1), 1),
                     "val_acc": clf.final_metrics_().get("val_acc")})
        print(f"   two-stage at {size} px: test {rows[-1]['test_acc']:.4f}, fit {fit_s:.0f} s, "
              f"{rows[-1]['fine_tune_images_per_s']} img/s while fine-tuning", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16, help="timed optimizer steps per configuration")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", default="224,192,160,128", help="headstart training sizes to time")
    ap.add_argument("--accuracy", action="store_true", help="also fit two-stage at 224 px and --accuracy-size")
    ap.add_argument("--accuracy-size", type=int, default=160)
    args = ap.parse_args()
    print(machine(), flush=True)
    from headstart.device import cpu_has_fast_bf16

    x, y = fashion("train", n=256)
    bb, _ = load_model()
    pixels, labels = decoded(x, bb.preprocess), torch.as_tensor(y)
    torch.manual_seed(0)
    plain = plain_loop(pixels, labels, args.steps, args.batch)
    print(f"plain timm fp32 loop at 224 px: {plain:.2f} img/s", flush=True)
    configs = [(int(s), "fp32") for s in args.sizes.split(",")]
    if cpu_has_fast_bf16():
        configs += [(int(s), "bf16") for s in args.sizes.split(",")[:1]]
    rows: list[dict] = []
    for size, precision in configs:
        torch.manual_seed(0)
        ips = headstart_loop(pixels, labels, args.steps, args.batch, train_size=None if size == 224 else size,
                             precision=precision)
        rows.append({"loop": f"headstart fit, {precision}", "size": size, "images_per_s": round(ips, 2),
                     "ratio_to_plain": round(ips / plain, 2)})
        print(f"headstart {precision} at {size} px: {ips:.2f} img/s = {ips / plain:.2f}x the plain loop", flush=True)
    # The plain loop again, last: the faster of its two runs is the reference (a conservative ratio).
    again = plain_loop(pixels, labels, args.steps, args.batch)
    print(f"plain timm fp32 loop at 224 px, again: {again:.2f} img/s", flush=True)
    plain = max(plain, again)
    for r in rows:
        r["ratio_to_plain"] = round(r["images_per_s"] / plain, 2)
    rows.insert(0, {"loop": "plain timm fp32 (NCHW, BN training, AdamW)", "size": 224, "images_per_s": round(plain, 2),
                    "runs": [round(x, 2) for x in (plain, again)]})
    print("ratios to the faster plain run: " + ", ".join(f"{r['loop'].split(', ')[1]} {r['size']} px "
                                                         f"{r['ratio_to_plain']}x" for r in rows[1:]), flush=True)
    result = {"machine": machine(), "steps": args.steps, "batch": args.batch, "throughput": rows}
    if args.accuracy:
        result["accuracy"] = accuracy_rows([224, args.accuracy_size])
    out = HERE / "results" / "finetune_speed.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    for r in rows[1:]:
        tag = f"{r['loop'].split(', ')[1]}_{r['size']}"
        print(f"RATIO finetune_{tag}_vs_plain: {r['ratio_to_plain']}x")


if __name__ == "__main__":
    main()
