"""Each strategy trains exactly the parameters it should; frozen BatchNorm never moves."""
import numpy as np
import pytest
import torch
from conftest import TINY

from headstart import TrainConfig, TransferClassifier
from headstart.encoders import get_backbone
from headstart.encoders.model import TransferModel
from headstart.train.strategies import apply_freeze, param_groups, plan_phases


def _fit(tiny_data, strategy, **kw):
    x, y = tiny_data
    opts = dict(epochs=2, head_epochs=3, head_min_steps=0, batch_size=8, precision="fp32", augment=False, val_fraction=0.25)
    opts.update(kw)
    return TransferClassifier(TINY, strategy=strategy, pretrained=False, **opts)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after, name):
    return not torch.equal(before[name], after[name])


def _fit_and_diff(tiny_data, strategy, **kw):
    """Fit, but start from a known backbone so we can compare weights before/after."""
    clf = _fit(tiny_data, strategy, **kw)
    torch.manual_seed(123)
    bb = get_backbone(TINY, pretrained=False)
    before = {("backbone." + k): v.clone() for k, v in bb.module.state_dict().items()}
    import headstart.estimator as api

    orig = api.get_backbone
    api.get_backbone = lambda *a, **k: bb
    try:
        clf.fit(*tiny_data)
    finally:
        api.get_backbone = orig
    after = _snapshot(clf.model_)
    return clf, bb, before, after


def _stage_changed(bb, before, after):
    return [any(_changed(before, after, "backbone." + n) for n in s.param_names) for s in bb.stages]


def test_linear_probe_trains_only_the_head(tiny_data):
    clf, bb, before, after = _fit_and_diff(tiny_data, "linear-probe")
    assert not any(_stage_changed(bb, before, after))
    # BatchNorm running statistics untouched too (the whole backbone is bit-identical)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_partial_freezes_exactly_the_first_k_stages(tiny_data):
    clf, bb, before, after = _fit_and_diff(tiny_data, "partial", freeze_stages=3)
    changed = _stage_changed(bb, before, after)
    assert changed[:3] == [False] * 3 and all(changed[3:])
    frozen_bn = [k for k in before if "running_mean" in k and any(
        k.startswith("backbone." + n.rsplit(".", 1)[0]) for s in bb.stages[:3] for n in s.param_names)]
    assert frozen_bn and all(torch.equal(before[k], after[k]) for k in frozen_bn)


def test_full_trains_everything(tiny_data):
    clf, bb, before, after = _fit_and_diff(tiny_data, "full")
    assert all(_stage_changed(bb, before, after))


def test_two_stage_runs_head_then_unfreezes(tiny_data):
    clf, bb, before, after = _fit_and_diff(tiny_data, "two-stage", freeze_stages=2)
    assert [p["name"] for p in clf.history_.phases] == ["head", "finetune"]
    changed = _stage_changed(bb, before, after)
    assert changed[:2] == [False, False] and all(changed[2:])
    assert {r["phase"] for r in clf.history_.epochs} == {"head", "finetune"}


def test_frozen_batchnorm_stays_in_eval_mode_during_training():
    bb = get_backbone(TINY, pretrained=False)
    model = TransferModel(bb.module, bb.num_features, 3, bb.preprocess, stages=bb.stages)
    apply_freeze(model, bb.stages, 2)
    model.train()
    frozen = {"backbone." + n for s in bb.stages[:2] for n in s.param_names}
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for name, m in bns:
        is_frozen = name + ".weight" in frozen
        assert m.training is not is_frozen, name
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8))
    for k, v in model.state_dict().items():
        if "running" in k:
            param = k.replace("running_mean", "weight").replace("running_var", "weight")
            assert torch.equal(stats[k], v) == (param in frozen), k


def test_no_weight_decay_on_biases_and_norms_and_layerwise_lrs():
    bb = get_backbone(TINY, pretrained=False)
    model = TransferModel(bb.module, bb.num_features, 3, bb.preprocess, stages=bb.stages)
    cfg = TrainConfig(strategy="two-stage", lr=1e-3, backbone_lr_ratio=0.1, layer_decay=0.5)
    groups = param_groups(model, bb.stages, cfg)
    for g in groups:
        for p in g["params"]:
            assert (g["weight_decay"] > 0) == (p.ndim >= 2)
    lr = {g["name"]: g["lr"] for g in groups}
    n = len(bb.stages)
    assert lr["head"] == pytest.approx(1e-3)
    assert lr[f"stage{n - 1}"] == pytest.approx(1e-4)
    assert lr["stage0"] == pytest.approx(1e-4 * 0.5 ** (n - 1))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_plan_phases_for_each_strategy():
    assert [(p.name, p.frozen) for p in plan_phases(TrainConfig(strategy="linear-probe"), 6)] == [("head", 6)]
    assert [(p.name, p.frozen) for p in plan_phases(TrainConfig(strategy="partial", freeze_stages=4), 6)] == [("finetune", 4)]
    assert [(p.name, p.frozen) for p in plan_phases(TrainConfig(strategy="full"), 6)] == [("finetune", 0)]
    assert [(p.name, p.frozen) for p in plan_phases(TrainConfig(strategy="two-stage"), 6)] == [("head", 6), ("finetune", 0)]


def test_bad_options_are_explained():
    from headstart.errors import HeadstartError

    with pytest.raises(HeadstartError, match="Did you mean 'two-stage'"):
        TrainConfig(strategy="two_stage")
    with pytest.raises(HeadstartError, match="--freeze-stages"):
        TrainConfig(strategy="partial")
    with pytest.raises(HeadstartError, match="only 6 stages"):
        plan_phases(TrainConfig(strategy="partial", freeze_stages=9), 6)


def test_training_learns_a_separable_problem(tiny_data):
    x, y = tiny_data
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=40, head_min_steps=0, lr=1e-2,
                             precision="fp32", val_fraction=0.0).fit(x, y)
    assert clf.score(x, y) == 1.0


def test_seeded_runs_are_reproducible(tiny_data):
    a = _fit(tiny_data, "two-stage", seed=3).fit(*tiny_data)
    b = _fit(tiny_data, "two-stage", seed=3).fit(*tiny_data)
    np.testing.assert_array_equal(a.predict_proba(tiny_data[0]), b.predict_proba(tiny_data[0]))


# ------------------------------------------------------------------ train_size: fine-tune on smaller crops

def test_augment_outputs_crops_at_the_training_size_and_resizes_without_augmentation():
    from headstart.data import augment

    batch = torch.randint(0, 256, (4, 6, 48, 48), dtype=torch.uint8)  # 6 channels: an image and its paired copy
    g = torch.Generator().manual_seed(0)
    out = augment(batch, g, size=32)
    assert out.shape == (4, 6, 32, 32) and out.dtype == torch.uint8
    plain = augment(batch, g, size=32, flip=False, scale=(1.0, 1.0))
    assert plain.shape == (4, 6, 32, 32)
    assert (plain.float().mean((1, 2, 3)) - batch.float().mean((1, 2, 3))).abs().max() < 2  # a resize keeps content
    assert torch.equal(augment(batch, g, flip=False, scale=(1.0, 1.0)), batch)


def test_fit_with_a_smaller_train_size_trains_on_it_and_predicts_at_the_input_size(monkeypatch):
    from conftest import make_images

    from headstart.encoders.model import TransferModel as TM

    x, y = make_images(n_per_class=10, size=40)
    sides = []
    real = TM.forward

    def spy(self, inp):
        sides.append((self.training, inp.shape[-1]))
        return real(self, inp)

    monkeypatch.setattr(TM, "forward", spy)
    clf = TransferClassifier(TINY, pretrained=False, strategy="full", epochs=1, train_size=32, precision="fp32",
                             baselines=False, batch_size=8)
    clf.fit(list(x), y)
    full = clf.preprocess_.input_size
    assert full != 32 and {s for t, s in sides if t} == {32}  # every training step at train_size
    assert {s for t, s in sides if not t} == {full}  # validation at the input size
    assert clf.fitted_config_.train_size == 32 and clf.predict(list(x[:3])).shape == (3,)


def test_bad_train_sizes_are_refused_with_the_fix():
    from headstart.modalities import modality_named

    with pytest.raises(Exception, match=r"train_size is a side in pixels in \[32, 1024\]; got 8"):
        TrainConfig(train_size=8)
    with pytest.raises(Exception, match="texts have no size: drop --train-size"):
        modality_named("text").check_config(TrainConfig(train_size=160))


def test_train_size_is_refused_for_a_backbone_that_takes_one_size_only():
    from conftest import make_images

    x, y = make_images(n_per_class=4, size=24)
    with pytest.raises(Exception, match="train_size=32: the backbone does not take 32x32 inputs"):
        TransferClassifier("timm:test_vit3", pretrained=False, strategy="full", train_size=32, precision="fp32",
                           baselines=False).fit(list(x), y)
