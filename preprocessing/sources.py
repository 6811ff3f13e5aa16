"""Reading tabular sources into a DataFrame: local files, URLs and bundled samples.

Every failure is a DataError that names the source and says what was expected.
"""
import contextlib
import csv
import hashlib
import io
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from preprocessing.errors import DataError

SAMPLE_PREFIX = "sklearn:"
SAMPLES = ("wine", "breast_cancer", "diabetes", "iris")
TEXT_SAMPLE = "sample:reviews"  # preprocessing/samples.py
PARQUET_MAGIC = b"PAR1"
_SUFFIX_FORMATS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
}
MAX_FILE_MB, MAX_LINE_MB = 2048, 64  # data.max_file_mb, data.max_line_mb
DELIMITERS = (";", "\t", "|")  # tried when a CSV's header has no comma
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class TransientReadError(DataError):
    """Reading a URL failed in a way that may succeed on retry (refused, timed out, 5xx)."""


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https", "file")


def read_table(source: str, fmt: str = "auto", timeout: float = 30.0, encoding_errors: str = "error",
               max_file_mb: int = MAX_FILE_MB, max_line_mb: int = MAX_LINE_MB) -> pd.DataFrame:
    """Read `source` (path, URL, sklearn:NAME or sample:reviews) into a DataFrame with at least one row.

    Bounded before the work: a file over `max_file_mb`, or a CSV/JSON line over `max_line_mb`, is refused with the
    setting that raises the limit (a one-line CSV of hundreds of MB took minutes and 13 GB in pandas).
    encoding_errors="replace" turns bytes that are not UTF-8 into U+FFFD; their count is in frame.attrs, and
    what a reader should know (a delimiter guessed, columns renamed) is in frame.attrs["warnings"]."""
    if source.startswith(SAMPLE_PREFIX):
        return load_sample(source[len(SAMPLE_PREFIX):])
    if source == TEXT_SAMPLE:
        from preprocessing.samples import reviews

        return reviews()
    limit = max_file_mb * 2**20
    remote = is_url(source) and urlparse(source).scheme != "file"
    raw = fetch(source, timeout, limit) if remote else _read_local(source, limit)
    if not raw:
        raise DataError(f"{source} is empty (0 bytes); expected a CSV, Parquet or JSON-lines table")
    fmt = guess_format(source, raw) if fmt == "auto" else fmt
    if fmt != "parquet":
        _check_lines(source, raw, max_line_mb)
    frame = _parse(source, raw, fmt, encoding_errors)
    if len(frame.columns) == 0:
        raise DataError(f"{source} has no columns; expected a header row naming the columns")
    if len(frame) == 0:
        raise DataError(f"{source} has a header but no data rows")
    return frame


def _too_large(source: str, limit: int) -> DataError:
    return DataError(f"{source} is larger than data.max_file_mb ({limit // 2**20} MB); raise data.max_file_mb, or "
                     "for a table larger than memory give a Parquet file and data.memory_budget_mb to stream it")


def _check_lines(name: str, raw: bytes, max_line_mb: int, block: int = 64 * 2**20) -> None:
    """Refuse a text file with a line longer than max_line_mb, found by scanning the bytes for newlines in blocks
    (about 1 s per GB), before a parser spends minutes and gigabytes on it."""
    limit, start, line, longest, at = max_line_mb * 2**20, 0, 1, 0, 1
    data = np.frombuffer(raw, dtype=np.uint8)
    for offset in range(0, len(data), block):
        ends = np.flatnonzero(data[offset:offset + block] == 10) + offset
        lengths = np.diff(np.concatenate(([start], ends + 1)))
        if len(lengths) and lengths.max() > longest:
            longest, at = int(lengths.max()), line + int(lengths.argmax())
        if len(ends):
            start, line = int(ends[-1]) + 1, line + len(ends)
    if len(raw) - start > longest:
        longest, at = len(raw) - start, line
    if longest > limit:
        raise DataError(f"{name}: line {at} is {longest / 2**20:.0f} MB long, more than data.max_line_mb "
                        f"({max_line_mb} MB); is it the right file? Raise data.max_line_mb if it is")


def load_sample(name: str) -> pd.DataFrame:
    """A bundled scikit-learn dataset as a frame with a 'target' column; class targets carry class names."""
    if name not in SAMPLES:
        raise DataError(f"unknown bundled sample '{SAMPLE_PREFIX}{name}'; available: "
                        + ", ".join(SAMPLE_PREFIX + s for s in SAMPLES))
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    if name != "diabetes":
        names = list(bunch.target_names)
        frame["target"] = pd.Series([str(names[i]) for i in frame["target"]], index=frame.index)
    return frame


def _read_local(source: str, limit: int) -> bytes:
    path = Path(urlparse(source).path if source.startswith("file:") else source).expanduser()
    if not path.exists():
        raise DataError(f"data file not found: {source} (looked for {path.resolve()})")
    if path.is_dir():
        raise DataError(f"{source} is a folder; tabular data must be one CSV, Parquet or JSON-lines file")
    try:
        if path.is_file() and path.stat().st_size > limit:
            raise _too_large(source, limit)
        with path.open("rb") as stream:  # not a regular file (a pipe, /dev/zero): read no more than the limit
            head = stream.read(2**20)
            refuse_binary(source, head, "parquet" if head[:4] == PARQUET_MAGIC else "csv")
            raw = head + stream.read(max(0, limit + 1 - len(head)))
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise _too_large(source, limit)
    return raw


@contextlib.contextmanager
def download_errors(url: str):
    """A download's failures as TransientReadError (worth retrying: no answer, HTTP 5xx/429) or DataError."""
    try:
        yield
    except urllib.error.HTTPError as exc:
        message = f"could not download {url}: HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code == 429:
            raise TransientReadError(message) from exc
        raise DataError(message) from exc
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientReadError(f"could not reach {url}: {reason}") from exc


def fetch(url: str, timeout: float, limit: int = MAX_FILE_MB * 2**20) -> bytes:
    """Download `url`, at most `limit` bytes; TransientReadError for failures worth retrying, DataError for the
    rest."""
    with download_errors(url), urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise _too_large(url, limit)
        raw = response.read(limit + 1)
    if len(raw) > limit:
        raise _too_large(url, limit)
    return raw


def guess_format(name: str, raw: bytes) -> str:
    if raw[:4] == PARQUET_MAGIC:
        return "parquet"
    suffix = Path(urlparse(name).path).suffix.lower()
    return _SUFFIX_FORMATS.get(suffix, "csv")


def refuse_binary(name: str, head: bytes, fmt: str) -> None:
    """A text format whose first bytes hold NULs is binary data (or UTF-16 without a byte-order mark)."""
    if fmt != "parquet" and head[:2] not in UTF16_BOMS and b"\x00" in head[:8192]:
        raise DataError(f"{name} does not look like a {fmt.upper()} file: it contains NUL bytes (binary data, or "
                        "UTF-16/UTF-32 text without a byte-order mark: re-save it as UTF-8)")


def _parse(name: str, raw: bytes, fmt: str, encoding_errors: str = "error") -> pd.DataFrame:
    if fmt == "parquet":
        try:
            return pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{name} could not be read as Parquet: {exc}") from exc
    utf16, replaced = raw[:2] in UTF16_BOMS, 0  # Excel's "Unicode text" and PowerShell write UTF-16 with a BOM
    if not utf16:
        refuse_binary(name, raw, fmt)
    try:
        text = raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        if utf16:
            raise DataError(f"{name} starts like UTF-16 text but byte {exc.start} is not; re-save it as "
                            "UTF-8") from exc
        if encoding_errors != "replace":
            line = raw[: exc.start].count(b"\n") + 1
            row = f" (data row {line - 1})" if fmt == "csv" and line > 1 else ""
            raise DataError(f"{name} is not valid UTF-8 text: line {line}{row} has the byte {raw[exc.start]:#04x}; "
                            "re-save the file as UTF-8 or set data.encoding_errors: replace") from exc
        text = raw.decode("utf-8-sig", errors="replace")
        replaced = text.count("\ufffd") - raw.decode("utf-8-sig", errors="ignore").count("\ufffd")
    frame = _parse_text(name, text, fmt)
    frame.attrs["replaced_characters"] = replaced
    if utf16:
        frame.attrs.setdefault("warnings", []).append(f"{name} was read as UTF-16 (it has a UTF-16 byte-order mark)")
    return frame


def _parse_text(name: str, text: str, fmt: str) -> pd.DataFrame:
    if fmt == "json":
        return _parse_json(name, text)
    header = text[:text.find("\n")] if "\n" in text else text
    sep, notes = "\t" if name.lower().endswith(".tsv") else ",", []
    if sep == "," and "," not in header and any(d in header for d in DELIMITERS):
        sep = max(DELIMITERS, key=header.count)  # a semicolon CSV (European Excel) read as one column otherwise
        notes.append(f"{name}: the header has no comma, so the columns were split on {sep!r}")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{name} has no header and no rows; expected a CSV table") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{name} could not be parsed as CSV: {str(exc).strip()}") from exc
    frame.attrs["warnings"] = notes + _header_notes(name, header.rstrip("\r"), sep, list(frame.columns))
    return frame


def _header_notes(name: str, header: str, sep: str, columns: list) -> list[str]:
    """What pandas renamed silently: empty column names ('Unnamed: 3') and repeated ones ('a.1')."""
    try:
        names = next(csv.reader([header], delimiter=sep))
    except (csv.Error, StopIteration):
        return []
    if len(names) != len(columns):
        return []
    notes = [f"{name}: column {i + 1} has no name; it is read as {str(col)!r}"
             for i, (raw, col) in enumerate(zip(names, columns)) if not raw.strip()]
    repeated = sorted({n for n in names if n.strip() and names.count(n) > 1})
    notes += [f"{name}: the column name {n!r} appears {names.count(n)} times; the later ones are read as "
              + ", ".join(repr(str(c)) for raw, c in zip(names, columns) if raw == n and str(c) != n)
              for n in repeated]
    return notes


def _parse_json(name: str, text: str) -> pd.DataFrame:
    """JSON lines (one object per line), or one JSON array of objects."""
    array = text.lstrip().startswith("[")
    try:
        return pd.read_json(io.StringIO(text), orient="records", lines=not array)
    except ValueError as exc:
        kind = "a JSON array of records" if array else "JSON lines (one object per line)"
        raise DataError(f"{name} could not be parsed as {kind}: {exc}") from exc


def dataset_name(source: str) -> str:
    """A short name for runs and experiments: 'sklearn:wine' -> 'wine', 'data/iris.csv' -> 'iris'."""
    if source.startswith(SAMPLE_PREFIX):
        return source[len(SAMPLE_PREFIX):]
    if source == TEXT_SAMPLE:
        return "reviews"
    return Path(urlparse(source).path).name.split(".")[0] or "dataset"


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table (values, column names and types), independent of file format and row index."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
