import json
import os
import subprocess
import sys
import time

import pytest
from conftest import TINY

HS = [sys.executable, "-m", "headstart.cli"]


def run(*args, check=True, **kw):
    p = subprocess.run([*HS, *map(str, args)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}")
    return p


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, headstart.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"
    t = time.perf_counter()
    assert "train" in run("--help").stdout
    assert time.perf_counter() - t < 10  # generous; typically well under a second


def test_version_and_piped_tables_keep_full_names():
    from headstart import __version__

    assert run("--version").stdout.strip() == f"headstart {__version__}"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe, as `headstart backbones | cat`
    out = subprocess.run([*HS, "backbones"], capture_output=True, text=True, env=env, check=True).stdout
    assert "timm:tf_efficientnet_lite0" in out and "…" not in out


def test_train_predict_evaluate_end_to_end(image_folder, tmp_path):
    out = tmp_path / "run"
    run("train", image_folder, "--backbone", TINY, "--random-init", "--out", out, "--epochs", "1",
        "--head-epochs", "2", "--head-min-steps", "0", "--batch-size", "4", "--quiet")
    assert (out / "model.safetensors").is_file() and (out / "headstart.json").is_file()
    img = next((image_folder / "dark").iterdir())
    (tmp_path / "bad.png").write_text("not an image")
    p = run("predict", out, img, tmp_path / "bad.png", check=False)
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    assert lines[0]["path"] == str(img) and lines[0]["label"] in ("dark", "bright")
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-4
    assert "error" in lines[1] and p.returncode == 1
    rep = json.loads(run("evaluate", out, image_folder, "--json").stdout)
    assert rep["n"] == 16 and 0 <= rep["accuracy"] <= 1
    assert "accuracy" in run("evaluate", out, image_folder).stdout


@pytest.mark.parametrize("args, message", [
    (["train", "/nonexistent/folder"], "does not exist"),
    (["train", "{empty}"], "empty"),
    (["train", "{data}", "--backbone", "timm:resnet_18"], "Did you mean"),
    (["train", "{data}", "--strategy", "partial"], "--freeze-stages"),
    (["predict", "{empty}", "x.png"], "not a headstart run"),
])
def test_user_errors_are_one_clean_line(args, message, image_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(empty=empty, data=image_folder) for a in args]
    p = run(*args, check=False)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr.replace("\n", " ")
    assert "Traceback" not in p.stderr


def test_backbones_lists_offline_weights():
    out = run("backbones").stdout
    assert "tf_efficientnet_lite0" in out
    assert "blocks.6" in run("backbones", "--stages", "timm:tf_efficientnet_lite0").stdout


def test_every_table_has_json():
    rows = json.loads(run("backbones", "--json").stdout)
    assert {"spec", "weights", "offline", "how"} <= set(rows[0])
    assert any(r["spec"] == "timm:tf_efficientnet_lite0" and r["offline"] for r in rows)
    st = json.loads(run("backbones", "--stages", "timm:tf_efficientnet_lite0", "--json").stdout)
    assert st["modality"] == "image" and st["num_features"] == 1280 and st["stages"][-1]["name"] == "blocks.6+conv_head+bn2"
    assert all({"index", "name", "params"} <= set(s) for s in st["stages"])


def test_predict_output_is_what_its_suffix_says(image_folder, tmp_path):
    out = tmp_path / "run"
    run("train", image_folder, "--backbone", TINY, "--random-init", "--out", out, "--strategy", "linear-probe",
        "--head-epochs", "1", "--head-min-steps", "0", "--no-baselines", "--quiet")
    img = next((image_folder / "dark").iterdir())
    p = run("predict", out, img, "--output", tmp_path / "x.txt", check=False)
    assert p.returncode == 2 and "'.txt'" in p.stderr and ".csv" in p.stderr and not (tmp_path / "x.txt").exists()
    run("predict", out, img, img, "--output", tmp_path / "p.json")
    rows = json.loads((tmp_path / "p.json").read_text())  # one JSON array, not JSON lines
    assert isinstance(rows, list) and len(rows) == 2 and rows[0]["path"] == str(img)
    run("predict", out, img, "--output", tmp_path / "p.tsv")
    header, first = (tmp_path / "p.tsv").read_text().splitlines()
    assert header.split("\t")[:2] == ["path", "label"] and first.split("\t")[0] == str(img)
    run("predict", out, img, "--output", tmp_path / "p.jsonl")
    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["path"] == str(img)


def test_a_log_file_gets_a_line_per_epoch_and_what_ran_and_why(image_folder, tmp_path):
    """stderr to a file: no progress bar that renders only at the end; each epoch a line as it ends."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with open(tmp_path / "train.log", "w") as log:
        subprocess.run([*HS, "train", str(image_folder), "--backbone", TINY, "--random-init", "--out", str(out),
                        "--strategy", "linear-probe", "--head-epochs", "1", "--head-min-steps", "6",
                        "--batch-size", "4", "--no-baselines"], stderr=log, stdout=subprocess.DEVNULL, env=env,
                       check=True)
    text = (tmp_path / "train.log").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("head epoch ")]
    assert len(lines) == 6 and lines[0].startswith("head epoch 1/6: loss") and "elapsed" in lines[0]
    assert "0:0…" not in text
    # head_epochs=1 ran 6 epochs because head_min_steps won: said on the console and kept in the run.
    assert "head: 6 epochs instead of 1: head_min_steps=6" in text
    phase = json.loads((out / "headstart.json").read_text())["history"]["phases"][0]
    assert phase["epochs_asked"] == 1 and phase["epochs_planned"] == 6 and "head_min_steps=6" in phase["epochs_why"]


def test_auto_prints_the_plan_it_follows_before_training(image_folder, tmp_path):
    p = run("train", image_folder, "--backbone", TINY, "--random-init", "--out", tmp_path / "run", "--strategy",
            "auto", "--epochs", "1", "--head-epochs", "1", "--head-min-steps", "0", "--no-baselines")
    plan = [ln for ln in p.stderr.splitlines() if ln.startswith("plan: following --strategy")]
    assert len(plan) == 1 and "--freeze-stages" in plan[0] and "parameters left" in plan[0]
    first_epoch = next(i for i, ln in enumerate(p.stderr.splitlines()) if " epoch 1/" in ln)
    assert p.stderr.splitlines().index(plan[0]) < first_epoch  # before training, not after


def test_the_wrong_kind_of_data_names_the_right_kind_of_backbone(image_folder, tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nhello there,a\nbye now,b\n")
    img = next((image_folder / "dark").iterdir())
    for data, backbone, message in [(image_folder, "vectors:glove-6b-50d", "It holds images, but this backbone reads texts"),
                                    (img, "vectors:glove-6b-50d", "is an image, but this backbone (or run) reads texts"),
                                    (tmp_path / "t.csv", TINY, "It looks like a table of texts: texts need a text backbone")]:
        p = run("train", data, "--backbone", backbone, "--out", tmp_path / "r", check=False)
        assert p.returncode == 2 and message in " ".join(p.stderr.split()), p.stderr
        assert not (tmp_path / "r").exists()
