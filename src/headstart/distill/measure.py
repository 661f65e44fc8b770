"""What the student buys: parameters, file size, and CPU latency / throughput on the prediction path."""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from headstart.device import inference_context
from headstart.encoders.model import TransferModel
from headstart.features.fastpath import feature_extractor


def model_facts(model: TransferModel, sample: torch.Tensor, *, precision: str, repeats: int = 20,
                batch_size: int = 64) -> dict[str, Any]:
    """Parameters, safetensors size, batch-1 latency (median of ``repeats``) and batch throughput.

    ``sample`` is a few inputs as the model takes them (uint8 pixels at its own size, or packed tokens);
    it is tiled to ``batch_size``. Images run the path ``predict`` runs (the prepared fast-path backbone,
    then the head), texts the model itself, each under the precision prediction uses.
    """
    model.eval()
    device = next(model.parameters()).device
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    batch = sample.repeat((batch_size + len(sample) - 1) // len(sample), *([1] * (sample.dim() - 1)))[:batch_size]
    run = _runner(model, precision=precision, device=device)
    with torch.inference_mode():
        for _ in range(2):  # warm-up: first calls pay for allocation and kernel selection
            run(batch[:1])
            run(batch)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(batch[:1])
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rounds = 3
        for _ in range(rounds):
            run(batch)
        per_batch = (time.perf_counter() - t0) / rounds
    return {"params": sum(p.numel() for p in model.parameters()), "file_bytes": len(safetensors_bytes(state)),
            "input": list(sample.shape[1:]), "latency_ms": round(1000 * statistics.median(times), 3),
            "throughput_per_s": round(batch_size / per_batch, 1), "precision": precision,
            "threads": torch.get_num_threads()}


def _runner(model: TransferModel, *, precision: str, device: torch.device):
    if model.modality == "image":
        extract = feature_extractor(model, precision=precision, device=device, n_images=64)
        return lambda xb: model.head(extract(xb).to(device))

    def text(xb):
        with inference_context(precision, device):
            return model(xb.to(device))

    return text
