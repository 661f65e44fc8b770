"""The prepared feature-extraction path (runtime.FeatureExtractor) computes what the plain model computes."""
import numpy as np
import pytest
import torch
from conftest import TINY
from torch import nn

from headstart.device import cpu_has_fast_bf16
from headstart.encoders import get_backbone
from headstart.encoders.model import TransferModel
from headstart.features.cache import _prefetched, compute_features
from headstart.features.fastpath import (
    FeatureExtractor,
    feature_extractor,
    fold_batchnorm,
)

CPU = torch.device("cpu")


def _model(spec, pretrained=True):
    bb = get_backbone(spec, pretrained=pretrained)
    return bb, TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages).eval()


def _randomise_bn(module, seed=0):
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _reference(model, x):
    """fp32 eager NCHW features of the untouched model."""
    with torch.inference_mode():
        return model.backbone(model.normalize(x).float()).float()


@pytest.fixture(scope="module")
def photos():
    """Six real photographs (scikit-image's samples), preprocessed for Lite0."""
    sd = pytest.importorskip("skimage.data")
    from headstart.data import load_image, preprocess

    bb = get_backbone("timm:tf_efficientnet_lite0")
    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "cat"]
    return torch.stack([preprocess(load_image(getattr(sd, n)()), bb.preprocess) for n in names])


@pytest.mark.parametrize("name", ["test_efficientnet", "resnet18", "mobilenetv3_small_050"])
def test_fold_batchnorm_keeps_the_forward(name):
    net = get_backbone(f"timm:{name}", pretrained=False).module.eval()
    _randomise_bn(net)
    import copy

    folded = copy.deepcopy(net)
    n = fold_batchnorm(folded)
    assert n > 0
    assert not any(type(m) is nn.BatchNorm2d for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


def test_lite0_fp32_path_matches_eager(photos):
    bb, model = _model("timm:tf_efficientnet_lite0")
    ext = FeatureExtractor(model, precision="fp32", device=CPU)
    got = ext(photos)
    assert "49 BatchNorm folded" in ext.describe and "fp32" in ext.describe
    ref = _reference(model, photos)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(got, ref).min() >= 0.99999


def test_lite0_bf16_path_matches_fp32_eager(photos):
    if not cpu_has_fast_bf16():
        pytest.skip("no bf16 on this CPU")
    bb, model = _model("timm:tf_efficientnet_lite0")
    ext = FeatureExtractor(model, precision="bf16", device=CPU)
    got = ext(photos)
    assert "bf16 weights" in ext.describe
    cos = torch.nn.functional.cosine_similarity(got, _reference(model, photos))
    # bf16 keeps 8 mantissa bits: the same bound as bf16 autocast (test_api.test_bf16_features_match_fp32).
    assert cos.mean() >= 0.999 and cos.min() >= 0.998, cos


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_lite0_compiled_path_matches_fp32_eager(photos, precision):
    if precision == "bf16" and not cpu_has_fast_bf16():
        pytest.skip("no bf16 on this CPU")
    bb, model = _model("timm:tf_efficientnet_lite0")
    ext = FeatureExtractor(model, precision=precision, device=CPU, compile=True)
    got = ext(photos[:5])  # 5 < micro-batch: exercises the padding of the last batch
    cos = torch.nn.functional.cosine_similarity(got, _reference(model, photos[:5]))
    assert got.shape == (5, bb.num_features)
    if not ext.compiled:
        pytest.skip(f"torch.compile did not run here: {ext.describe}")
    # Inductor's freezing on the BatchNorm-folded copy; with bf16 *autocast* instead of bf16 weights,
    # freezing folded the BatchNorm in bf16 and cosine fell to 0.977 on Fashion-MNIST, hence the fp32 fold.
    if precision == "bf16":
        assert cos.mean() >= 0.999 and cos.min() >= 0.998, cos
    else:
        assert cos.min() >= 0.9999, cos


def test_disagreeing_fold_falls_back_to_the_original():
    class Liar(nn.Module):
        """conv registered right before bn, but bn normalises the input, not the conv's output."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.conv(self.bn(x))).flatten(1)

    net = Liar().eval()
    _randomise_bn(net)
    from headstart.data.preprocess import PreprocessConfig

    model = TransferModel(net, 3, 2, PreprocessConfig(input_size=8)).eval()
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ext = FeatureExtractor(model, precision="fp32", device=CPU)
    got = ext(x)
    assert "not folded" in ext.describe
    torch.testing.assert_close(got, _reference(model, x), rtol=1e-4, atol=1e-5)


def test_extractor_is_reused_until_the_weights_change():
    bb, model = _model(TINY, pretrained=False)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    e1 = feature_extractor(model, precision="fp32", device=CPU, n_images=3)
    assert feature_extractor(model, precision="fp32", device=CPU, n_images=3) is e1
    f1 = compute_features(model, x, precision="fp32", device=CPU)
    with torch.no_grad():
        next(model.backbone.parameters()).mul_(2.0)  # an in-place update, like an optimizer step
    assert feature_extractor(model, precision="fp32", device=CPU, n_images=3) is not e1
    f2 = compute_features(model, x, precision="fp32", device=CPU)
    assert not torch.allclose(f1, f2)
    torch.testing.assert_close(f2, _reference(model, x), rtol=1e-4, atol=1e-5)


def test_compute_features_keeps_the_training_mode():
    bb, model = _model(TINY, pretrained=False)
    model.train()
    compute_features(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), precision="fp32", device=CPU)
    assert model.training


def test_prefetch_yields_everything_in_order_and_reraises():
    assert list(_prefetched(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("boom")

    gen = _prefetched(failing(), 2)
    assert next(gen) == 1
    with pytest.raises(ValueError, match="boom"):
        next(gen)
    early = _prefetched(iter(range(1000)), 2)
    assert next(early) == 0
    early.close()  # stops the producer thread without draining it


def test_streamed_extraction_with_and_without_prefetch_agree(tiny_data):
    from headstart.data import as_examples

    bb, model = _model(TINY, pretrained=False)
    ex = as_examples(*tiny_data)
    kw = dict(preprocess=bb.preprocess, precision="fp32", device=CPU, batch_size=5, use_cache=False)
    from headstart.features.cache import extract_to_disk

    stats = {}
    a, ia, _ = extract_to_disk(model, ex, prefetch=2, stats=stats, **kw)
    a = np.array(a)
    b, ib, _ = extract_to_disk(model, ex, prefetch=0, **kw)
    np.testing.assert_array_equal(a, np.asarray(b))
    assert list(ia) == list(ib)
    assert stats["images"] == len(ex) and stats["wall_s"] >= stats["compute_s"] > 0 and stats["wait_s"] >= 0
