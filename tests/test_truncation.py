"""Cutting a backbone after a stage: architecture, saved runs, and the planner's cut rule."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_images

from headstart import TransferClassifier, load
from headstart.errors import HeadstartError


def _tiny():
    from headstart.encoders import get_backbone

    return get_backbone(TINY, pretrained=False)


def test_truncation_drops_the_stages_above_the_cut():
    from headstart.encoders.cut import truncate_backbone

    bb = _tiny()
    full_params, full_features, n = bb.num_params, bb.num_features, len(bb.stages)
    cut = truncate_backbone(bb, 3)  # keep stem, blocks.0, blocks.1, blocks.2
    assert [s.name for s in cut.stages] == ["conv_stem+bn1", "blocks.0", "blocks.1", "blocks.2"]
    assert cut.num_features == cut.module.num_features == 32 != full_features
    assert cut.num_params < full_params
    names = [k for k, _ in cut.module.named_parameters()]
    assert not any(k.startswith(("conv_head", "bn2", "blocks.3", "blocks.4")) for k in names)
    assert len(cut.module.blocks) == 3
    assert cut.module(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    assert any("cut after stage 3" in note for note in cut.notes)
    # the top stage, or no cut, leaves the backbone alone; a stage that does not exist is refused
    bb2 = _tiny()
    assert truncate_backbone(bb2, n - 1) is bb2 and truncate_backbone(bb2, None) is bb2
    with pytest.raises(HeadstartError, match="cut_stage=9"):
        truncate_backbone(_tiny(), 9)


def test_truncated_output_is_the_pooled_output_the_profile_measured():
    from headstart.assess.plan import stage_features
    from headstart.encoders.cut import truncate_backbone
    from headstart.encoders.model import TransferModel

    bb = _tiny()
    px = torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8)
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages)
    per_stage = stage_features(model, bb.stages, px, precision="fp32", device=torch.device("cpu"))
    cut = truncate_backbone(bb, 2)
    with torch.no_grad():
        got = TransferModel(cut.module, cut.num_features, 2, cut.preprocess, stages=cut.stages).eval().features(px)
    np.testing.assert_allclose(got.numpy(), per_stage[2], rtol=1e-4, atol=1e-5)


def test_stage_features_fast_path_matches_the_plain_chain_and_is_cached(monkeypatch):
    """BatchNorm-folded (bf16, channels_last) stage features agree with the original chain; a second
    call is served from the disk cache and different pixels are never."""
    from headstart.assess import plan as planning
    from headstart.encoders.chain import sequential_chain
    from headstart.encoders.model import TransferModel

    bb = _tiny()
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding has something to get wrong
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    px = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    chain = sequential_chain(model.backbone)
    ends = planning.stage_chain_ends(chain, bb.stages)
    with torch.no_grad():  # the reference: the original modules, fp32, no folding
        x, plain = model.normalize(px), []
        for j, (_, m) in enumerate(chain):
            x = m(x)
            plain += [(x.mean((2, 3)) if x.dim() == 4 else x).numpy()] * ends.count(j)
    cpu = torch.device("cpu")
    model.train()  # a fresh model is in train mode: profiling it must not touch BatchNorm statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    planning.stage_features(model, bb.stages, px, precision="bf16", device=cpu)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    _, dtype, channels_last, _ = planning._fast_chain(model, chain, px[:2], "bf16", cpu)
    assert dtype == torch.bfloat16 and channels_last  # the fast path really ran (folded, cast)
    fp32 = planning.stage_features(model, bb.stages, px, precision="fp32", device=cpu)
    for got, ref in zip(fp32, plain):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    for got, ref in zip(planning.stage_features(model, bb.stages, px, precision="bf16", device=cpu), plain):
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.99

    calls = []
    real = planning.stage_features
    monkeypatch.setattr(planning, "stage_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = planning.cached_stage_features(model, bb.stages, px, preprocess=bb.preprocess, precision="fp32", device=cpu)
    again = planning.cached_stage_features(model, bb.stages, px, preprocess=bb.preprocess, precision="fp32", device=cpu)
    assert len(calls) == 1 and all(np.array_equal(a, b) for a, b in zip(first, again))
    other = planning.cached_stage_features(model, bb.stages, px.flip(0), preprocess=bb.preprocess, precision="fp32",
                                           device=cpu)
    assert len(calls) == 2 and np.allclose(other[-1], first[-1][::-1], rtol=1e-4, atol=1e-5)


def test_truncated_run_reloads_with_identical_predictions(tmp_path, tiny_data):
    x, y = tiny_data
    clf = TransferClassifier(TINY, strategy="two-stage", pretrained=False, epochs=1, head_epochs=2, head_min_steps=0,
                             batch_size=8, precision="fp32", cut_stage=2, baselines=False)
    clf.fit(x, y, out=tmp_path / "run")
    assert clf.model_.head[-1].in_features == 24
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["config"]["cut_stage"] == 2
    assert meta["backbone"]["num_features"] == 24 and meta["backbone"]["stages"][-1] == "blocks.1"
    again = load(tmp_path / "run")
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    # transfer again from the truncated run: it stays truncated
    from headstart.encoders import get_backbone

    bb = get_backbone(f"file:{tmp_path / 'run'}")
    assert bb.num_features == 24 and len(bb.stages) == 3


def test_cut_rule():
    from headstart.assess.plan import StageProfile, choose_cut, make_plan

    def rows(accs, dists=None, logme=None):
        dists, logme = dists or [1.2] * len(accs), logme or [0.0] * len(accs)
        return [StageProfile(i, f"s{i}", 8 * (i + 1), e, a, d) for i, (a, d, e) in enumerate(zip(accs, dists, logme))]

    # the top stage is measurably worse than stage 3 (by more than one standard error, 0.015): cut there
    assert choose_cut(rows([0.5, 0.6, 0.8, 0.88, 0.84]), n_images=600) == 3
    # stage 2 is as good within one standard error of the best: the smallest network that is as good
    assert choose_cut(rows([0.5, 0.6, 0.87, 0.88, 0.84]), n_images=600) == 2
    # ... but not when it is further than that from the best
    assert choose_cut(rows([0.5, 0.6, 0.86, 0.88, 0.84]), n_images=600) == 3
    # a middle stage ahead of the top by less than the noise (Fashion-MNIST's 0.822 vs 0.815): no cut
    assert choose_cut(rows([0.5, 0.6, 0.8, 0.822, 0.815]), n_images=600) is None
    # LogME (which does not reward useless dimensions) still prefers the top stage: no cut
    assert choose_cut(rows([0.5, 0.6, 0.8, 0.88, 0.84], logme=[-0.2, -0.1, 0.0, 0.1, 0.2]), n_images=600) is None
    # every stage adds accuracy: keep them all
    assert choose_cut(rows([0.5, 0.6, 0.8, 0.85, 0.9]), n_images=600) is None
    plan = make_plan(rows([0.5, 0.6, 0.8, 0.88, 0.84], [0.1, 0.4, 1.2, 1.8, 1.9]), per_class=100, n_images=600)
    assert plan.cut_stage == 3 and plan.freeze_stages == 2 and any("cut after stage 3" in r for r in plan.reasons)
    few = make_plan(rows([0.5, 0.6, 0.8, 0.88, 0.84]), per_class=10, n_images=600)
    assert (few.strategy, few.freeze_stages, few.cut_stage) == ("linear-probe", 4, 3)  # every kept stage frozen
    # fine-tuning would start above the cut: the top kept stage is fine-tuned
    late = make_plan(rows([0.5, 0.6, 0.8, 0.88, 0.84], [0.1, 0.2, 0.3, 0.4, 1.9]), per_class=100, n_images=600)
    assert (late.cut_stage, late.freeze_stages) == (3, 3)


def test_auto_cuts_where_the_profile_says(tmp_path, monkeypatch):
    """A profile whose middle stage beats the top: auto trains, saves and reloads the truncated network."""
    import headstart.assess.plan as planning

    real = planning.profile

    def profile_with_a_better_middle(*args, **kwargs):
        rows = real(*args, **kwargs)
        for r, acc in zip(rows, [0.5, 0.6, 0.9, 0.8, 0.7, 0.7]):
            r.linear_acc, r.logme = acc, acc
        return rows

    monkeypatch.setattr(planning, "profile", profile_with_a_better_middle)
    x, y = make_images(n_per_class=12)
    clf = TransferClassifier(TINY, strategy="auto", pretrained=False, epochs=1, head_epochs=2, head_min_steps=0,
                             precision="fp32", baselines=False)
    clf.fit(x, y, out=tmp_path / "run")
    assert clf.plan_.cut_stage == 2 and clf.fitted_config_.cut_stage == 2
    assert clf.model_.head[-1].in_features == 24  # blocks.1 has 24 channels
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["plan"]["cut_stage"] == meta["config"]["cut_stage"] == 2
    np.testing.assert_array_equal(load(tmp_path / "run").predict_proba(x), clf.predict_proba(x))
