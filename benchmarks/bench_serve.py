"""Issue 16, P6 and R4: `headstart serve` under load, a real uvicorn process on 127.0.0.1.

    .venv/bin/python benchmarks/bench_serve.py [--engine auto] [--requests 400] [--load-requests 10000]

A Lite0 linear-probe run on 20 Fashion-MNIST labels per class is trained once (kept in benchmarks/.runs).
P6: single-image requests at concurrency 8, the server with dynamic batching (--max-batch 16,
--max-wait-ms 5) vs the same server at --max-batch 1; served images/s, p50/p99 latency, mean batch.
R4: --load-requests single-image requests at concurrency 32 against the batching server: errors, and the
server's RSS before and after (bounded growth: the last quarter of requests must not grow it by more
than 50 MB). The client runs on the same machine (httpx, asyncio): on 2 cores it competes with the server,
so absolute images/s are lower than a separate client would see; the ratio is what is compared.
Ends with `RATIO serve_batching_vs_batch1` and `RATIO serve_load_errors`.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _bench import fashion, machine, table
from PIL import Image

RUN = Path(__file__).resolve().parent / ".runs" / "serve-lite0"


def trained_run() -> Path:
    if (RUN / "headstart.json").is_file():
        return RUN
    from headstart import TransferClassifier

    x, y = fashion("train", per_class=20)
    TransferClassifier("timm:tf_efficientnet_lite0", strategy="linear-probe", baselines=False).fit(x, y, out=RUN)
    return RUN


def pngs(n: int) -> list[bytes]:
    x, _ = fashion("test", n=n)
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, run: Path, engine: str, *flags: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "headstart.cli", "serve", str(run), "--port",
                                      str(self.port), "--engine", engine, "--no-access-log", *flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the server did not start")

    def metadata(self) -> dict:
        return httpx.get(self.url + "/metadata", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def hammer(url: str, images: list[bytes], n: int, concurrency: int) -> tuple[float, list[float], int, list]:
    """n single-image requests, `concurrency` at a time: (seconds, latencies, errors, first errors)."""
    latencies, errors, first = [], 0, []
    queue = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker():
            nonlocal errors
            for i in queue:
                started = time.perf_counter()
                try:
                    r = await client.post("/predict", files=[("files", (f"{i}.png", images[i % len(images)], "image/png"))])
                    ok = r.status_code == 200
                    if not ok and len(first) < 3:
                        first.append(f"{r.status_code} {r.text[:120]}")
                except httpx.HTTPError as exc:
                    ok = False
                    if len(first) < 3:
                        first.append(repr(exc))
                latencies.append(time.perf_counter() - started)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return time.perf_counter() - started, latencies, errors, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino"])
    ap.add_argument("--requests", type=int, default=400, help="P6: requests per server")
    ap.add_argument("--load-requests", type=int, default=10_000, help="R4: requests at concurrency 32")
    ap.add_argument("--quick", action="store_true", help="100 / 500 requests")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.load_requests = 100, 500
    print(machine())
    run = trained_run()
    images = pngs(256)
    rows, ips = [], {}
    for name, flags in (("dynamic batching (16, 5 ms)", ["--max-batch", "16", "--max-wait-ms", "5"]),
                        ("batch 1", ["--max-batch", "1", "--max-wait-ms", "0"])):
        server = Server(run, args.engine, *flags)
        try:
            asyncio.run(hammer(server.url, images, 32, 8))  # warm-up
            seconds, lat, errors, _ = asyncio.run(hammer(server.url, images, args.requests, 8))
            meta = server.metadata()
        finally:
            server.stop()
        ips[name] = args.requests / seconds
        b = meta["batching"]
        rows.append([name, f"{ips[name]:.1f}", f"{1000 * np.percentile(lat, 50):.0f}",
                     f"{1000 * np.percentile(lat, 99):.0f}", f"{b['mean_batch']:.1f}", errors])
    print(f"engine: {meta['engine']}")
    print(f"P6: {args.requests} single-image requests at concurrency 8")
    table(["server", "images/s", "p50 ms", "p99 ms", "mean batch", "errors"], rows)

    server = Server(run, args.engine, "--max-batch", "16", "--max-wait-ms", "5")
    try:
        asyncio.run(hammer(server.url, images, 64, 32))
        before = rss_mb(server.proc.pid)
        quarter = args.load_requests - args.load_requests // 4
        s1, lat1, e1, f1 = asyncio.run(hammer(server.url, images, quarter, 32))
        middle = rss_mb(server.proc.pid)
        s2, lat2, e2, f2 = asyncio.run(hammer(server.url, images, args.load_requests - quarter, 32))
        after = rss_mb(server.proc.pid)
    finally:
        server.stop()
    errors, lat = e1 + e2, lat1 + lat2
    print(f"R4: {args.load_requests} requests at concurrency 32 in {s1 + s2:.1f} s "
          f"({args.load_requests / (s1 + s2):.1f} req/s), p50 {1000 * np.percentile(lat, 50):.0f} ms, "
          f"p99 {1000 * np.percentile(lat, 99):.0f} ms, errors {errors} {f1 + f2}")
    print(f"server RSS: {before:.0f} MB after warm-up, {middle:.0f} MB after 3/4, {after:.0f} MB at the end "
          f"(last quarter {after - middle:+.0f} MB; bound +50 MB: {'met' if after - middle <= 50 else 'NOT met'})")
    ratio = ips["dynamic batching (16, 5 ms)"] / ips["batch 1"]
    print(f"RATIO serve_batching_vs_batch1: {ratio:.2f}x")
    print(f"RATIO serve_load_errors: {errors}")


if __name__ == "__main__":
    main()
