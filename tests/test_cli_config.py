"""The command line is generated from the config: every TrainConfig field has exactly one flag, with the
field's help and default, and every option the README names exists."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
import typer.main

from headstart.cli import app
from headstart.cli.options import config_flags
from headstart.config import TrainConfig

README = Path(__file__).resolve().parent.parent / "README.md"
OTHER_TOOLS = re.compile(r"\b(pip|make|accelerate|torchrun|pytest|apt-get|npm|git|curl|docker)\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _commands() -> dict[str, click.Command]:
    group = typer.main.get_command(app)
    return {name: group.get_command(None, name) for name in group.list_commands(None)}


def _flags(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} | {"--help"}


def test_every_config_field_has_exactly_one_flag_with_its_help_and_default():
    train = _commands()["train"]
    by_field = {}
    for p in train.params:
        if p.name.startswith("cfg__"):
            by_field.setdefault(p.name.removeprefix("cfg__"), []).append(p)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(by_field) == set(fields), f"fields without a flag: {sorted(set(fields) - set(by_field))}"
    for name, params in by_field.items():
        assert len(params) == 1, f"{name} has {len(params)} flags"
        (p,) = params
        assert p.help, f"--{p.opts[0]} has no help text"
        assert p.default == fields[name].default, name
    everything = [o for p in train.params for o in (*p.opts, *p.secondary_opts)]
    assert len(everything) == len(set(everything)), "an option is declared twice"


def test_flags_build_the_same_config_as_the_python_api(tmp_path, monkeypatch):
    """`train --schedule onecycle --no-feature-cache --layer-decay 0.5` reaches TrainConfig unchanged."""
    import headstart.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_run_train", lambda args, resume, quiet, overwrite=False: seen.update(args))
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["train", str(tmp_path), "--schedule", "onecycle", "--no-feature-cache",
                                 "--layer-decay", "0.5", "--train-bn", "--epochs", "3"])
    assert r.exit_code == 0, r.output
    assert TrainConfig.from_dict(seen["config"]) == TrainConfig(schedule="onecycle", use_feature_cache=False,
                                                                layer_decay=0.5, train_bn=True, epochs=3)


def test_a_bad_value_is_refused_with_the_parameter_named(tmp_path):
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["train", str(tmp_path), "--schedule", "linear"])
    assert r.exit_code != 0
    assert "'schedule' parameter must be one of ['cosine', 'onecycle']; got 'linear'" in str(r.exception)


def test_config_flags_cover_optional_and_boolean_fields():
    flags = {f.field: f for f in config_flags(TrainConfig)}
    assert flags["augment"].decls == ["--augment/--no-augment"]
    assert flags["use_feature_cache"].decls == ["--feature-cache/--no-feature-cache"]
    assert flags["freeze_stages"].decls == ["--freeze-stages"] and flags["freeze_stages"].default is None


def test_every_option_the_readme_names_exists():
    commands = _commands()
    every = set().union(*(_flags(c) for c in commands.values())) | _flags(typer.main.get_command(app))  # --version
    missing = []
    for line in README.read_text(encoding="utf-8").splitlines():
        code = line.split(" # ")[0]
        m = re.search(r"headstart\s+([a-z][a-z-]*)", code)
        if m and not OTHER_TOOLS.search(code.split("headstart", 1)[0]):
            named = FLAG.findall(code.split("headstart", 1)[1])  # prose ("a headstart run") names none
            cmd = commands.get(m.group(1))
            if named and cmd is None:
                missing.append(f"headstart {m.group(1)}: no such command")
            elif named:
                missing += [f"headstart {m.group(1)} {f}" for f in named if f not in _flags(cmd)]
        elif not OTHER_TOOLS.search(line):
            missing += [f"{f} (in: {line.strip()[:60]})" for f in FLAG.findall(line) if f not in every]
    assert not missing, "README names options the CLI lacks:\n" + "\n".join(missing)


@pytest.mark.parametrize("flag", ["--help"])
def test_help_answers_without_importing_torch(flag):
    import subprocess
    import sys

    code = ("import sys; from headstart.cli import app; import typer.main; "
            "typer.main.get_command(app); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_resume_reads_train_args_of_either_format():
    """train_args.json of 0.1.0 kept the config fields flat beside the other options; now under "config"."""
    from headstart.cli import _config_of

    flat = {"data": "d", "backbone": "timm:x", "strategy": "linear-probe", "epochs": 3, "quiet": False}
    assert _config_of(flat) == TrainConfig(strategy="linear-probe", epochs=3)
    assert _config_of({"config": TrainConfig(lr=0.5).to_dict()}) == TrainConfig(lr=0.5)
