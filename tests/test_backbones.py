import json

import pytest
import torch

from headstart.data.preprocess import PreprocessConfig
from headstart.encoders import get_backbone, list_backbones
from headstart.encoders.base import tensors_sha256
from headstart.errors import BackboneError
from headstart.storage import save_safetensors


def test_unknown_source_suggests_the_right_one():
    with pytest.raises(BackboneError, match="Did you mean 'timm'"):
        get_backbone("tim:resnet18")


def test_missing_prefix_explains_the_format():
    with pytest.raises(BackboneError, match="timm:resnet18"):
        get_backbone("resnet18")


def test_unknown_timm_name_gets_did_you_mean():
    with pytest.raises(BackboneError, match="Did you mean 'resnet18'"):
        get_backbone("timm:resnet_18", pretrained=False)


def test_stages_come_from_timm_metadata_in_order():
    bb = get_backbone("timm:resnet18", pretrained=False)
    assert [s.name for s in bb.stages] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
    names = [n for s in bb.stages for n in s.param_names]
    assert sorted(names) == sorted(n for n, _ in bb.module.named_parameters())  # every param, once
    assert bb.num_features == 512
    x = torch.randn(2, 3, 64, 64)
    assert bb.module.eval()(x).shape == (2, 512)


def test_preprocess_config_from_timm_and_json_round_trip():
    bb = get_backbone("timm:tf_efficientnet_lite0", pretrained=False)
    p = bb.preprocess
    assert (p.input_size, p.mean, p.std, p.interpolation, p.crop_pct) == (224, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.resize_size == 256


def test_packaged_lite0_weights_load_offline_and_are_cached(monkeypatch):
    bb = get_backbone("timm:tf_efficientnet_lite0")
    assert any("local package" in n for n in bb.notes)
    assert bb.source_head is not None and bb.source_head.out_features == 1000
    from headstart.storage import cache_dir

    cached = list(cache_dir("weights").glob("tf_efficientnet_lite0-*.safetensors"))
    assert len(cached) == 1 and cached[0].with_suffix(".json").is_file()
    again = get_backbone("timm:tf_efficientnet_lite0")
    assert again.weights_sha256 == bb.weights_sha256


def test_tampered_weight_cache_is_rebuilt_not_used():
    first = get_backbone("timm:tf_efficientnet_lite0")
    from headstart.storage import cache_dir

    cached = next(cache_dir("weights").glob("tf_efficientnet_lite0-*.safetensors"))
    state = {k: v.clone() for k, v in __import__("safetensors.torch").torch.load_file(str(cached)).items()}
    state["conv_stem.weight"].mul_(0)
    save_safetensors(state, cached)  # hash no longer matches the record
    second = get_backbone("timm:tf_efficientnet_lite0")
    assert second.weights_sha256 == first.weights_sha256


def test_tampered_package_file_is_refused(tmp_path, monkeypatch):
    from headstart.encoders import packaged

    bad = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    entry = packaged.PACKAGED["tf_efficientnet_lite1"]
    monkeypatch.setattr(type(entry), "path", lambda self: str(bad))
    with pytest.raises(BackboneError, match="sha256"):
        get_backbone("timm:tf_efficientnet_lite1")


def test_file_backbone_round_trip(tmp_path):
    import timm

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_efficientnet"}))
    bb = get_backbone(f"file:{tmp_path}")
    assert bb.weights_sha256 == tensors_sha256(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(bb.module.eval()(x), model(x))


def test_file_backbone_without_config_says_what_to_write(tmp_path):
    save_safetensors({"a": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(BackboneError, match="architecture"):
        get_backbone(f"file:{tmp_path / 'w.safetensors'}")


def test_list_backbones_reports_offline_availability():
    rows = {r["spec"]: r for r in list_backbones()}
    assert rows["timm:tf_efficientnet_lite0"]["offline"] is True


def test_an_unreachable_hub_fails_in_seconds_with_the_offline_backbones():
    """Without a network huggingface_hub retried each file 5 times: `timm:resnet18` took 54 s to fail."""
    import time

    from headstart.encoders import get_backbone
    from headstart.encoders.hub import hub_reachable
    from headstart.errors import BackboneError

    if hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable here: the weights would download")
    t0 = time.perf_counter()
    with pytest.raises(BackboneError, match=r"cannot be reached.*Offline now: timm:tf_efficientnet_lite0"):
        get_backbone("timm:resnet18")
    assert time.perf_counter() - t0 < 20
    # Listing the stages needs the architecture, not the weights.
    assert get_backbone("timm:resnet18", pretrained=False).stages
