"""Runs saved by an earlier release still load and predict exactly what that release predicted.

``tests/fixtures/runs_v1`` holds run directories written by headstart 0.1.0 (``format_version`` 1,
before the one-pipeline reshape; made by ``tests/fixtures/make_v1_runs.py``): an image run, a
``vectors:`` text run and an ``hf:`` text run, each with the predictions the saving release made.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart import load

RUNS = Path(__file__).parent / "fixtures" / "runs_v1"


def test_image_run_of_format_1_loads_and_predicts_the_same():
    run = RUNS / "image"
    expected = json.loads((run / "expected.json").read_text())
    clf = load(run)
    x = np.load(run / "inputs.npy")
    np.testing.assert_allclose(clf.predict_proba(x), np.array(expected["probabilities"]), atol=1e-5)
    assert list(clf.predict(x)) == expected["labels"]


@pytest.mark.parametrize("name", ["text-vectors", "text-hf"])
def test_text_run_of_format_1_loads_and_predicts_the_same(name):
    run = RUNS / name
    expected = json.loads((run / "expected.json").read_text())
    clf = load(run)
    np.testing.assert_allclose(clf.predict_proba(expected["texts"]), np.array(expected["probabilities"]), atol=1e-5)
    assert list(clf.predict(expected["texts"])) == expected["labels"]
