"""Fuzzing the two parsers of untrusted input: image decoding and CSV reading.

``load_image`` may only raise :class:`BadImage`, and ``from_csv`` only :class:`HeadstartError`; anything
else would surface as a traceback in the middle of a training run.

The default budget keeps this file to a few seconds, with a fixed seed so CI is reproducible. For a
longer, randomised run: ``HEADSTART_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py``.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from headstart.data import BadImage, load_image, preprocess
from headstart.data.preprocess import PreprocessConfig
from headstart.data.sources import from_csv
from headstart.errors import HeadstartError

LONG_RUN = os.environ.get("HEADSTART_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(LONG_RUN or 150),
    derandomize=not LONG_RUN,  # reproducible in CI; a long run explores new inputs each time
    deadline=None,  # decoding time varies with the machine's load, and slowness is not the question
    database=None,  # write nothing into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CFG = PreprocessConfig(input_size=16)


def _seed_images() -> dict[str, bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {}
    for name, img, fmt, kw in [
        ("rgb.png", rgb, "PNG", {}),
        ("palette.png", rgb.convert("P"), "PNG", {"transparency": 0}),
        ("gray16.png", Image.fromarray(np.arange(117, dtype=np.uint16).reshape(9, 13) * 500), "PNG", {}),
        ("rgb.jpg", rgb, "JPEG", {"quality": 80}),
        ("progressive.jpg", rgb, "JPEG", {"progressive": True}),
        ("rotated.jpg", rgb, "JPEG", {"exif": exif.tobytes()}),
        ("cmyk.jpg", rgb.convert("CMYK"), "JPEG", {}),
        ("anim.gif", rgb, "GIF", {"save_all": True, "append_images": [rgb.rotate(90)]}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        seeds[name] = buf.getvalue()
    return seeds


SEEDS = _seed_images()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def decode(path) -> None:
    """The whole decode path; only BadImage may escape (it becomes a skipped, reported file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about odd chunks and EXIF; not our concern here
        try:
            img = load_image(str(path))
        except BadImage as exc:
            assert str(exc), "a BadImage must say why"
            return
    assert img.mode == "RGB"
    x = preprocess(img, CFG)
    assert tuple(x.shape) == (3, 16, 16)


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]))
def test_random_bytes_never_escape_load_image(scratch, data, suffix):
    path = scratch / f"random{suffix}"
    path.write_bytes(data)
    decode(path)


@st.composite
def mutated_image(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "splice"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[i:]
        elif op == "splice":  # a header field (size, length, offset) set to an extreme value
            data[i:i + 4] = draw(st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                                  b"\x00\x01\x00\x00"]))
    return name, bytes(data)


@FUZZ
@given(case=mutated_image())
def test_mutated_png_jpeg_gif_never_escape_load_image(scratch, case):
    name, data = case
    path = scratch / f"mutated-{name}"
    path.write_bytes(data)
    decode(path)


def check_csv(path, **kw) -> None:
    try:
        ex = from_csv(path, **kw)
    except HeadstartError as exc:
        assert str(path) in str(exc), "the error must name the CSV file"
        return
    assert len(ex) > 0 and all(os.path.isfile(p) for p in ex.items)
    if ex.labels is not None:
        assert len(ex.labels) == len(ex.items) and all(lbl for lbl in ex.labels)


@FUZZ
@given(text=st.text(max_size=2000), suffix=st.sampled_from([".csv", ".tsv"]))
def test_random_text_never_escapes_from_csv(scratch, text, suffix):
    path = scratch / f"random{suffix}"
    path.write_text(text, encoding="utf-8")
    check_csv(path)


@FUZZ
@given(data=st.binary(max_size=1000))
def test_random_bytes_never_escape_from_csv(scratch, data):
    path = scratch / "bytes.csv"
    path.write_bytes(data)
    check_csv(path)


CELL = st.one_of(
    st.sampled_from(["a.png", "./a.png", "sub/b.jpg", "missing.png", "", " ", "/", ".", "..", "a.png\x00",
                     "x" * 300, "~/a.png", "chat_été", "犬", '"', "a,b", "\t", "\r\n"]),
    st.text(max_size=40),
)


@st.composite
def csv_table(draw):
    """Structured CSVs: real column names, ragged rows, paths that exist, don't, or can't."""
    header = draw(st.one_of(  # mostly usable headers, so that the rows get read
        st.just(["path", "label"]), st.permutations(["path", "label", "class"]),
        st.lists(st.sampled_from(["path", "label", "file", "class", "", "path"]), max_size=4)))
    rows = draw(st.lists(st.lists(CELL, max_size=5), max_size=6))
    sep = draw(st.sampled_from([",", ",", ";", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    label_column = draw(st.sampled_from(["label", "label", None, "class"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), label_column


@FUZZ
@given(case=csv_table(), suffix=st.sampled_from([".csv", ".tsv"]))
def test_structured_csvs_never_escape_from_csv(scratch, case, suffix):
    text, label_column = case
    (scratch / "sub").mkdir(exist_ok=True)
    for name in ("a.png", "sub/b.jpg"):
        (scratch / name).write_bytes(b"only the file's existence matters here")
    path = scratch / f"table{suffix}"
    path.write_text(text, encoding="utf-8")
    check_csv(path, label_column=label_column)
