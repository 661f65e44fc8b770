"""What `headstart export` is asked to do: one frozen dataclass, its fields the CLI's flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from headstart.errors import HeadstartError, check_choice

FORMATS = ("onnx", "openvino")
LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    format: str = field(default="onnx", metadata={
        "help": f"one of {FORMATS}: an .onnx file (onnxruntime, any ONNX runtime), or an OpenVINO IR "
                "folder (model.xml + model.bin)"})
    layout: str = field(default="nchw", metadata={
        "help": f"image runs: the pixel layout the graph takes, one of {LAYOUTS} (uint8, already resized and "
                "centre-cropped as export.json says); text runs ignore it"})
    opset: int = field(default=18, metadata={"help": "ONNX opset of the graph (recorded in export.json)"})
    parity_inputs: int = field(default=1000, metadata={
        "help": "real inputs the exported graph is checked on against the PyTorch model in fp32 (the run's "
                "data or --data; flips and crops of the images, prefixes of the texts, when it has fewer)"})
    tolerance: float = field(default=1e-4, metadata={
        "help": "the parity gate: the export fails unless max |logit difference| <= this and every top-1 "
                "class agrees"})

    def __post_init__(self):
        check_choice("format", self.format, FORMATS)
        check_choice("layout", self.layout, LAYOUTS)
        if not 7 <= self.opset <= 23:
            raise HeadstartError(f"opset must be between 7 and 23; got {self.opset!r} (18 is a safe default).")
        if self.parity_inputs < 1:
            raise HeadstartError(f"parity_inputs must be >= 1; got {self.parity_inputs!r} (1000 is the default).")
        if not self.tolerance > 0:
            raise HeadstartError(f"tolerance must be > 0; got {self.tolerance!r} (1e-4 is the default).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
