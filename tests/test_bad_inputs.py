"""A generated corpus of bad inputs: each must give a clear HeadstartError naming the file and the fix,
or be skipped, counted and reported. Never an uncaught traceback.

Every file is built here, inside tmp_path: nothing binary is committed. Valid-but-odd images (16-bit,
CMYK, palette, alpha, 1x1, animated, EXIF-rotated...) must decode to RGB uint8 of the configured size.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import TINY, make_images, write_folder
from PIL import Image

from headstart.data import (
    BadImage,
    Examples,
    as_examples,
    check_duplicates,
    decode_all,
    load_image,
    preprocess,
)
from headstart.data.preprocess import PreprocessConfig
from headstart.errors import DataError

S = 32
CFG = PreprocessConfig(input_size=S, crop_pct=0.875)

pytestmark = [
    # A header claiming 15000 x 15000 pixels is over our limit but under PIL's hard one: PIL warns too.
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data"),  # the broken-EXIF JPEG, on purpose
]


def tiny_clf(**kw):
    from headstart import TransferClassifier

    return TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0,
                              precision="fp32", **kw)


# ---------------------------------------------------------------------------------------- builders
def noise(h=20, w=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(w: int, h: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: any header we like (PIL cannot write 16-bit RGB, nor lie about sizes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def png_claiming(w: int, h: int) -> bytes:
    """A decompression bomb, built small: a few bytes of pixel data under a header claiming w x h."""
    return raw_png(w, h, 8, 0, b"\x00\x00")


def rgb16_png() -> bytes:
    """20 x 10, 16 bits per channel: left half pure red, right half pure blue."""
    px = np.zeros((10, 20, 3), dtype=">u2")
    px[:, :10, 0] = 65535
    px[:, 10:, 2] = 65535
    rows = b"".join(b"\x00" + px[y].tobytes() for y in range(10))
    return raw_png(20, 10, 16, 2, rows)


def gif_claiming(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)  # the logical screen size
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 high, left half red, right half blue, with EXIF orientation 6 (rotate 90° CW):
    displayed it is 20 wide x 40 high, red on top and blue below."""
    px = np.zeros((20, 40, 3), dtype=np.uint8)
    px[:, :20] = (255, 0, 0)
    px[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(px), "JPEG", quality=95, exif=exif.tobytes())


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """A JPEG with an extra APP1 (EXIF) segment right after the SOI marker."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def flip_byte(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0xFF
    return bytes(b)


def png_bad_idat_data() -> bytes:
    data = encode(noise(), "PNG")
    return flip_byte(data, data.index(b"IDAT") + 10)


def write(name: str, content) -> Callable[[Path], Path]:
    """A builder writing ``content`` (bytes, or a callable returning bytes or an image) to tmp/name."""
    def build(tmp: Path) -> Path:
        path = tmp / name
        data = content() if callable(content) else content
        if isinstance(data, Image.Image):
            data.save(path)
        else:
            path.write_bytes(data)
        return path
    return build


def self_symlink(tmp: Path) -> Path:
    path = tmp / "loop.png"
    path.symlink_to("loop.png")
    return path


def folder_named_png(tmp: Path) -> Path:
    path = tmp / "folder.png"
    path.mkdir()
    return path


# -------------------------------------------------------------------------------- unreadable files
JPEG = encode(noise(), "JPEG", quality=90)
PNG = encode(noise(), "PNG")

BAD_FILES = {
    "truncated-jpeg": (write("truncated.jpg", JPEG[: len(JPEG) // 2]), "truncated"),
    "truncated-png": (write("truncated.png", PNG[: len(PNG) // 2]), "truncated"),
    "zero-byte-file": (write("empty.png", b""), "not a readable image"),
    "text-named-png": (write("notes.png", b"just some text, not pixels\n"), "not a readable image"),
    "html-named-jpg": (write("page.jpg", b"<!doctype html><html><body>404</body></html>"), "not a readable image"),
    "jpeg-soi-only": (write("soi.jpg", b"\xff\xd8\xff"), "not a readable image"),
    "png-broken-ihdr-crc": (write("crc.png", flip_byte(PNG, 29)), "not a readable image"),
    "png-corrupt-pixel-data": (write("idat.png", png_bad_idat_data), "not a readable image"),
    "png-bomb-100000x100000": (write("bomb.png", png_claiming(100_000, 100_000)), "decompression bomb"),
    "png-bomb-just-over-limit": (write("bomb2.png", png_claiming(15_000, 15_000)), "decompression bomb"),
    "gif-bomb-65535x65535": (write("bomb.gif", gif_claiming(65535, 65535)), "decompression bomb"),
    "symlink-to-itself": (self_symlink, "not a readable image"),
    "directory-named-png": (folder_named_png, "not a readable image"),
    "missing-file": (lambda tmp: tmp / "missing.png", "file not found"),
}


@pytest.fixture
def good_png(tmp_path) -> Path:
    path = tmp_path / "good.png"
    noise(seed=1).save(path)
    return path


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_file_is_refused_skipped_or_named(case, tmp_path, good_png):
    build, reason = BAD_FILES[case]
    path = build(tmp_path)
    with pytest.raises(BadImage, match=reason):
        load_image(str(path))
    # In a dataset: skipped, counted and reported with the file's name ...
    ex = Examples([str(good_png), str(path)], ["a", "b"], str(tmp_path))
    dec = decode_all(ex, CFG)
    assert dec.index == [0] and tuple(dec.pixels.shape) == (1, 3, S, S)
    assert [name for name, _ in dec.skipped] == [str(path)] and reason in dec.skipped[0][1]
    # ... or, with --strict, one error naming the file and the way out.
    with pytest.raises(DataError) as err:
        decode_all(ex, CFG, strict=True)
    assert str(path) in str(err.value) and "--strict" in str(err.value)


def test_a_dataset_of_only_unreadable_files_is_one_clear_error(tmp_path):
    paths = [str(BAD_FILES[c][0](tmp_path)) for c in ("truncated-jpeg", "zero-byte-file", "png-bomb-100000x100000")]
    with pytest.raises(DataError, match=r"None of the 3 images .* could be read; first error: .*truncated\.jpg"):
        decode_all(Examples(paths, ["a", "b", "a"], str(tmp_path)), CFG)


# ----------------------------------------------------------------------- valid but odd image files
def red_then_blue(axis: int):
    """Check: the first half (along ``axis`` of the H, W tensor) is red, the second half blue."""
    def check(x: torch.Tensor) -> None:
        first, second = x.float().split(S // 2, dim=1 + axis)
        assert first[0].mean() > 200 and first[2].mean() < 60, "first half should be red"
        assert second[2].mean() > 200 and second[0].mean() < 60, "second half should be blue"
    return check


def constant(rgb):
    def check(x: torch.Tensor) -> None:
        assert x.reshape(3, -1).float().mean(1).tolist() == pytest.approx(list(rgb), abs=2)
    return check


def gray16() -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, 30), (20, 1)).astype(np.uint16)  # dark left, bright right
    return Image.fromarray(ramp)


def dark_left_bright_right(x: torch.Tensor) -> None:
    # Scaled from 16 bits (clipping at 255 would make it all white); the crop keeps ~ 22% to 80% of the ramp.
    assert x[:, :, :4].float().mean() < 90 and x[:, :, -4:].float().mean() > 170


def rgba_half_transparent() -> Image.Image:
    px = np.zeros((20, 20, 4), dtype=np.uint8)
    px[..., 0] = 255  # red everywhere, but the top half fully transparent → white
    px[10:, :, 3] = 255
    return Image.fromarray(px)


def transparent_on_top(x: torch.Tensor) -> None:
    top, bottom = x.float().split(S // 2, dim=1)
    assert top[:, :12].mean() > 250  # white
    assert bottom[0, 4:].mean() > 250 and bottom[1:, 4:].mean() < 5  # red


def palette_with_transparency() -> Image.Image:
    img = noise().convert("P")
    img.info["transparency"] = 0
    return img


ODD_FILES = {
    "png-16bit-gray": (write("gray16.png", gray16), dark_left_bright_right),
    "png-16bit-rgb": (write("rgb16.png", rgb16_png), red_then_blue(axis=1)),
    "jpeg-cmyk": (write("cmyk.jpg", lambda: noise().convert("CMYK")), None),
    "png-palette": (write("palette.png", lambda: noise().convert("P")), None),
    "png-palette-transparency": (write("palette_t.png", palette_with_transparency), None),
    "png-rgba": (write("rgba.png", rgba_half_transparent), transparent_on_top),
    "png-la": (write("la.png", lambda: noise().convert("LA")), None),
    "png-bilevel": (write("bw.png", lambda: noise().convert("1")), None),
    "png-1x1": (write("one.png", lambda: Image.new("RGB", (1, 1), (10, 20, 30))), constant((10, 20, 30))),
    "tiff-float32": (write("float.tif", lambda: Image.fromarray(np.random.rand(12, 9).astype(np.float32))), None),
    "tiff-int32": (write("int32.tif", lambda: Image.fromarray(np.arange(108, dtype=np.int32).reshape(12, 9) * 600)),
                   None),
    "gif-animated-first-frame": (write("anim.gif", animated_gif), constant((255, 0, 0))),
    "jpeg-exif-rotated": (write("rotated.jpg", exif_rotated_jpeg), red_then_blue(axis=0)),
    "jpeg-broken-exif": (write("badexif.jpg", with_app1(JPEG, b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05"
                                                         + b"\xff" * 30)), None),
    "jpeg-named-png": (write("really_a_jpeg.png", JPEG), None),
    "png-1x100000-sliver": (write("sliver.png", lambda: Image.new("L", (1, 100_000), 200)), constant((200,) * 3)),
    "non-ascii-file-name": (write("çà_и_名前.png", lambda: noise()), None),
}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_valid_but_odd_image_decodes_to_rgb_uint8(case, tmp_path):
    build, check = ODD_FILES[case]
    path = build(tmp_path)
    t0 = time.perf_counter()
    img = load_image(str(path))
    assert img.mode == "RGB"
    x = preprocess(img, CFG)
    assert time.perf_counter() - t0 < 5
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, S, S)
    if check is not None:
        check(x)


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (3, 5_000)])
def test_a_thin_sliver_is_never_resized_whole(size, tmp_path, monkeypatch):
    """Resizing the short side first would turn a 1 x 100000 PNG of a few hundred bytes into a
    256 x 25.6M image (about 26 GB) at a backbone's usual 224 px: only the crop may be resampled."""
    path = tmp_path / "sliver.png"
    Image.new("L", size, 200).save(path)
    resize = Image.Image.resize

    def guarded_resize(self, new_size, *args, **kw):
        assert new_size[0] * new_size[1] <= 64 * S * S, f"resize to {new_size} of a {self.size} image"
        return resize(self, new_size, *args, **kw)

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    constant((200, 200, 200))(preprocess(load_image(str(path)), CFG))


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    img = load_image(str(write("rotated.jpg", exif_rotated_jpeg)(tmp_path)))
    assert img.size == (20, 40)  # stored 40 x 20: the rotation turned it upright


def test_all_odd_images_decode_together_with_strict(tmp_path):
    paths = [str(build(tmp_path)) for build, _ in ODD_FILES.values()]
    dec = decode_all(Examples(paths, None, str(tmp_path)), CFG, strict=True)
    assert tuple(dec.pixels.shape) == (len(paths), 3, S, S) and dec.skipped == []


# ------------------------------------------------------------------- in-memory images and arrays
def la_lowercase() -> Image.Image:
    return Image.new("La", (4, 4))  # premultiplied alpha: PIL has no conversion to RGB


BAD_ITEMS = {
    "nan-float-array": (lambda: np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN"),
    "inf-float-array": (lambda: np.full((8, 8), np.inf), "infinity"),
    "two-channel-array": (lambda: np.zeros((8, 8, 2), dtype=np.uint8), r"shape \(8, 8, 2\)"),
    "one-dim-array": (lambda: np.zeros(64, dtype=np.uint8), r"shape \(64,\)"),
    "four-dim-array": (lambda: np.zeros((2, 8, 8, 3), dtype=np.uint8), r"shape \(2, 8, 8, 3\)"),
    "empty-array": (lambda: np.zeros((0, 8, 3), dtype=np.uint8), "empty"),
    "string-array": (lambda: np.array([["a", "b"], ["c", "d"]]), "dtype <U1"),
    "complex-array": (lambda: np.ones((8, 8), dtype=complex), "dtype complex"),
    "zero-size-pil-image": (lambda: Image.new("RGB", (0, 0)), "empty"),
    "pil-mode-La": (la_lowercase, "mode 'La'"),
    "none": (lambda: None, "unsupported input of type NoneType"),
    "int": (lambda: 7, "unsupported input of type int"),
    "dict": (lambda: {"path": "a.png"}, "unsupported input of type dict"),
}


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_bad_in_memory_image_is_refused_or_skipped(case):
    make, reason = BAD_ITEMS[case]
    with pytest.raises(BadImage, match=reason):
        load_image(make())
    ex = Examples([np.zeros((8, 8, 3), dtype=np.uint8), make()], [0, 1], "array")
    dec = decode_all(ex, CFG)
    assert dec.index == [0] and len(dec.skipped) == 1 and dec.skipped[0][0] == "array[1]"


def test_nan_images_in_an_array_dataset_are_skipped_and_counted():
    x = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    x[[1, 3]] = np.nan
    dec = decode_all(as_examples(x, [0, 1, 0, 1, 0]), CFG)
    assert dec.index == [0, 2, 4]
    assert dec.skipped == [("array[1]", "array contains NaN or infinity"),
                           ("array[3]", "array contains NaN or infinity")]


def _folder_with_labels(tmp: Path):
    write_folder(tmp / "data", *make_images(2))
    return as_examples(tmp / "data", ["x"] * 4)


LAYOUT_ERRORS = {
    "array-without-image-axes": (lambda tmp: as_examples(np.zeros((4, 8))), r"\(N, H, W\).*got shape \(4, 8\)"),
    "five-dim-array": (lambda tmp: as_examples(np.zeros((2, 2, 8, 8, 3))), r"got shape \(2, 2, 8, 8, 3\)"),
    "more-labels-than-images": (lambda tmp: as_examples(np.zeros((3, 8, 8)), [0, 1, 0, 1]),
                                "3 images but 4 labels"),
    "fewer-labels-than-images": (lambda tmp: as_examples([np.zeros((8, 8))] * 3, ["a"]), "3 images but 1 labels"),
    "labels-for-a-folder": (_folder_with_labels, "do not pass y"),
    "empty-list": (lambda tmp: as_examples([]), "No images were given"),
    "unsupported-type": (lambda tmp: as_examples({"a": 1}), "Unsupported data of type dict"),
    "path-does-not-exist": (lambda tmp: as_examples(tmp / "nope"), "does not exist"),
    "not-a-folder-csv-or-image": (lambda tmp: as_examples(write("data.xlsx", b"PK")(tmp)), "Cannot read"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_ERRORS))
def test_bad_data_layout_is_a_clear_data_error(case, tmp_path):
    call, message = LAYOUT_ERRORS[case]
    with pytest.raises(DataError, match=message):
        call(tmp_path)


# ------------------------------------------------------------------------------- folders
def test_symlink_loops_in_a_class_folder_are_not_followed(tmp_path):
    root = write_folder(tmp_path / "data", *make_images(3))
    cls = root / "dark"
    (cls / "again").symlink_to(".", target_is_directory=True)  # a folder that contains itself
    (cls / "up").symlink_to("..", target_is_directory=True)  # and one back to the root
    (cls / "a.png").symlink_to("b.png")  # two files pointing at each other
    (cls / "b.png").symlink_to("a.png")
    (cls / "gone.png").symlink_to("nowhere.png")  # dangling
    t0 = time.perf_counter()
    ex = as_examples(root)
    assert time.perf_counter() - t0 < 5
    assert sorted(ex.labels) == ["bright"] * 3 + ["dark"] * 3
    assert any("ignored 3 non-image files" in n for n in ex.notes)
    assert decode_all(ex, CFG, strict=True).skipped == []


def test_non_ascii_class_folders_work(tmp_path):
    classes = ("chat_été", "犬", "Ωμέγα")
    root = write_folder(tmp_path / "données", *make_images(2, classes=classes))
    ex = as_examples(root)
    assert sorted(set(ex.labels)) == sorted(classes)
    assert len(decode_all(ex, CFG, strict=True).index) == 6


def test_empty_class_folder_is_named(tmp_path):
    root = write_folder(tmp_path / "data", *make_images(2))
    (root / "cats").mkdir()
    (root / "cats" / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"Class folder .*cats.* has no images"):
        as_examples(root)


# ---------------------------------------------------------------------------------------- CSVs
LONG_NAME = "x" * 5000 + ".png"
BAD_CSVS = {
    "missing-path-column": ("file,label\nimg.png,a\n", r"no column 'path'; its columns are \['file', 'label'\]"),
    "missing-label-column": ("path,class\nimg.png,a\n", r"no column 'label'.*--label-column"),
    "row-without-label": ("path,label\nimg.png\n", r"empty 'label'; label every row"),
    "empty-label": ("path,label\nimg.png,  \n", r"empty 'label'"),
    "empty-file": ("", "has no data rows"),
    "header-only": ("path,label\n", "has no data rows"),
    "blank-header-line": ("\npath,label\nimg.png,a\n", "first line .* is empty; it must name the columns"),
    "latin-1-encoded": ("path,label\nimg.png,café\n".encode("latin-1"), "is not UTF-8 text.*save it as UTF-8"),
    "utf-16-encoded": ("path,label\nimg.png,a\n".encode("utf-16"), "is not UTF-8 text"),
    "binary-garbage": (bytes(range(256)) * 4, "is not UTF-8 text"),
    "huge-field": ('path,label\n"' + "a" * 200_000 + '",x\n', "is not a valid CSV file"),
    "listed-image-missing": ("path,label\nimg.png,a\nmissing.png,b\n", r"1 image\(s\) .* line 3: 'missing.png'"),
    "path-name-too-long": (f"path,label\n{LONG_NAME},a\n", "do not exist"),
    "path-with-nul-byte": ("path,label\nimg\x00.png,a\n", "do not exist"),
    "empty-path": ("path,label\n,a\n", "do not exist"),
}


@pytest.fixture
def csv_dir(tmp_path) -> Path:
    noise().save(tmp_path / "img.png")
    noise(seed=2).save(tmp_path / "img2.png")
    return tmp_path


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_is_a_data_error_naming_the_file(case, csv_dir):
    content, message = BAD_CSVS[case]
    path = csv_dir / "data.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message) as err:
        as_examples(path)
    assert str(path) in str(err.value)


GOOD_CSVS = {
    "extra-columns": ("data.csv", "path,label,notes\nimg.png,a,x\nimg2.png,b,y\n"),
    "rows-with-extra-cells": ("data.csv", "path,label\nimg.png,a,surplus,cells\nimg2.png,b\n"),
    "utf-8-bom-and-crlf": ("data.csv", "\ufeffpath,label\r\nimg.png,a\r\nimg2.png,b\r\n"),
    "tsv": ("data.tsv", "path\tlabel\nimg.png\ta\nimg2.png\tb\n"),
    "quoted-non-ascii-labels": ("data.csv", 'path,label\n"img.png","chat, été"\nimg2.png,犬\n'),
}


@pytest.mark.parametrize("case", sorted(GOOD_CSVS))
def test_odd_but_valid_csv_is_read(case, csv_dir):
    name, text = GOOD_CSVS[case]
    (csv_dir / name).write_text(text, encoding="utf-8")
    ex = as_examples(csv_dir / name)
    assert [Path(p).name for p in ex.items] == ["img.png", "img2.png"] and len(ex.labels) == 2
    assert ex.labels[1] in ("b", "犬")


def test_csv_missing_file_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"data\.csv.* does not exist"):
        as_examples(tmp_path / "data.csv")


def test_same_file_twice_with_conflicting_labels(csv_dir):
    (csv_dir / "data.csv").write_text("path,label\nimg.png,cat\nimg2.png,dog\n./img.png,dog\n")
    with pytest.raises(DataError, match=r"img\.png' is listed twice with conflicting labels 'cat' and 'dog'"):
        check_duplicates(as_examples(csv_dir / "data.csv"))


def test_same_file_twice_with_the_same_label_is_kept_once(csv_dir):
    (csv_dir / "data.csv").write_text("path,label\nimg.png,cat\nimg2.png,dog\n./img.png,cat\n")
    ex = check_duplicates(as_examples(csv_dir / "data.csv"))
    assert ex.labels == ["cat", "dog"] and "dropped 1 duplicate rows" in ex.notes


# ---------------------------------------------------------------------- training and prediction
@pytest.mark.parametrize("case", ["single-class", "conflicting-duplicates", "label-count", "no-labels"])
def test_fit_refuses_unusable_training_data_before_any_work(case, tmp_path):
    x, y = make_images(3)
    paths = [str(p) for p in sorted(write_folder(tmp_path / "d", x, y).rglob("*.png"))]
    labels = [Path(p).parent.name for p in paths]
    X, Y, message = {
        "single-class": (write_folder(tmp_path / "one", *make_images(3, classes=("cat",))), None,
                         r"Only one class \('cat'\)"),
        "conflicting-duplicates": (paths + paths[:1], labels + ["bright" if labels[0] == "dark" else "dark"],
                                   "conflicting labels"),
        "label-count": (x, y[:-1], "6 images but 5 labels"),
        "no-labels": (list(x), None, "Training needs labels"),
    }[case]
    with pytest.raises(DataError, match=message):
        tiny_clf().fit(X, Y)


def test_fit_on_only_unreadable_images_is_one_clear_error(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            (root / cls / f"{i}.png").write_text("not an image")
    with pytest.raises(DataError, match=r"None of the \d images .* could be read"):
        tiny_clf(val_fraction=0.0).fit(root)


def test_fit_strict_names_the_unreadable_file(tmp_path):
    root = write_folder(tmp_path / "d", *make_images(3))
    (root / "dark" / "broken.jpg").write_bytes(JPEG[:100])
    with pytest.raises(DataError, match=r"broken\.jpg.*--strict"):
        tiny_clf(strict=True, val_fraction=0.0).fit(root)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny model, fitted on non-ASCII class folders that hide unreadable and odd files."""
    tmp = tmp_path_factory.mktemp("fitted")
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up before the autouse cache fixture
        mp.setenv("HEADSTART_CACHE", str(tmp / "cache"))
        root = write_folder(tmp / "train", *make_images(6, classes=("chat_été", "犬")))
        bad = [BAD_FILES[c][0](root / "犬") for c in ("truncated-jpeg", "text-named-png")]
        bad.append(BAD_FILES["png-bomb-100000x100000"][0](root / "chat_été"))
        ODD_FILES["jpeg-cmyk"][0](root / "chat_été")
        ODD_FILES["png-16bit-gray"][0](root / "犬")
        clf = tiny_clf().fit(root, out=tmp / "run")
    return clf, root, tmp / "run", bad


def test_fit_skips_counts_and_reports_unreadable_images(fitted):
    clf, root, run, bad = fitted
    assert sorted(name for name, _ in clf.skipped_) == sorted(map(str, bad))
    assert clf.data_info_["n_skipped"] == 3
    assert clf.data_info_["n_train"] + clf.data_info_["n_val"] == 12 + 2  # the CMYK and 16-bit files count
    saved = json.loads((run / "headstart.json").read_text(encoding="utf-8"))
    assert saved["data"]["n_skipped"] == 3


def test_non_ascii_classes_survive_save_and_load(fitted):
    from headstart import load

    clf, root, run, _ = fitted
    assert clf.classes_ == ["chat_été", "犬"]
    again = load(run)
    assert again.classes_ == clf.classes_
    images = sorted(str(p) for p in (root / "犬").glob("img*.png"))[:2]
    assert set(again.predict(images)) <= set(clf.classes_)


def test_test_labels_never_seen_in_training(fitted, tmp_path):
    clf = fitted[0]
    test = write_folder(tmp_path / "test", *make_images(1, classes=("chat_été", "zèbre")))
    with pytest.raises(DataError, match=r"\['zèbre'\] were never seen in training"):
        clf.evaluate(test)


def test_evaluate_on_only_unreadable_images_is_one_clear_error(fitted, tmp_path):
    for cls in fitted[0].classes_:
        (tmp_path / "test" / cls).mkdir(parents=True)
        (tmp_path / "test" / cls / "broken.png").write_text("not an image")
    with pytest.raises(DataError, match="could be read"):
        fitted[0].evaluate(tmp_path / "test")


@pytest.mark.parametrize("X, message", [
    (np.full((2, 8, 8, 3), np.nan, dtype=np.float32), r"Cannot predict 'array\[0\]': array contains NaN"),
    (np.zeros((2, 8)), r"got shape \(2, 8\)"),
    ([np.zeros((8, 8, 3), dtype=np.uint8), "missing.png"], r"Cannot predict 'missing.png': file not found"),
])
def test_predict_on_bad_inputs_is_a_clear_error(fitted, X, message):
    with pytest.raises(DataError, match=message):
        fitted[0].predict(X)


def test_cli_predict_gives_a_json_error_line_per_bad_input(fitted, tmp_path):
    _, root, run, _ = fitted
    good = sorted((root / "犬").glob("img*.png"))[0]
    bad = {name: BAD_FILES[name][0](tmp_path) for name in
           ("truncated-jpeg", "zero-byte-file", "png-bomb-100000x100000", "missing-file")}
    p = subprocess.run([sys.executable, "-m", "headstart.cli", "predict", str(run), str(good),
                        *map(str, bad.values())], capture_output=True, text=True,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(good), *map(str, bad.values())]
    assert lines[0]["label"] in ("chat_été", "犬") and "error" not in lines[0]
    for line, case in zip(lines[1:], bad):
        assert BAD_FILES[case][1] in line["error"], (case, line)



def test_class_whose_every_image_is_unreadable_is_named(tmp_path):
    from headstart import TransferClassifier

    x, y = make_images(4)  # noqa: F841
    root = write_folder(tmp_path / "d", x, y)
    for f in (root / "dark").iterdir():
        f.write_text("not an image")
    clf = TransferClassifier("timm:test_efficientnet", strategy="linear-probe", pretrained=False,
                             head_epochs=2, head_min_steps=0, precision="fp32", val_fraction=0)
    with pytest.raises(DataError, match="class 'dark' was unreadable"):
        clf.fit(root)


def test_cli_predict_on_a_folder_without_images(fitted, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = subprocess.run([sys.executable, "-m", "headstart.cli", "predict", str(fitted[2]), str(empty)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "No images found" in p.stderr and "Traceback" not in p.stderr
