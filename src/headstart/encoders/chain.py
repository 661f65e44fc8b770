"""A backbone as a plain chain of modules, and where each stage ends in it.

The frozen-prefix cache, the per-stage profile and the network cut all need the backbone's forward as
an ordered list of modules. :func:`sequential_chain` builds it from the module structure and *verifies*
that it reproduces ``forward`` exactly; models where it does not (e.g. ViTs with token concatenation)
get ``None`` and those features are skipped for them.
"""
from __future__ import annotations

import torch
from torch import nn


def sequential_chain(backbone: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The backbone as an ordered list of (name, module) whose composition equals its forward."""
    chain: list[tuple[str, nn.Module]] = []
    for name, child in backbone.named_children():
        if isinstance(child, nn.Sequential):
            chain += [(f"{name}.{n}", m) for n, m in child.named_children()]
        else:
            chain.append((name, child))
    if not chain or not _verify(backbone, chain):
        return None
    return chain


@torch.no_grad()
def _verify(backbone: nn.Module, chain) -> bool:
    was = backbone.training
    backbone.eval()
    try:
        size = getattr(backbone, "pretrained_cfg", {}).get("input_size", (3, 64, 64))[-1]
        x = torch.randn(2, 3, min(size, 96), min(size, 96), generator=torch.Generator().manual_seed(0))
        ref = backbone(x)
        y = x
        for _, m in chain:
            y = m(y)
        return y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5, rtol=1e-4)
    except Exception:  # any model-specific failure just means "no prefix cache for this model"
        return False
    finally:
        backbone.train(was)


def stage_chain_ends(chain, stages) -> list[int]:
    """For each stage, the index of the last chain module holding its parameters."""
    owner = {}
    for j, (_, m) in enumerate(chain):
        for p in m.parameters():
            owner[id(p)] = j
    params = {}
    for j, (name, m) in enumerate(chain):
        for pname, p in m.named_parameters():
            params[f"{name}.{pname}"] = p
    ends = []
    for st in stages:
        idx = [owner[id(params[n])] for n in _chain_names(st.param_names, params)]
        ends.append(max(idx))
    return ends


def _chain_names(names, params):
    # Stage parameter names are relative to the backbone ("blocks.3.0.conv.weight"), as are chain names.
    return [n for n in names if n in params]
