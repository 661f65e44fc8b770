"""Cached paths (frozen features, frozen prefix) give the same model as recomputing every epoch."""
import numpy as np
import pytest
import torch
from conftest import TINY

from headstart import TransferClassifier
from headstart.encoders import get_backbone
from headstart.encoders.chain import sequential_chain
from headstart.features.prefix import frozen_cut


def _fit(tiny_data, use_cache, **kw):
    opts = dict(strategy="partial", freeze_stages=3, epochs=3, batch_size=8, precision="fp32",
                augment=False, val_fraction=0.25, seed=1, use_feature_cache=use_cache)
    opts.update(kw)
    return TransferClassifier(TINY, pretrained=False, **opts).fit(*tiny_data)


@pytest.mark.parametrize("kw", [dict(), dict(strategy="two-stage", freeze_stages=2, head_epochs=3, head_min_steps=0),
                                dict(strategy="linear-probe", head_epochs=5, head_min_steps=0)])
def test_cached_and_uncached_training_agree(tiny_data, kw):
    cached = _fit(tiny_data, True, **kw)
    plain = _fit(tiny_data, False, **kw)
    np.testing.assert_allclose(cached.predict_proba(tiny_data[0]), plain.predict_proba(tiny_data[0]), atol=2e-4)


@pytest.mark.parametrize("name", ["test_efficientnet", "resnet18", "tf_efficientnet_lite0"])
def test_sequential_chain_reproduces_forward(name):
    bb = get_backbone(f"timm:{name}", pretrained=False)
    bb.module.eval()
    chain = sequential_chain(bb.module)
    assert chain is not None
    x = torch.randn(1, 3, 64, 64)
    y = x
    for _, m in chain:
        y = m(y)
    torch.testing.assert_close(y, bb.module.eval()(x))


def test_frozen_cut_stops_at_first_trainable_module():
    bb = get_backbone(TINY, pretrained=False)
    chain = sequential_chain(bb.module)
    params = dict(bb.module.named_parameters())
    frozen = {id(params[n]) for s in bb.stages[:3] for n in s.param_names}
    cut = frozen_cut(chain, frozen)
    assert 0 < cut < len(chain)
    assert all(id(p) in frozen for _, m in chain[:cut] for p in m.parameters())
    assert any(id(p) not in frozen for p in chain[cut][1].parameters())


def test_vit_has_no_chain_and_still_trains(tiny_data):
    assert sequential_chain(get_backbone("timm:test_vit", pretrained=False).module) is None


def test_streamed_extraction_matches_in_memory_and_is_reused(tiny_data, tmp_path):
    from headstart.data import as_examples, decode_all
    from headstart.encoders.model import TransferModel
    from headstart.features.cache import compute_features, extract_to_disk

    bb = get_backbone(TINY, pretrained=False)
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages)
    x, y = tiny_data
    items = list(x[:5]) + [np.full((3, 3), np.nan)] + list(x[5:9])  # one unreadable input
    ex = as_examples(items, [0] * 10)
    kw = dict(preprocess=bb.preprocess, precision="fp32", device=torch.device("cpu"), batch_size=4)
    feats, index, skipped = extract_to_disk(model, ex, **kw)
    assert isinstance(feats, np.memmap) and feats.shape == (9, bb.num_features)
    assert list(index) == [0, 1, 2, 3, 4, 6, 7, 8, 9] and len(skipped) == 1
    ref = compute_features(model, decode_all(ex, bb.preprocess).pixels, precision="fp32", device=torch.device("cpu"))
    np.testing.assert_allclose(np.asarray(feats), ref.numpy(), rtol=1e-4, atol=1e-5)
    again, index2, _ = extract_to_disk(model, ex, **kw)
    assert again.filename == feats.filename and list(index2) == list(index)
