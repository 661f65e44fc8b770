"""Issue 17: `headstart report` on the demo's runs and all 10,000 Fashion-MNIST test images.

    .venv/bin/python benchmarks/bench_report.py [--per-class 100] [--strategies linear-probe two-stage]

Trains the demo's runs (Lite0, 100 labels/class, the demo's settings; kept in benchmarks/.runs) and, for
each, writes the report on the test set three times in this process and once in a fresh one:
- the first report makes the one prediction pass (cached in RUN/predictions/);
- the second reads that pass: its wall time is the report's own cost (target <= 10 s on 2 cores);
- the third, and the fresh process's, must be byte-identical to the second (target: determinism);
- ECE before and after temperature scaling (T fitted on the run's validation split, measured on the
  10,000 test images; target: cut >= 50 %).
Ends with `RATIO report_cached_seconds`, `RATIO report_ece_cut` and `RATIO report_identical`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _bench import fashion, machine, table

HERE = Path(__file__).resolve().parent
RUNS = HERE / ".runs"


def demo_run(strategy: str, per_class: int) -> Path:
    """The demo's run of ``strategy`` (trained once; its validation predictions are what T is fitted on)."""
    from headstart import TransferClassifier
    from headstart.cli.demo import BACKBONE, DEMO_RUNS
    from headstart.data.datasets import FASHION_MNIST_CLASSES

    out = RUNS / f"report-{strategy}-{per_class}"
    if (out / "headstart.json").is_file():
        return out
    x, y = fashion("train", per_class=per_class)
    TransferClassifier(BACKBONE, strategy=strategy, seed=0, **DEMO_RUNS[strategy]).fit(
        x, [FASHION_MNIST_CLASSES[i] for i in y], out=out)
    return out


def report_once(run: str, out: str) -> dict:
    from headstart.data.datasets import FASHION_MNIST_CLASSES
    from headstart.report import write_report

    x, y = fashion("test")
    _, summary = write_report(run, x, out=out, test_labels=[FASHION_MNIST_CLASSES[i] for i in y])
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--strategies", nargs="+", default=["linear-probe", "two-stage"])
    args = ap.parse_args()
    print(machine())
    rows, worst_cached, worst_cut, identical = [], 0.0, 1.0, True
    for strategy in args.strategies:
        t0 = time.perf_counter()
        run = demo_run(strategy, args.per_class)
        trained = time.perf_counter() - t0
        for old in (run / "predictions").glob("test-*.npz"):  # time the first pass honestly
            old.unlink()
        out = RUNS / f"report-{strategy}"
        t0 = time.perf_counter()
        first = report_once(str(run), str(out) + "-1.html")
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = report_once(str(run), str(out) + "-2.html")
        t_cached = time.perf_counter() - t0
        report_once(str(run), str(out) + "-3.html")
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from bench_report import report_once; "
                f"report_once({str(run)!r}, {str(out) + '-4.html'!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
        files = [Path(f"{out}-{i}.html").read_bytes() for i in (2, 3, 4)]
        same = files[0] == files[1] == files[2] and Path(f"{out}-1.html").read_bytes() == files[0]
        assert not first["cached_predictions"] and second["cached_predictions"]
        cut = 1 - second["ece_calibrated"] / second["ece"]
        worst_cached, worst_cut, identical = max(worst_cached, t_cached), min(worst_cut, cut), identical and same
        rows.append([strategy, f"{trained:.0f}", f"{second['accuracy']:.4f}", f"{t_first:.1f}", f"{t_cached:.1f}",
                     f"{second['ece']:.4f}", f"{second['temperature']:.3f}", f"{second['ece_calibrated']:.4f}",
                     f"{100 * cut:.0f}%", "yes" if same else "NO", f"{len(files[0]) / 1e6:.2f}"])
    print()
    table(["run", "train s", "test acc", "report s (with pass)", "report s (cached)", "ECE", "T", "ECE after T",
           "ECE cut", "byte-identical x4", "MB"], rows)
    print(f"\nRATIO report_cached_seconds {worst_cached:.2f} (target <= 10)")
    print(f"RATIO report_ece_cut {worst_cut:.3f} (target >= 0.50)")
    print(f"RATIO report_identical {1.0 if identical else 0.0:.0f} (target 1)")


if __name__ == "__main__":
    main()
