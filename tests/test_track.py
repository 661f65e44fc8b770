"""`--track tensorboard|mlflow`: a fit logged through those libraries' own APIs, read back with them."""
import json
import subprocess
import sys

import pytest
from conftest import TINY, make_images, write_folder

from headstart import TransferClassifier, load
from headstart.config import TrainConfig
from headstart.errors import HeadstartError
from headstart.report import write_report


def _fit(tmp_path, **options):
    x, y = make_images(n_per_class=12)
    clf = TransferClassifier(TINY, strategy="two-stage", pretrained=False, epochs=2, head_epochs=3,
                             head_min_steps=0, baseline_seconds=1, **options)
    return clf.fit(x, y, out=tmp_path / "run")


def test_tensorboard_logs_every_epoch_the_options_and_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    clf = _fit(tmp_path, track="tensorboard")
    logdir = tmp_path / "run" / "tensorboard"
    assert clf.run_.meta["tracking"] == {"kind": "tensorboard", "logdir": str(logdir.resolve())}
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    epochs = clf.history_.epochs
    losses = acc.Scalars("epoch/train_loss")
    assert [e.step for e in losses] == list(range(1, len(epochs) + 1))
    assert [round(e.value, 4) for e in losses] == [round(r["train_loss"], 4) for r in epochs]
    assert len(acc.Scalars("epoch/val_acc")) == len(epochs)
    assert {r["phase"] for r in epochs} == {"head", "finetune"}
    assert len(acc.Scalars("head/train_loss")) + len(acc.Scalars("finetune/train_loss")) == len(epochs)
    final = acc.Scalars("final/val_acc")
    assert final[-1].value == pytest.approx(clf.final_metrics_()["val_acc"])
    assert acc.Scalars("baseline/linear_probe/val_acc")
    assert "strategy" in acc.Tensors("options/text_summary")[0].tensor_proto.string_val[0].decode()
    # The HPARAMS plugin's session (options beside the final metrics) is in the same folder.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    plugins = {(v.tag, v.metadata.plugin_data.plugin_name) for f in logdir.glob("events.out.tfevents*")
               for e in EventFileLoader(str(f)).Load() for v in e.summary.value}
    assert {("_hparams_/session_start_info", "hparams"), ("hparam/final/val_acc", "scalars")} <= plugins


def test_mlflow_logs_params_metrics_and_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artefact root is ./mlruns
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "headstart-test")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    clf = _fit(tmp_path, track="mlflow", track_uri=uri)
    info = clf.run_.meta["tracking"]
    assert info["kind"] == "mlflow" and info["uri"] == uri and info["experiment"] == "headstart-test"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["strategy"] == "two-stage" and run.data.params["backbone"] == TINY
    assert run.data.params["classes"] == "2"
    history = client.get_metric_history(info["run_id"], "epoch/val_loss")
    assert [m.step for m in history] == list(range(1, len(clf.history_.epochs) + 1))
    assert run.data.metrics["final/val_acc"] == pytest.approx(clf.final_metrics_()["val_acc"])
    assert "baseline/scratch/val_acc" in run.data.metrics
    names = {a.path for a in client.list_artifacts(info["run_id"], "run")}
    assert {"run/headstart.json", "run/model.safetensors", "run/metrics.jsonl"} <= names
    assert json.loads((tmp_path / "run" / "headstart.json").read_text())["tracking"]["run_id"] == info["run_id"]
    # A later report joins the same MLflow run.
    _, summary = write_report(tmp_path / "run")
    assert summary["tracked"].startswith(f"MLflow run {info['run_id']}")
    assert "run/report.html" in {a.path for a in client.list_artifacts(info["run_id"], "run")}


def test_a_fit_that_fails_marks_its_mlflow_run_failed(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    import headstart.estimator

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(headstart.estimator, "predictions", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _fit(tmp_path, track="mlflow", track_uri=uri)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("headstart").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.get_metric_history(runs[0].info.run_id, "epoch/train_loss")  # the epochs before it are kept


def test_bad_tracking_options_are_refused_with_the_fix():
    with pytest.raises(HeadstartError, match="Did you mean 'mlflow'"):
        TrainConfig(track="mlfow")
    with pytest.raises(HeadstartError, match="without track"):
        TrainConfig(track_uri="runs/tb")
    x, y = make_images(n_per_class=4)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, baselines=False, track="tensorboard")
    with pytest.raises(HeadstartError, match="give --out"):
        clf.fit(x, y)


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(HeadstartError, match=r"headstart\[track\]"):
        _fit(tmp_path, track="mlflow")
    assert not (tmp_path / "run" / "headstart.json").exists()


def test_cli_train_tracks_and_writes_the_report(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("matplotlib")
    data = write_folder(tmp_path / "data", *make_images(n_per_class=12))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(data), "--out", str(out), "--backbone",
                        TINY, "--random-init", "--strategy", "linear-probe", "--head-epochs", "3",
                        "--head-min-steps", "0", "--no-baselines", "--track", "tensorboard", "--report", "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"tensorboard --logdir {(out / 'tensorboard').resolve()}" in r.stderr
    assert f"report: {out / 'report.html'}" in r.stderr and (out / "report.html").is_file()
    assert load(out).tracking_["kind"] == "tensorboard"
