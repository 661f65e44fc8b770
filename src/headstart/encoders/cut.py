"""Cut a backbone after one of its stages: the stages above it are dropped, not just frozen.

When a middle stage's pooled features are as good as the top's (see ``headstart plan``), the stages
above it cost compute and parameters and add nothing a frozen head can use. ``truncate_module``
removes them in place: every parameterised module of the backbone's forward chain after the cut
(for EfficientNets the later ``blocks``, ``conv_head`` and ``bn2``) is removed, global pooling
is kept, and ``num_features`` becomes the cut stage's channel count. Parameter names of the kept
part do not change, so a truncated run's weights load into a truncated rebuild of the architecture
(``headstart.load`` and ``file:<run>`` do that from ``cut_stage`` in ``headstart.json``).

The result is *verified*: on a random batch, the truncated backbone must reproduce the spatially
averaged output of the cut stage exactly (the quantity the profile measured), else the cut is refused.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from headstart.encoders.base import Backbone, Stage, tensors_sha256
from headstart.encoders.chain import sequential_chain, stage_chain_ends
from headstart.errors import HeadstartError

_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)


def _is_pooling(m: nn.Module) -> bool:
    return isinstance(m, _POOLING) or "pool" in type(m).__name__.lower()


def check_cut(cut: int, num_stages: int) -> None:
    if not 0 <= cut < num_stages:
        raise HeadstartError(f"cut_stage={cut} but this backbone has stages 0..{num_stages - 1}; "
                             "see them with `headstart backbones --stages SPEC`.")


def truncate_module(module: nn.Module, stages: list[Stage], cut: int) -> tuple[nn.Module, list[Stage], int]:
    """Keep stages ``0..cut`` of ``module`` (in place); returns (module, kept stages, num_features)."""
    check_cut(cut, len(stages))
    if cut == len(stages) - 1:  # the top stage: nothing to drop
        return module, list(stages), int(module.num_features)
    chain = sequential_chain(module)
    if chain is None:
        raise HeadstartError(f"Cannot cut {type(module).__name__}: its forward is not a chain of stages "
                             "(supported: CNNs such as EfficientNet, MobileNet, ResNet).")
    ends = stage_chain_ends(chain, stages)
    end = ends[cut]
    owner = {id(p): j for j, (_, m) in enumerate(chain) for p in m.parameters()}
    params = dict(module.named_parameters())
    above = [owner[id(params[n])] for s in stages[cut + 1:] for n in s.param_names if n in params]
    if above and min(above) <= end:
        raise HeadstartError(f"Cannot cut after stage {cut} ({stages[cut].name}): a later stage's "
                             "parameters are used before it in the forward pass.")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    was = module.training
    module.eval()
    with torch.no_grad():
        y = x
        for _, m in chain[:end + 1]:
            y = m(y)
        channels = int(y.shape[1])
        expected = y.float().mean((2, 3)) if y.dim() == 4 else y.float()
        for name, m in chain[end + 1:]:
            if list(m.parameters()) or not _is_pooling(m):
                _remove(module, name)
        _drop_trailing_identities(module)
        got = module(x)
    module.train(was)
    if got.shape != expected.shape or not torch.allclose(got.float(), expected, atol=1e-5, rtol=1e-4):
        raise HeadstartError(f"Cannot cut {type(module).__name__} after stage {cut}: the truncated network "
                             "does not reproduce the pooled output of that stage.")
    module.num_features = channels
    if hasattr(module, "head_hidden_size"):
        module.head_hidden_size = channels
    present = {n for n, _ in module.named_parameters()}
    kept = [Stage(s.name, tuple(n for n in s.param_names if n in present)) for s in stages[:cut + 1]]
    return module, kept, channels


def _remove(module: nn.Module, name: str) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, nn.Identity())


def _drop_trailing_identities(module: nn.Module) -> None:
    """``blocks = blocks[:k]`` rather than a Sequential ending in Identity placeholders."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential) and len(child):
            keep = len(child)
            while keep and isinstance(child[keep - 1], nn.Identity):
                keep -= 1
            if keep < len(child):
                setattr(module, name, child[:keep] if keep else nn.Identity())


def truncate_backbone(backbone: Backbone, cut: int | None) -> Backbone:
    """A backbone keeping stages ``0..cut`` (``None`` or the top stage: unchanged)."""
    if cut is None or cut == len(backbone.stages) - 1:
        if cut is not None:
            check_cut(cut, len(backbone.stages))
        return backbone
    before = backbone.num_params
    module, stages, channels = truncate_module(backbone.module, backbone.stages, cut)
    out = replace(backbone, module=module, stages=stages, num_features=channels,
                  weights_sha256=tensors_sha256(module.state_dict()), source_head=None, source_classes=None,
                  notes=list(backbone.notes))
    out.notes.append(f"cut after stage {cut} ({stages[-1].name}): {channels} features, "
                     f"{out.num_params:,} of {before:,} parameters kept")
    return out


def stage_summary(module: nn.Module, stages: list[Stage]) -> list[dict]:
    """Per stage: its parameters, its output channels, and the backbone's size if cut after it."""
    params = dict(module.named_parameters())
    own = [sum(params[n].numel() for n in s.param_names if n in params) for s in stages]
    channels: list[int | None] = [None] * len(stages)
    chain = sequential_chain(module)
    if chain is not None:
        ends = stage_chain_ends(chain, stages)
        was = module.training
        module.eval()
        with torch.no_grad():
            y = torch.randn(1, 3, 64, 64)
            for j, (_, m) in enumerate(chain):
                y = m(y)
                for s, e in enumerate(ends):
                    if e == j:
                        channels[s] = int(y.shape[1])
        module.train(was)
    total = sum(p.numel() for p in module.parameters())
    rows, running = [], total - sum(own)  # parameters outside every stage (rare)
    for i, s in enumerate(stages):
        running += own[i]
        rows.append({"index": i, "name": s.name, "params": own[i], "channels": channels[i],
                     "params_if_cut": running if i < len(stages) - 1 else total})
    return rows
