"""Frozen-prefix cache: with the first K stages frozen and no random augmentation, their output is
the same every epoch, so compute it once and train only the stages above it.

This needs the backbone's forward to be a plain chain of modules. :func:`sequential_chain` builds that
chain from timm's structure and *verifies* it reproduces ``forward`` exactly; models where it does
not (e.g. ViTs with token concatenation) simply train without the prefix cache.
"""
from __future__ import annotations

import torch
from torch import nn

from headstart.device import batched_apply, chunks
from headstart.encoders.chain import sequential_chain
from headstart.encoders.model import freeze_batchnorm_stats


def frozen_cut(chain, frozen_params: set[int]) -> int:
    """How many leading chain modules have only frozen parameters (parameter-free ones included)."""
    cut = 0
    for i, (_, m) in enumerate(chain):
        params = list(m.parameters())
        if params and not all(id(p) in frozen_params for p in params):
            break
        cut = i + 1
    # Trailing parameter-free modules (pooling) must stay in the trainable suffix.
    while cut > 0 and not list(chain[cut - 1][1].parameters()):
        cut -= 1
    return cut


class Suffix(nn.Module):
    """The trainable top of the model: chain[cut:] then the head. Shares modules with the full model."""

    def __init__(self, modules: list[nn.Module], head: nn.Module, train_bn: bool = True):
        super().__init__()
        self.train_bn = train_bn
        self.body = nn.Sequential(*modules)
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            freeze_batchnorm_stats(self.body, all_layers=not self.train_bn)
        return self


def split_for_prefix_cache(model) -> tuple[nn.Module, Suffix, int] | None:
    """(prefix, suffix, cut) when the model's frozen leading stages can be cached, else None."""
    if model.modality != "image":
        return None  # a transformer's layers also take the attention mask: not a plain chain
    chain = sequential_chain(model.backbone)
    if chain is None:
        return None
    frozen = {id(p) for p in model.backbone.parameters() if not p.requires_grad}
    cut = frozen_cut(chain, frozen)
    if cut == 0:
        return None
    prefix = nn.Sequential(*[m for _, m in chain[:cut]])
    return prefix, Suffix([m for _, m in chain[cut:]], model.head, model.train_bn), cut


def prefix_outputs(model, prefix: nn.Module, pixels: torch.Tensor, *, precision: str, device,
                   store: torch.dtype = torch.float32, batch_size: int = 64) -> torch.Tensor:
    """Activations at the cut for uint8 ``pixels``, computed once, kept in ``store`` dtype."""
    prefix.eval()
    outs = [o.to(store) for o in batched_apply(lambda xb: prefix(model.normalize(xb)), chunks(pixels, batch_size),
                                                precision=precision, device=device)]
    return torch.cat(outs)
