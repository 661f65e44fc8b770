"""The report's figures as inline SVG, drawn by matplotlib with no network and byte-identical output.

Determinism: the Agg/SVG backend, a fixed ``svg.hashsalt`` (matplotlib otherwise puts random ids in
the file), no creation date in the metadata, and text kept as text (``svg.fonttype = "none"``) so no
font subsetting varies between machines.
"""
from __future__ import annotations

import io
import re

import numpy as np

from headstart.errors import HeadstartError

MAX_ANNOTATED = 20  # class counts up to this get a number in every confusion-matrix cell
MAX_LABELLED = 40  # ... up to this get their names on the axes; beyond, the matrix is a thumbnail


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise HeadstartError("The report draws its plots with matplotlib: pip install 'headstart[report]'.") from exc
    plt.rcParams.update({"svg.hashsalt": "headstart", "svg.fonttype": "none", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "headstart"})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # inline: drop the XML prologue and DOCTYPE
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # the RDF block says nothing useful


def learning_curves(epochs: list[dict]) -> str | None:
    """Loss and accuracy per epoch, train and validation, one colour band per phase, kept epoch marked."""
    if not epochs:
        return None
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    x = np.arange(1, len(epochs) + 1)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, style in (("train", "-"), ("val", "--")):
            ys = [e.get(f"{split}_{key}") for e in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, [np.nan if y is None else y for y in ys], style, label=split, linewidth=1.4)
        phases = [e.get("phase", "") for e in epochs]
        start = 0
        for i in range(1, len(phases) + 1):
            if i == len(phases) or phases[i] != phases[start]:
                if start % 2 == 1 or phases[start] != phases[0]:
                    ax.axvspan(start + 0.5, i + 0.5, color="0.93", zorder=0)
                ax.text((start + i + 1) / 2, 1.02, phases[start], transform=ax.get_xaxis_transform(),
                        ha="center", fontsize=7, color="0.35")
                start = i
        kept = [i + 1 for i, e in enumerate(epochs) if e.get("best")]
        if kept:
            ax.axvline(kept[-1], color="tab:red", linewidth=0.8, linestyle=":", label="kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if key == "acc" else "loss")
    ax_acc.legend(loc="lower right", frameon=False)
    return _svg(fig)


def confusion(matrix: np.ndarray, classes: list[str]) -> str:
    """The row-normalised confusion matrix (recall on the diagonal)."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(classes)
    side = min(9.0, 2.5 + 0.28 * k) if k <= MAX_LABELLED else 4.5
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if k <= MAX_LABELLED:
        ax.set_xticks(range(k), [str(c)[:18] for c in classes], rotation=60, ha="right")
        ax.set_yticks(range(k), [str(c)[:18] for c in classes])
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= MAX_ANNOTATED:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}".lstrip("0") if norm[i, j] < 1 else "1",
                            ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _svg(fig)


def reliability_diagram(before, after=None, temperature: float | None = None) -> str:
    """Accuracy vs confidence per bin (bars), the diagonal of perfect calibration, ECE in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    centres = (before.edges[:-1] + before.edges[1:]) / 2
    width = before.edges[1] - before.edges[0]
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--")
    shown = before.counts > 0
    ax.bar(centres[shown], before.accuracy[shown], width=width * 0.9, alpha=0.55, color="tab:blue",
           label=f"as trained, ECE {before.ece:.3f}")
    if after is not None:
        ok = after.counts > 0
        ax.plot(centres[ok], after.accuracy[ok], "o-", color="tab:orange", markersize=3,
                label=f"T = {temperature:.2f}, ECE {after.ece:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", frameon=False)
    return _svg(fig)
