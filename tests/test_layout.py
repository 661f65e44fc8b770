"""The package reads as the pipeline: folders in data-flow order, each importing only downward, no cycles.

Every import inside ``src/headstart`` counts, module-level and function-level alike: a function-level
import may defer a heavy optional library, never hide an import that runs back up the pipeline.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A module may import its own layer or any layer below it, never one above.
LAYERS = [
    ("headstart.errors", "headstart.config", "headstart.storage", "headstart.device"),  # foundations
    ("headstart.data",),  # examples from folders, tables, arrays; decoding; preprocessing types; splits
    ("headstart.encoders",),  # backbone registry and sources, stages, cutting, backbone + head model
    ("headstart.features",),  # CPU fast path, feature and prefix caches
    ("headstart.train",),  # the loop, strategies, objectives, callbacks, distributed state
    ("headstart.modalities",),  # what differs between images and texts, their baselines included
    ("headstart.candidates",),  # auto keeps the better model: transfer, the simple one(s), the hybrid
    ("headstart.assess",),  # metrics, transferability, rank, plan
    ("headstart.io",),  # the saved run
    ("headstart.track",),  # experiment tracking callbacks (TensorBoard, MLflow)
    ("headstart.distill",),  # teacher -> student: the transfer set, the KD objective, the report
    ("headstart.semi",),  # the examples nobody labelled: semi-supervised heads on the run's embeddings
    ("headstart.adapt",),  # domain adaptation of a trained run to unlabelled target data, chosen label-free
    ("headstart.audit",),  # what a fine-tuned model inherits: attacks, the audit, the --harden objectives
    ("headstart.estimator", "headstart.text"),  # TransferClassifier, load
    ("headstart.discover",),  # unsupervised transfer: group an unlabelled pool (may read a run's backbone)
    ("headstart.export",),  # a run as ONNX / OpenVINO IR, gated on parity with the PyTorch model
    ("headstart.serve",),  # the HTTP server and its web page
    ("headstart.report",),  # the HTML report of a run
    ("headstart.cli",),  # the command line, renderers, demo
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "headstart").rglob("*.py")):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if m != "headstart" and _layer(m) is None]
    assert not unplaced, f"modules outside the layer table of tests/test_layout.py: {unplaced}"


def test_imports_run_only_down_the_pipeline():
    upward = sorted(f"{m} -> {t}" for m, ts in _graph().items() if m != "headstart"
                    for t in ts if t != "headstart" and _layer(t) > _layer(m))
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
