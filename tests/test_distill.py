"""Teacher -> student distillation: the loss, the transfer set, the checks, the run, resume, the CLI.

Unit tests use tiny random models and synthetic images; one test distils a text teacher (a tiny BERT)
into a word-vector student. The real Lite2 -> Lite0 / scratch:tiny figures are in
benchmarks/bench_distill.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY, make_images, write_folder
from safetensors.torch import load_file
from test_text import corpus, glove_txt, tiny_bert  # noqa: F401  (fixtures)
from torch import nn

from headstart.config import TrainConfig
from headstart.data import as_examples
from headstart.data.preprocess import PreprocessConfig
from headstart.distill import (
    DistillConfig,
    Teacher,
    distill,
    soft_target_loss,
    student_config,
)
from headstart.distill.loss import DistillObjective
from headstart.encoders.model import TransferModel
from headstart.errors import BackboneError, DataError, HeadstartError
from headstart.modalities.image import IMAGE
from headstart.train.objectives import Batch
from headstart.train.strategies import Phase

FAST = dict(precision="fp32", baselines=False)


# ------------------------------------------------------------------ the loss

def test_soft_target_loss_matches_a_hand_computed_case():
    s, t, T = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 1.0, 0.0]]), 2.0
    p = np.exp(t.numpy()[0] / T) / np.exp(t.numpy()[0] / T).sum()
    q = np.exp(s.numpy()[0] / T) / np.exp(s.numpy()[0] / T).sum()
    expected = T * T * float((p * np.log(p / q)).sum())
    assert soft_target_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)  # a perfect student pays nothing


def test_t_squared_keeps_the_gradient_size_whatever_the_temperature():
    # d/dz_s T^2 KL = T (p_s - p_t) -> (z_s - z_t) / N for large T: the same size at T = 10 and T = 40.
    torch.manual_seed(0)
    t = torch.randn(4, 5)
    t -= t.mean(1, keepdim=True)
    grads = {}
    for T in (10.0, 40.0):
        s = torch.zeros(4, 5, requires_grad=True)
        soft_target_loss(s, t, T).sum().backward()
        grads[T] = s.grad.clone()
    torch.testing.assert_close(grads[40.0], (0 - t) / 5, atol=2e-3, rtol=0.05)
    torch.testing.assert_close(grads[10.0], grads[40.0], atol=2e-2, rtol=0.1)
    # Without the T^2 the same gradient would be 16x smaller at T=40 than at T=10.
    assert grads[40.0].abs().sum() > 0.9 * grads[10.0].abs().sum()


def test_objective_mixes_labels_and_soft_targets_and_unlabelled_rows_get_soft_only():
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2])
    labelled = torch.tensor([True, False])
    out = DistillObjective(temperature=3.0, alpha=0.25).loss(
        head, Batch(x, y, {"teacher_logits": teacher, "labelled": labelled}), phase=Phase("head", 0, 1))
    soft = soft_target_loss(x, teacher, 3.0)
    ce0 = torch.nn.functional.cross_entropy(x[:1], y[:1])
    expected = ((0.25 * ce0 + 0.75 * soft[0]) + soft[1]) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ a teacher that knows more than the labels

class _Brightness(nn.Module):
    """Mean brightness per channel: enough to know the class of the synthetic images exactly."""

    num_features = 3

    def forward(self, x):
        return x.mean((2, 3))


def _rule_teacher(classes) -> Teacher:
    """Classes are brightness bands (make_images): a fixed linear rule on the mean brightness."""
    pp = PreprocessConfig(input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
    model = TransferModel(_Brightness(), 3, len(classes), pp)
    k = len(classes)
    centres = torch.tensor([(i + 0.5) / k for i in range(k)])
    with torch.no_grad():  # logit_i = -(b - c_i)^2 * scale, expanded to a linear function plus a constant
        lin = model.head[-1]
        lin.weight.copy_((2 * centres * 40).unsqueeze(1).repeat(1, 3) / 3)
        lin.bias.copy_(-(centres ** 2) * 40)
    return Teacher(model.eval(), IMAGE, pp, None, list(classes), spec="rule:brightness")


def test_soft_targets_that_know_more_than_the_labels_lift_the_student():
    """All but 3 of class a's 40 labels say b: the labels alone teach the student that dark images are b;
    the teacher knows better, and the student trained on its soft targets (alpha 0) follows it."""
    classes = ("a", "b", "c")
    x, y = make_images(n_per_class=40, classes=classes, size=16, seed=1)
    noisy = ["b" if c == "a" and i >= 3 else c for i, c in enumerate(y)]
    train_ex = as_examples(x, noisy)
    xv, yv = make_images(n_per_class=20, classes=classes, size=16, seed=2)
    val_ex = as_examples(xv, yv)
    teacher = _rule_teacher(classes)
    cfg = student_config("scratch:tiny", TrainConfig(**FAST), {"epochs": 10, "patience": 10, "batch_size": 16})
    result = distill(teacher, DistillConfig(student="scratch:tiny", temperature=2.0, alpha=0.0, views=1), cfg,
                     train_ex, val_ex)
    rep = result.report
    assert rep["teacher"]["val_acc"] == 1.0
    assert rep["direct"]["val_acc"] < 0.8  # learnt the wrong labels
    assert rep["student"]["val_acc"] >= rep["direct"]["val_acc"] + 0.15
    assert rep["ratio"] is not None and rep["ratio"] > 0.4
    assert rep["transfer_set"]["teacher_agreement_labelled"] < 0.85  # the labels disagree with the teacher


# ------------------------------------------------------------------ checks before training

def test_preprocessing_mismatches_fail_before_training(glove_txt):  # noqa: F811
    classes = ("a", "b")
    x, y = make_images(n_per_class=10, classes=classes, size=16)
    ex = as_examples(x, y)
    teacher = _rule_teacher(classes)
    cfg = student_config("scratch:tiny", TrainConfig(**FAST), {"epochs": 1})
    with pytest.raises(BackboneError, match="reads texts but the teacher .* reads images"):
        distill(teacher, DistillConfig(student=f"vectors:{glove_txt}", temperature=2, alpha=0.5), cfg, ex, ex)
    wrong = Teacher(teacher.model, IMAGE, PreprocessConfig(input_size=16, crop_pct=1.0), None, list(classes),
                    spec="rule")  # records ImageNet statistics, normalises with 0 / 1
    with pytest.raises(HeadstartError, match="normalises with mean"):
        distill(wrong, DistillConfig(temperature=2, alpha=0.5), cfg, ex, ex)
    liar = Teacher(teacher.model, IMAGE, teacher.preprocess, None, ["b", "a"], spec="rule", recorded_val_acc=0.99)
    with pytest.raises(DataError, match="scores 0.0000 on the validation split rebuilt from its run"):
        distill(liar, DistillConfig(temperature=2, alpha=0.5), cfg, ex, ex)  # classes swapped: a broken teacher


def test_bad_options_name_the_value_and_the_fix():
    with pytest.raises(HeadstartError, match="temperature must be > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(HeadstartError, match="alpha must be in"):
        DistillConfig(alpha=1.5)
    with pytest.raises(HeadstartError, match="views"):
        student_config("scratch:tiny", TrainConfig(), {"augment": True})
    with pytest.raises(HeadstartError, match="auto"):
        student_config("scratch:tiny", TrainConfig(), {"strategy": "auto"})
    with pytest.raises(BackboneError, match="Unknown scratch size 'tiniest'.*tiny"):
        from headstart.encoders import get_backbone

        get_backbone("scratch:tiniest")


def test_scratch_students_are_small():
    from headstart.encoders import get_backbone

    tiny = get_backbone("scratch:tiny")
    assert tiny.num_params + tiny.num_features * 10 + 10 <= 50_000  # with a 10-class head
    assert [s.name for s in tiny.stages] == ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert get_backbone("scratch:small").num_params > 250_000


# ------------------------------------------------------------------ the student is a normal run

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from headstart import TransferClassifier

    root = tmp_path_factory.mktemp("distill")
    x, y = make_images(n_per_class=20, classes=("a", "b", "c"), size=32, seed=4)
    data = write_folder(root / "data", x, y)
    write_folder(root / "pool", *make_images(n_per_class=10, classes=("a", "b", "c"), size=32, seed=5))
    TransferClassifier(TINY, pretrained=False, strategy="full", epochs=4, lr=3e-3, **FAST).fit(str(data),
                                                                                                out=root / "teacher")
    return root


def test_distil_save_load_predict_evaluate(teacher_run):
    from headstart import load

    teacher = load(teacher_run / "teacher")
    student = teacher.distill("scratch:tiny", unlabeled=str(teacher_run / "pool"), out=teacher_run / "student",
                              epochs=3, temperature=4.0, alpha=0.5, views=2)
    rep = student.distillation_
    assert rep["transfer_set"]["unlabeled"] == 30 and rep["transfer_set"]["rows"] == 48 * 2 + 30
    assert rep["student"]["params"] < rep["teacher"]["params"]
    assert rep["teacher"]["run"] == str(teacher_run / "teacher")
    again = load(teacher_run / "student")
    data = str(teacher_run / "data")
    np.testing.assert_array_equal(again.predict_proba(data), student.predict_proba(data))
    assert again.run_.distillation["temperature"] == 4.0
    assert again.backbone_info_["spec"] == "scratch:tiny"
    assert set(again.evaluate(data)) >= {"accuracy", "macro_f1"}
    assert not (teacher_run / "student" / "checkpoint.pt").exists()


def test_the_student_exports_like_any_run(teacher_run, tmp_path):
    """A normal run in every way: the scratch:tiny student exports to ONNX and the graph predicts as it does."""
    import onnxruntime as ort

    from headstart import load
    from headstart.data import as_examples, decode_all
    from headstart.export import export

    teacher = load(teacher_run / "teacher")
    teacher.distill("scratch:tiny", out=tmp_path / "student", epochs=2, temperature=2.0, alpha=0.5, views=1,
                    compare=False)
    result = export(tmp_path / "student", tmp_path / "s.onnx", data=str(teacher_run / "data"), parity_inputs=100)
    assert result.report["parity"]["passed"]
    student = load(tmp_path / "student")
    px = decode_all(as_examples(str(teacher_run / "data")), student.preprocess_).pixels.numpy()
    assert px.shape[-1] == 32  # the student's own input size, not the teacher's
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"images": px})[0]
    np.testing.assert_allclose(probs, student.predict_proba(str(teacher_run / "data")), atol=1e-4)


def test_t_and_alpha_are_chosen_on_validation_when_not_given(teacher_run, tmp_path):
    from headstart import load

    student = load(teacher_run / "teacher").distill("scratch:tiny", epochs=2, views=1, selection_fraction=0.5,
                                                    compare=False)
    rep = student.distillation_
    assert rep["chosen_by"] == "validation" and len(rep["selection"]) == 4
    best = max(rep["selection"], key=lambda r: r["val_acc"])
    assert best["val_acc"] == max(r["val_acc"] for r in rep["selection"])
    assert (rep["temperature"], rep["alpha"]) in [(r["temperature"], r["alpha"]) for r in rep["selection"]]
    assert rep["direct"] == {"skipped": "compare=False"} and rep["ratio"] is None


def test_teacher_data_that_moved_asks_for_data(teacher_run, tmp_path):
    from headstart import load

    teacher = load(teacher_run / "teacher")
    teacher.data_info_ = {**teacher.data_info_, "origin": str(tmp_path / "gone")}
    with pytest.raises(HeadstartError, match="--data PATH"):
        teacher.distill("scratch:tiny")


# ------------------------------------------------------------------ the command line, and kill -9

def _cli(*args):
    return [sys.executable, "-m", "headstart.cli", *map(str, args)]


DISTILL_ARGS = ["--student", "scratch:tiny", "--epochs", "8", "--temperature", "3", "--alpha", "0.3", "--views", "2",
                "--quiet"]


def test_cli_distill_then_evaluate_and_predict(teacher_run, tmp_path):
    out = tmp_path / "small"
    done = subprocess.run(_cli("distill", teacher_run / "teacher", "--out", out, "--epochs", "2", "--views", "1",
                               "--temperature", "2", "--alpha", "0.5"), capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "same student, labels only" in done.stderr and "distillation gain" in done.stderr
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["distillation"]["student"]["spec"] == "scratch:tiny" and meta["config"]["strategy"] == "full"
    ev = subprocess.run(_cli("evaluate", out, teacher_run / "data", "--json"), capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    one = next((teacher_run / "data" / "a").iterdir())
    pred = subprocess.run(_cli("predict", out, one), capture_output=True, text=True)
    assert pred.returncode == 0 and json.loads(pred.stdout.splitlines()[0])["label"] in ("a", "b", "c")


def test_kill_9_then_resume_equals_unbroken_distillation(teacher_run, tmp_path):
    from headstart.train.loop import load_checkpoint

    teacher = teacher_run / "teacher"
    ref = tmp_path / "ref"
    subprocess.run(_cli("distill", teacher, "--out", ref, *DISTILL_ARGS), check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("distill", teacher, "--out", run, *DISTILL_ARGS), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt, t0 = run / "checkpoint.pt", time.time()
    killed = False
    while time.time() - t0 < 120 and proc.poll() is None:
        try:
            if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        except Exception:  # the checkpoint is being replaced right now; look again
            pass
        time.sleep(0.01)
    proc.wait()
    assert killed, "the distillation finished before it could be killed; give it more epochs"
    assert not (run / "headstart.json").exists()
    state = json.loads((run / "distill_state.json").read_text())
    assert "direct" in state and "chosen" in state  # finished stages are not redone
    done = subprocess.run(_cli("resume", run), capture_output=True, text=True)  # reads distill_args.json
    assert done.returncode == 0, done.stderr
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------ texts

def test_text_teacher_distils_into_a_word_vector_student(tiny_bert, glove_txt, tmp_path):  # noqa: F811
    from headstart import TransferClassifier, load

    texts, labels = corpus()
    teacher = TransferClassifier(f"hf:{tiny_bert}", strategy="linear-probe", head_min_steps=200, lr=1e-2,
                                 **FAST).fit(texts, labels)
    student = teacher.distill(f"vectors:{glove_txt}", data=texts, y=labels, strategy="linear-probe",
                              head_min_steps=200, lr=1e-2, temperature=2.0, alpha=0.5, out=tmp_path / "s")
    rep = student.distillation_
    assert rep["transfer_set"]["views"] == 1  # no augmented views of a text
    assert "tokenises with its own tokenizer" in " ".join(rep["checks"])
    again = load(tmp_path / "s")
    np.testing.assert_array_equal(again.predict_proba(texts[:6]), student.predict_proba(texts[:6]))
