import numpy as np
import pytest
import torch
from conftest import make_images, write_folder
from PIL import Image

from headstart.data import (
    as_examples,
    class_list,
    decode_all,
    encode_labels,
    load_image,
    preprocess,
    stratified_split,
)
from headstart.data.preprocess import PreprocessConfig
from headstart.data.sources import check_duplicates, from_csv
from headstart.errors import DataError

CFG = PreprocessConfig(input_size=32, crop_pct=0.875)


def test_folder_discovery_uses_subfolders_as_classes(image_folder):
    ex = as_examples(image_folder)
    assert len(ex) == 16 and sorted(set(ex.labels)) == ["bright", "dark"]


def test_empty_folder_error_says_what_is_needed(tmp_path):
    with pytest.raises(DataError, match="empty: it needs one subfolder"):
        as_examples(tmp_path)


def test_loose_images_without_class_folders(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        as_examples(tmp_path)


def test_class_folder_without_images_is_named(image_folder):
    (image_folder / "empty_class").mkdir()
    (image_folder / "empty_class" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="empty_class"):
        as_examples(image_folder)


def test_single_class_is_refused():
    with pytest.raises(DataError, match="Only one class"):
        class_list(["cat", "cat"])


def test_csv_with_missing_column_lists_the_columns(tmp_path):
    (tmp_path / "d.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"no column 'path'; its columns are \['file', 'label'\]"):
        from_csv(tmp_path / "d.csv")


def test_csv_with_missing_files_names_them(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(DataError, match="missing.png"):
        from_csv(tmp_path / "d.csv")


def test_csv_paths_are_relative_to_the_csv(tmp_path):
    x, y = make_images(2)
    write_folder(tmp_path / "imgs", x, y)
    rows = [f"imgs/{lbl}/img{i:03d}.png,{lbl}" for i, lbl in enumerate(y)]
    (tmp_path / "d.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ex = as_examples(tmp_path / "d.csv")
    assert len(ex) == 4 and ex.labels == y


def test_duplicate_rows_with_conflicting_labels(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label\na.png,x\na.png,y\n")
    with pytest.raises(DataError, match="conflicting labels"):
        check_duplicates(from_csv(tmp_path / "d.csv"))


def test_unreadable_image_is_skipped_and_reported(image_folder):
    (image_folder / "dark" / "broken.png").write_bytes(b"this is not a png")
    ex = as_examples(image_folder)
    dec = decode_all(ex, CFG)
    assert len(dec.pixels) == len(ex) - 1
    assert len(dec.skipped) == 1 and "broken.png" in dec.skipped[0][0]
    with pytest.raises(DataError, match="broken.png.*--strict"):
        decode_all(ex, CFG, strict=True)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode, tmp_path):
    img = Image.new(mode, (10, 6))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = load_image(str(path))
    assert out.mode == "RGB" and out.size == (10, 6)


def test_preprocess_resizes_short_side_then_centre_crops():
    img = Image.fromarray(np.zeros((50, 100, 3), dtype=np.uint8))
    t = preprocess(img, CFG)
    assert t.shape == (3, 32, 32) and t.dtype == torch.uint8


def test_arrays_float_and_grayscale_are_accepted():
    x = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)  # [0, 1] floats, no channel axis
    dec = decode_all(as_examples(x, [0, 1, 0]), CFG)
    assert dec.pixels.shape == (3, 3, 32, 32)
    assert torch.equal(dec.pixels[:, 0], dec.pixels[:, 1])  # gray → equal channels


def test_label_count_must_match():
    with pytest.raises(DataError, match="3 images but 2 labels"):
        as_examples(np.zeros((3, 8, 8), dtype=np.uint8), [0, 1])


def test_unseen_test_labels_are_named():
    with pytest.raises(DataError, match="never seen"):
        encode_labels(["cat", "zebra"], ["cat", "dog"])


def test_stratified_split_keeps_class_balance_and_is_seeded():
    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 1
    tr, va = stratified_split(labels, 0.2, seed=0)
    assert sorted(tr + va) == list(range(61))
    val_labels = [labels[i] for i in va]
    assert val_labels.count("a") == 10 and val_labels.count("b") == 2 and "c" not in val_labels
    assert stratified_split(labels, 0.2, seed=0) == (tr, va)
