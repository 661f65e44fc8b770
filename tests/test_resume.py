"""Crash safety: kill -9 a real training process, resume it, get the same weights as an unbroken run."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, make_images, write_folder
from safetensors.torch import load_file

ARGS = ["--backbone", TINY, "--random-init", "--strategy", "two-stage", "--freeze-stages", "2",
        "--epochs", "8", "--head-epochs", "3", "--head-min-steps", "0", "--batch-size", "8", "--precision", "fp32", "--seed", "7",
        "--no-baselines", "--quiet"]


def _cli(*args):
    return [sys.executable, "-m", "headstart.cli", *map(str, args)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    x, y = make_images(n_per_class=24, size=48, seed=3)
    return write_folder(tmp_path_factory.mktemp("resume") / "data", x, y)


def _wait_for_checkpoint(path, proc, phase_index, timeout=120):
    from headstart.train.loop import load_checkpoint

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if path.is_file():
            try:
                ckpt = load_checkpoint(path)
            except Exception:  # being replaced right now; try again
                continue
            if ckpt["phase_index"] >= phase_index and ckpt["epoch"] >= 1:
                return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The same run, never interrupted."""
    ref = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_cli("train", folder, "--out", ref, *ARGS), check=True, capture_output=True)
    return ref


@pytest.mark.parametrize("phase_index", [0, 1], ids=["killed-in-head-phase", "killed-in-finetune-phase"])
def test_kill_9_then_resume_equals_unbroken_run(folder, reference, tmp_path, phase_index):
    env = {**os.environ, "COLUMNS": "120"}
    ref = reference

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", folder, "--out", run, *ARGS), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for_checkpoint(run / "checkpoint.pt", proc, phase_index), "run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model.safetensors").exists()

    done = subprocess.run(_cli("resume", run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # fp32 on CPU is deterministic: exactly equal, not merely close
        assert torch.equal(a[k], b[k]), k
    lines_a = (ref / "metrics.jsonl").read_text().splitlines()
    lines_b = (run / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in __import__("json").loads(l).items() if k not in ("seconds", "images_per_s")} for l in ls]
    assert strip(lines_a) == strip(lines_b)
    assert not (run / "checkpoint.pt").exists()  # the finished run supersedes it


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from headstart.storage import atomic_path
    from headstart.train.loop import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    with atomic_path(path) as tmp:
        torch.save({"epoch": 1, "w": torch.ones(3)}, tmp)

    class DiskFull(OSError):
        pass

    with pytest.raises(DiskFull):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a checkpoi")
            raise DiskFull("No space left on device")
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no stray temporary files


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_follow_the_umask_like_any_file_the_user_writes(tmp_path, umask, mode):
    from headstart import TransferClassifier

    x, y = make_images(n_per_class=6)
    old = os.umask(umask)
    try:
        TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=1, head_min_steps=0,
                           baselines=False, precision="fp32").fit(x, y, out=tmp_path / "run")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "headstart.json", "metrics.jsonl"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


def test_resume_without_checkpoint_is_explained(folder, tmp_path):
    p = subprocess.run(_cli("train", folder, "--out", tmp_path / "new", "--resume", *ARGS),
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Nothing to resume" in p.stderr


def test_resume_with_changed_options_is_refused(folder, tmp_path):
    from headstart import TransferClassifier
    from headstart.errors import HeadstartError
    from headstart.storage import atomic_path

    x, y = make_images(6)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0, precision="fp32")
    run = tmp_path / "r"
    run.mkdir()
    with atomic_path(run / "checkpoint.pt") as tmp:
        torch.save({"config": {**clf.resolved_config().to_dict(), "lr": 0.5}}, tmp)
    with pytest.raises(HeadstartError, match=r"different options \['lr'\]"):
        clf.fit(x, y, out=run, resume=True)


def test_resume_with_different_data_is_refused(tmp_path):
    import numpy as np

    from headstart import TransferClassifier
    from headstart.errors import HeadstartError
    from headstart.storage import atomic_path

    x, y = make_images(6)
    opts = dict(strategy="two-stage", pretrained=False, epochs=3, head_epochs=2, head_min_steps=0,
                precision="fp32", val_fraction=0)
    run = tmp_path / "r"
    clf = TransferClassifier(TINY, **opts).fit(x, y, out=run)
    # an interrupted run's checkpoint, recorded for other training images
    ckpt = {"config": clf.resolved_config().to_dict(), "data_sha256": "0" * 64, "phase_index": 1, "epoch": 1,
            "records": [], "phases": [], "model": clf.model_.state_dict(), "optimizer": None}
    with atomic_path(run / "checkpoint.pt") as tmp:
        torch.save(ckpt, tmp)
    with pytest.raises(HeadstartError, match="training images differ"):
        TransferClassifier(TINY, **opts).fit(np.flip(x, 0).copy(), y[::-1], out=run, resume=True)


def test_ctrl_c_says_what_was_saved_and_how_to_resume(folder, tmp_path):
    run = tmp_path / "stopped"
    # Long and without early stopping: the run must still be training when the signal comes.
    long = [a for a in ARGS] + ["--epochs", "400", "--patience", "1000"]
    proc = subprocess.Popen(_cli("train", folder, "--out", run, *long), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})
    assert _wait_for_checkpoint(run / "checkpoint.pt", proc, phase_index=1), "finished before it could be stopped"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"continue with: headstart resume {run}" in err and "checkpoint (phase 2, epoch" in err


# -- never lose work: a finished run, or an interrupted one, is never replaced unless asked ----------

WIDE = {**os.environ, "COLUMNS": "400"}  # one line per message, whatever the terminal the tests run in
QUICK = ["--backbone", TINY, "--random-init", "--strategy", "linear-probe", "--head-epochs", "2",
         "--head-min-steps", "0", "--precision", "fp32", "--no-baselines", "--quiet"]


def test_train_refuses_to_replace_a_finished_run_until_told(folder, tmp_path):
    run = tmp_path / "run"
    subprocess.run(_cli("train", folder, "--out", run, *QUICK), check=True, capture_output=True)
    before = (run / "model.safetensors").read_bytes()
    (run / "predictions" / "stale.npz").parent.mkdir(exist_ok=True)
    (run / "predictions" / "stale.npz").write_bytes(b"from the old model")

    p = subprocess.run(_cli("train", folder, "--out", run, *QUICK, "--seed", "1"), capture_output=True, text=True, env=WIDE)
    assert p.returncode == 2 and "already holds a finished run" in p.stderr and "--overwrite" in p.stderr
    assert (run / "model.safetensors").read_bytes() == before and (run / "train_args.json").is_file()

    p = subprocess.run(_cli("train", folder, "--out", run, *QUICK, "--seed", "1", "--overwrite"),
                       capture_output=True, text=True, env=WIDE)
    assert p.returncode == 0, p.stderr
    assert (run / "model.safetensors").read_bytes() != before
    assert not (run / "predictions" / "stale.npz").exists()  # nothing derived from the old model survives
    assert '"seed": 1' in (run / "train_args.json").read_text()


def test_train_keeps_an_interrupted_runs_checkpoint_and_names_resume(folder, tmp_path):
    run = tmp_path / "run"
    long = ARGS + ["--epochs", "400", "--patience", "1000"]
    proc = subprocess.Popen(_cli("train", folder, "--out", run, *long), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert _wait_for_checkpoint(run / "checkpoint.pt", proc, phase_index=0), "finished before it could be killed"
    proc.kill()
    proc.wait(timeout=30)
    ckpt = (run / "checkpoint.pt").read_bytes()
    p = subprocess.run(_cli("train", folder, "--out", run, *ARGS), capture_output=True, text=True, env=WIDE)
    assert p.returncode == 2 and f"headstart resume {run}" in p.stderr and "--overwrite" in p.stderr
    assert "without --resume" not in p.stderr
    assert (run / "checkpoint.pt").read_bytes() == ckpt  # kept, byte for byte


def test_api_refusal_names_the_python_keyword(tmp_path):
    from headstart import TransferClassifier
    from headstart.errors import HeadstartError

    x, y = make_images(6)
    opts = dict(strategy="linear-probe", pretrained=False, head_epochs=1, head_min_steps=0, precision="fp32",
                baselines=False)
    TransferClassifier(TINY, **opts).fit(x, y, out=tmp_path / "r")
    with pytest.raises(HeadstartError, match=r"finished run.*overwrite=True") as err:
        TransferClassifier(TINY, **opts).fit(x, y, out=tmp_path / "r")
    assert "--overwrite" not in str(err.value)
    TransferClassifier(TINY, **opts, seed=3).fit(x, y, out=tmp_path / "r", overwrite=True)
    with pytest.raises(HeadstartError, match="pass one of them"):
        TransferClassifier(TINY, **opts).fit(x, y, out=tmp_path / "r", overwrite=True, resume=True)


def test_a_failed_train_leaves_no_half_made_run_folder(folder, tmp_path):
    run = tmp_path / "run"
    p = subprocess.run(_cli("train", tmp_path / "no-such-data", "--out", run, *QUICK), capture_output=True, text=True, env=WIDE)
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert not run.exists()  # train_args.json used to stay behind
    # A folder the user made keeps what they put in it, and only that.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    p = subprocess.run(_cli("train", tmp_path / "no-such-data", "--out", mine, *QUICK), capture_output=True)
    assert p.returncode == 2 and sorted(f.name for f in mine.iterdir()) == ["notes.txt"]


def test_default_out_is_a_fresh_folder_per_run(folder, tmp_path):
    for _ in range(2):
        p = subprocess.run(_cli("train", folder, *QUICK), capture_output=True, text=True, cwd=tmp_path, env=WIDE)
        assert p.returncode == 0, p.stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("run-") and (r / "headstart.json").is_file() for r in runs)
    assert runs[-1].name in p.stderr  # the summary says where the run went


def test_resume_of_a_finished_run_names_overwrite_not_dropping_resume(folder, tmp_path):
    run = tmp_path / "run"
    subprocess.run(_cli("train", folder, "--out", run, *QUICK), check=True, capture_output=True)
    p = subprocess.run(_cli("resume", run), capture_output=True, text=True, env=WIDE)
    assert p.returncode == 2 and "already finished" in p.stderr and "--overwrite" in p.stderr
    assert "without --resume" not in p.stderr
