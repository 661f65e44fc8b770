"""Feature extraction throughput: headstart's fast path vs a naive PyTorch loop, and % of fp32 peak.

Compared: ``headstart.features.compute_features`` (channels_last + bf16 autocast where the CPU has
native bf16 + inference_mode, batch 64) against the loop most people write first: a freshly created
``timm.create_model("tf_efficientnet_lite0", num_classes=0)`` holding the same weights, eval mode,
``torch.no_grad()``, fp32, NCHW, batch 32.

Fair because: same weights, same decoded 224 px Fashion-MNIST pixels (uint8 in, normalisation counted
in both), same thread count, both warmed up before timing, repeats interleaved (fast, naive, fast, ...)
so a busy neighbour hurts both alike; the median of the repeats is reported. The features of the two
are compared too, so the speed-up is not bought with wrong output.
"""
from __future__ import annotations

import argparse
import re
import subprocess

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import _bench as B
from headstart.features import compute_features


def naive_features(net, pixels, mean, std, batch_size=32):
    net.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            x = (pixels[i:i + batch_size].float() / 255.0 - mean) / std
            outs.append(net(x))
    return torch.cat(outs)


def flops_per_image(net, size) -> float:
    """FLOPs (2 x multiply-adds) of one fp32 forward, counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def peak(args) -> tuple[float, str]:
    """(fp32 peak FLOP/s, how it was computed)."""
    info = B.cpuinfo()
    ghz, src = args.ghz, "--ghz"
    if not ghz:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"CPU max MHz:\s*([\d.]+)", out)
        ghz, src = (float(m.group(1)) / 1000, "lscpu 'CPU max MHz'") if m else \
            (info["mhz"] / 1000, "/proc/cpuinfo 'cpu MHz'")
    fpc = args.flops_per_cycle or (64 if "avx512f" in info["flags"] else 32 if "fma" in info["flags"] else 8)
    cores = min(info["cores"], torch.get_num_threads())  # the cores this run computes on
    how = (f"fp32 peak = {cores} cores used x {ghz:.2f} GHz ({src}) x {fpc} FLOPs/cycle/core "
           f"(2 FMA pipes x {fpc // 4} fp32 lanes x 2 FLOPs per FMA{', AVX-512' if fpc == 64 else ''}) "
           f"= {cores * ghz * fpc:.1f} GFLOP/s; a turbo clock above {ghz:.2f} GHz would lower every % shown")
    return cores * ghz * 1e9 * fpc, how


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ghz", type=float, default=0.0, help="override the clock used for the peak")
    ap.add_argument("--flops-per-cycle", type=int, default=0, help="override fp32 FLOPs/cycle/core")
    ap.add_argument("--quick", action="store_true", help="64 images, 1 repeat (smoke test)")
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 64, 1

    B.apply_threads(args)
    print(B.machine())
    bb, model = B.load_model()
    naive = timm.create_model(B.ARCH, num_classes=0)
    naive.load_state_dict(bb.module.state_dict())  # same weights, before headstart touches the layout
    pixels = B.decoded(B.fashion("train", n=args.images)[0], bb.preprocess)
    size = pixels.shape[-1]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.preprocess.mean, bb.preprocess.std))
    precision, cpu = B.fast_precision(), torch.device("cpu")

    def fast():
        return compute_features(model, pixels, precision=precision, device=cpu)

    def slow():
        return naive_features(naive, pixels, mean, std)

    compute_features(model, pixels[:64], precision=precision, device=cpu)  # warm-up (and channels_last)
    naive_features(naive, pixels[:32], mean, std)
    times, feats = {"fast": [], "naive": []}, {}
    for _ in range(args.repeats):
        for name, fn in (("fast", fast), ("naive", slow)):
            t, feats[name] = B.clock(fn)
            times[name].append(t)
    cos = torch.nn.functional.cosine_similarity(feats["fast"], feats["naive"], dim=1)

    flops = flops_per_image(naive, size)
    peak_flops, how = peak(args)
    print(f"{args.images} Fashion-MNIST images at {size} px, {args.repeats} interleaved repeats (median), "
          f"warm-up excluded; fast path precision: {precision}")
    rows = []
    for name, desc in (("fast", f"headstart compute_features ({precision}, channels_last, batch 64)"),
                       ("naive", "timm eager fp32 NCHW, no_grad, batch 32")):
        t = B.median(times[name])
        ips = args.images / t
        rows.append([name, desc, f"{t:.2f}", f"{ips:.1f}", f"{ips * flops / 1e9:.1f}",
                     f"{100 * ips * flops / peak_flops:.1f}%"])
    B.table(["path", "what", "seconds", "images/s", "GFLOP/s", "of fp32 peak"], rows)
    print(f"FLOPs per image: {flops / 1e9:.3f} GFLOP (FlopCounterMode, one fp32 forward, 2 x MACs)")
    print(how)
    print(f"features fast vs naive: cosine similarity min {cos.min():.5f}, mean {cos.mean():.5f}")
    ratio = B.median(times["naive"]) / B.median(times["fast"])
    print(f"RATIO extract_fast_vs_naive: {ratio:.2f}x")


if __name__ == "__main__":
    main()
