"""The built-in main job: EfficientNet-Lite0 (ImageNet) → Fashion-MNIST with 100 labels per class.

Trains ``linear-probe`` and ``two-stage`` on the same 1,000 images and evaluates both on the full
10,000-image test set, printing accuracy and wall time. Runs offline when the Lite0 weights package
and the Debian Fashion-MNIST package are installed.
"""
from __future__ import annotations

import time
from pathlib import Path

BACKBONE = "timm:tf_efficientnet_lite0"

# Strategy settings chosen to fit the demo's 10-minute budget on a 2-core CPU; see README.
DEMO_RUNS = {
    # The linear-probe run is itself the linear-probe baseline; the two-stage run is compared with it
    # and with a from-scratch model. That one gets 60 s rather than the run's full training time, which
    # keeps the whole demo within 10 minutes on a 2-core laptop (`headstart train` gives it the same time).
    "linear-probe": dict(head_epochs=60, baselines=False),
    "two-stage": dict(head_epochs=60, epochs=6, freeze_stages=5, augment=False, baseline_seconds=60),
}


def run_demo(per_class: int = 100, test_limit: int = 0, out: Path = Path("runs/demo"), seed: int = 0) -> dict:
    from rich.table import Table

    from headstart.cli.progress import EpochProgress
    from headstart.cli.render import console as render_console
    from headstart.cli.render import print_baselines
    from headstart.data.datasets import (
        FASHION_MNIST_CLASSES,
        fashion_mnist,
        per_class_subset,
    )
    from headstart.estimator import TransferClassifier
    from headstart.report import write_report

    console = render_console(stderr=False)
    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    if test_limit:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    idx = per_class_subset(y_train, per_class, seed=seed)
    names = [FASHION_MNIST_CLASSES[i] for i in y_train[idx]]
    test_names = [FASHION_MNIST_CLASSES[i] for i in y_test]
    console.print(f"Fashion-MNIST: {len(idx)} labelled training images ({per_class}/class), "
                  f"{len(x_test)} test images; backbone {BACKBONE}")
    results = {}
    for strategy, options in DEMO_RUNS.items():
        console.rule(strategy)
        t0 = time.perf_counter()
        clf = TransferClassifier(BACKBONE, strategy=strategy, seed=seed, **options)
        with EpochProgress(console, quiet=False) as progress:
            # The demo owns OUT/linear-probe and OUT/two-stage: running it again redoes both.
            clf.fit(x_train[idx], names, out=Path(out) / strategy, progress=progress, overwrite=True)
        fit_s = clf.fit_seconds_  # reading, encoding and training; not the baselines' own budget
        baseline_s = (clf.baselines_ or {}).get("seconds") or 0.0
        print_baselines(console, clf.run_.meta.get("baselines"))
        # The test pass goes through the report: one prediction pass gives the figures and report.html.
        path, summary = write_report(Path(out) / strategy, x_test, test_labels=test_names)
        report = summary["metrics"]
        total = time.perf_counter() - t0
        results[strategy] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                             "fit_seconds": round(fit_s, 1), "baseline_seconds": round(baseline_s, 1),
                             "total_seconds": round(total, 1)}
        console.print(f"{strategy}: test accuracy {report['accuracy']:.4f}, fit {fit_s:.0f}s, baselines "
                      f"{baseline_s:.0f}s, all with the test pass {total:.0f}s; report: {path}")
    table = Table("strategy", "test accuracy", "macro-F1", "fit time", "baselines", "total with test",
                  title=f"Lite0 on Fashion-MNIST, {per_class} labels/class, {len(x_test)} test images")
    for name, r in results.items():
        table.add_row(name, f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['fit_seconds']:.0f}s",
                      f"{r['baseline_seconds']:.0f}s", f"{r['total_seconds']:.0f}s")
    console.print(table)
    return results
