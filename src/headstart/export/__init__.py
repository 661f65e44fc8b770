"""Ship a run: an ONNX file or OpenVINO IR with preprocessing inside, checked for parity before it is kept.

``export(run, out, format="onnx")`` → :class:`~headstart.export.pipeline.Exported`. Only the config is
imported eagerly (the CLI builds its flags from it); torch, onnx and openvino load on first use.
"""
from __future__ import annotations

from headstart.export.config import FORMATS, LAYOUTS, ExportConfig

__all__ = ["ExportConfig", "FORMATS", "LAYOUTS", "export"]


def export(run, out, config: ExportConfig | None = None, *, data=None, **options):
    """Export a run directory or fitted TransferClassifier to ``out``; see :func:`headstart.export.pipeline.export`."""
    from headstart.export.pipeline import export as run_export

    return run_export(run, out, config, data=data, **options)
