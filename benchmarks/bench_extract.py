"""Feature extraction throughput: headstart's fast path vs a naive PyTorch loop, and % of fp32 peak.

Compared, on the same decoded 224 px Fashion-MNIST images:

  * naive: the loop most people write first: a freshly created
    ``timm.create_model("tf_efficientnet_lite0", num_classes=0)`` holding the same weights, eval mode,
    ``torch.no_grad()``, fp32, NCHW, batch 32, normalisation in the loop.
  * headstart, compiled: ``headstart.features.cache.compute_features`` as the library runs it on a large
    dataset (``compile="always"``, what ``compile="auto"`` picks from ``COMPILE_MIN_IMAGES`` images on):
    a private copy of the backbone with every BatchNorm folded into its convolution in fp32, weights
    cast once to bf16 where the CPU has native bf16 (else fp32), channels_last, micro-batches of 32 (8 on
    one thread), ``torch.compile`` with inductor freezing. Its one-off compile time is printed (cold:
    inductor's on-disk cache is pointed at a fresh folder unless ``--warm-compile-cache``), and its
    throughput amortised over 60,000 images (``--amortise``) as well as in steady state.
  * headstart, eager: the same prepared copy without compiling (what smaller datasets get).
  * headstart, OpenVINO: ``compute_features`` under the OpenVINO engine (what ``engine="auto"`` picks
    from 256 images on when OpenVINO is installed): the uint8-in graph converted and compiled by
    OpenVINO's CPU plugin (bf16 where the CPU has it), checked against fp32 torch on its first images.
    Its setup (conversion, cold: the converted-graph cache is pointed at a fresh folder) is printed.
  * raw OpenVINO: what a user would write by hand on the same graph: the naive timm model with the
    normalisation in a wrapper, ``ov.convert_model`` + ``compile_model`` (bf16 hint where the CPU has
    it), timed two ways, one synchronous request of 64 images at a time (LATENCY hint) and a
    THROUGHPUT-hint ``AsyncInferQueue`` of 16-image requests; the faster is the bar for headstart.
  * ``--more`` adds the previous fast path (bf16 autocast + channels_last on the unfolded model,
    batch 64) and the fp32 variants of headstart's path.

Fair because: same weights, same uint8 pixels in (normalisation counted in every path), same thread
count, all warmed up before timing (compilation excluded from the steady state, reported apart),
repeats interleaved (naive, compiled, eager, naive, ...) so a busy neighbour hurts all alike; the
median of the repeats is reported. Every path's features are compared with the naive fp32 ones
(cosine similarity), so no speed-up is bought with wrong output.

The peak. FLOPs per image are counted by torch's FlopCounterMode on one fp32 forward of the model
(2 FLOPs per multiply-add: 0.77 GFLOP for Lite0 at 224 px). The fp32 peak is
cores x clock x 64 FLOPs/cycle/core: two AVX-512 FMA pipes x 16 fp32 lanes x 2 FLOPs per FMA (the
clock is ``lscpu``'s max MHz, else ``/proc/cpuinfo``; override with ``--ghz``). That is the yardstick
the target names, but with bf16 weights the convolutions run on AVX512-BF16 / AMX units whose bf16 peak
is far higher (AMX: about 1,024 bf16 FLOPs/cycle/core), so "% of fp32 peak" is then a measure of
useful work per second against an fp32 machine, not of how busy the bf16 units are. Lite0's
depthwise convolutions and elementwise layers are bound by memory traffic, not FLOPs, on any CPU.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time

import _bench as B
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from headstart.features.cache import compute_features
from headstart.features.engine import cpu_has_bf16, openvino, use_engine
from headstart.features.fastpath import feature_extractor


def naive_features(net, pixels, mean, std, batch_size=32):
    net.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            x = (pixels[i:i + batch_size].float() / 255.0 - mean) / std
            outs.append(net(x))
    return torch.cat(outs)


def autocast_features(net, pixels, mean, std, batch_size=64):
    """headstart's previous fast path: bf16 autocast + channels_last on the unfolded model, batch 64."""
    outs = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(pixels), batch_size):
            x = ((pixels[i:i + batch_size].float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
            outs.append(net(x).float())
    return torch.cat(outs)


class _Normalised(torch.nn.Module):
    """The naive model with its normalisation inside: uint8 NCHW in, features out (raw OpenVINO's graph)."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x):
        return self.net((x.float() / 255.0 - self.mean) / self.std)


def raw_openvino(net, mean, std, pixels, bf16: bool):
    """{mode: callable} running the naive model through OpenVINO by hand, and the compile setup seconds."""
    import numpy as np
    import openvino as ov

    t0 = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(_Normalised(net, mean, std).eval(), example_input=pixels[:2],
                                 input=[(ov.PartialShape([-1, *pixels.shape[1:]]), ov.Type.u8)])
    core, hint = ov.Core(), {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
    latency = core.compile_model(model, "CPU", {**hint, "PERFORMANCE_HINT": "LATENCY"})
    throughput = core.compile_model(model, "CPU", {**hint, "PERFORMANCE_HINT": "THROUGHPUT"})
    setup = time.perf_counter() - t0
    arr = pixels.numpy()
    request = latency.create_infer_request()

    def sync(bs=64):
        return torch.cat([torch.from_numpy(np.array(request.infer([arr[i:i + bs]])[0]))
                          for i in range(0, len(arr), bs)])

    def queued(bs=16):
        queue, out = ov.AsyncInferQueue(throughput), {}
        queue.set_callback(lambda req, i: out.__setitem__(i, np.array(req.get_output_tensor(0).data)))
        for i in range(0, len(arr), bs):
            queue.start_async([arr[i:i + bs]], i)
        queue.wait_all()
        return torch.cat([torch.from_numpy(out[i]) for i in sorted(out)])

    return {"raw openvino sync": sync, "raw openvino async": queued}, setup


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
    if "amx_bf16" in info["flags"] or "avx512_bf16" in info["flags"]:
        how += ("\nnote: this CPU has native bf16 (AVX512-BF16/AMX), whose peak is far above the fp32 one: "
                "'% of fp32 peak' for a bf16 path is useful work per second against the fp32 yardstick")
    return cores * ghz * 1e9 * fpc, how


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amortise", type=int, default=60_000, help="dataset size the compile time is amortised over")
    ap.add_argument("--more", action="store_true", help="also time the previous autocast path and the fp32 variants")
    ap.add_argument("--ghz", type=float, default=0.0, help="override the clock used for the peak")
    ap.add_argument("--flops-per-cycle", type=int, default=0, help="override fp32 FLOPs/cycle/core")
    ap.add_argument("--warm-compile-cache", action="store_true",
                    help="let torch.compile reuse inductor's on-disk cache (default: a fresh one, so the "
                         "compile time shown is what a first run pays)")
    ap.add_argument("--quick", action="store_true", help="64 images, 1 repeat (smoke test)")
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows")
    B.add_threads_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 64, 1

    B.apply_threads(args)
    print(B.machine())
    if not args.warm_compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="headstart-bench-inductor-")
    bb, model = B.load_model()
    naive = timm.create_model(B.ARCH, num_classes=0)
    naive.load_state_dict(bb.module.state_dict())  # same weights, before headstart touches anything
    pixels = B.decoded(B.fashion("train", n=args.images)[0], bb.preprocess)
    size = pixels.shape[-1]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.preprocess.mean, bb.preprocess.std))
    precision, cpu = B.fast_precision(), torch.device("cpu")

    paths = {"naive": ("timm eager fp32 NCHW, no_grad, batch 32", lambda: naive_features(naive, pixels, mean, std))}
    setup = {"naive": 0.0}
    engines = {"compiled": "torch", "eager": "torch", "compiled fp32": "torch", "eager fp32": "torch",
               "openvino": "openvino"}

    def add(name, prec, compile_):
        engine = engines[name]
        t0 = time.perf_counter()
        with use_engine(engine):
            ext = feature_extractor(model, precision=prec, device=cpu, n_images=len(pixels), compile=compile_)
            ext(pixels[:ext.batch_size])  # builds the copy, checks the fold / converts, compiles (once)
        setup[name] = time.perf_counter() - t0

        def run():
            with use_engine(engine):
                return compute_features(model, pixels, precision=prec, device=cpu, compile=compile_)
        paths[name] = (f"headstart compute_features: {ext.describe}", run)

    ov_ok = openvino() is not None and not args.no_openvino
    if ov_ok:
        os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="headstart-bench-cache-")  # a cold conversion
        raw_net = timm.create_model(B.ARCH, num_classes=0)
        raw_net.load_state_dict(bb.module.state_dict())
        raw, raw_setup = raw_openvino(raw_net.eval(), mean, std, pixels, bf16=precision == "bf16" and cpu_has_bf16())
        for name, fn in raw.items():
            paths[name] = (f"{name.split()[-1]}: OpenVINO by hand on the naive graph", fn)
            setup[name] = raw_setup

    # The extractor is cached per model and settings: build each right before its first timing.
    variants = [("compiled", precision, "always"), ("eager", precision, "never")]
    if ov_ok:
        variants.append(("openvino", precision, "never"))
    if args.more:
        if precision == "bf16":
            variants += [("compiled fp32", "fp32", "always"), ("eager fp32", "fp32", "never")]
        ac = timm.create_model(B.ARCH, num_classes=0)
        ac.load_state_dict(bb.module.state_dict())
        ac.eval().to(memory_format=torch.channels_last)
        paths["autocast"] = ("previous path: bf16 autocast, channels_last, unfolded, batch 64",
                             lambda: autocast_features(ac, pixels, mean, std))
        setup["autocast"] = 0.0
    names_in_order = (["naive"] + [v[0] for v in variants] + (["autocast"] if args.more else [])
                      + ([n for n in paths if n.startswith("raw openvino")] if ov_ok else []))
    times = {name: [] for name in names_in_order}
    feats = {}
    naive_features(naive, pixels[:32], mean, std)  # warm-up
    if args.more:
        autocast_features(ac, pixels[:64], mean, std)
    for name in names_in_order:
        if name.startswith("raw openvino"):
            paths[name][1]()  # warm-up
    for r in range(args.repeats):
        for name in names_in_order:
            if r == 0 and name not in paths:
                prec, comp = next((p, c) for n, p, c in variants if n == name)
                add(name, prec, comp)
                paths[name][1]()  # one full warm pass at this shape
            t, feats[name] = B.clock(paths[name][1])
            times[name].append(t)

    flops = flops_per_image(naive, size)
    peak_flops, how = peak(args)
    print(f"{args.images} Fashion-MNIST images at {size} px, {args.repeats} interleaved repeats (median), "
          f"warm-up and compilation excluded; library precision: {precision}; amortised = over "
          f"{args.amortise:,} images including the one-off setup (copy, fold, compile)")
    rows = []
    base = B.median(times["naive"])
    for name in names_in_order:
        t = B.median(times[name])
        ips = args.images / t
        amort = args.amortise / (setup[name] + args.amortise / ips)
        cos = torch.nn.functional.cosine_similarity(feats[name], feats["naive"], dim=1)
        rows.append([name, f"{setup[name]:.1f}", f"{ips:.1f}", f"{amort:.1f}", f"{base / t:.2f}x",
                     f"{100 * ips * flops / peak_flops:.1f}%", f"{cos.min():.5f}", f"{cos.mean():.5f}"])
    B.table(["path", "setup s", "img/s", "amortised img/s", "vs naive", "of fp32 peak", "cos min", "cos mean"],
            rows)
    for name in names_in_order:
        print(f"  {name}: {paths[name][0]}")
    print(f"FLOPs per image: {flops / 1e9:.3f} GFLOP (FlopCounterMode, one fp32 forward, 2 x MACs)")
    print(how)
    fast = "compiled"
    ips = args.images / B.median(times[fast])
    print(f"RATIO extract_fraction_of_fp32_peak: {ips * flops / peak_flops:.3f}")
    print(f"RATIO extract_fast_vs_naive: {base / B.median(times[fast]):.2f}x")
    if ov_ok:
        best_raw = min(B.median(times[n]) for n in names_in_order if n.startswith("raw openvino"))
        ours = B.median(times["openvino"])
        print(f"RATIO extract_openvino_vs_naive: {base / ours:.2f}x")
        print(f"RATIO extract_openvino_vs_raw_openvino: {best_raw / ours:.3f} (goal >= 0.95)")
        print(f"RATIO extract_openvino_vs_torch_eager: {B.median(times['eager']) / ours:.2f}x")


if __name__ == "__main__":
    main()
