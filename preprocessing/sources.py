"""Reading tabular sources into a DataFrame: local files, URLs and bundled samples.

Every failure is a DataError that names the source and says what was expected.
"""
import hashlib
import io
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from preprocessing.errors import DataError

SAMPLE_PREFIX = "sklearn:"
SAMPLES = ("wine", "breast_cancer", "diabetes", "iris")
TEXT_SAMPLE = "sample:reviews"  # preprocessing/samples.py
_PARQUET_MAGIC = b"PAR1"
_SUFFIX_FORMATS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
}


class TransientReadError(DataError):
    """Reading a URL failed in a way that may succeed on retry (refused, timed out, 5xx)."""


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https", "file")


def read_table(source: str, fmt: str = "auto", timeout: float = 30.0, encoding_errors: str = "error") -> pd.DataFrame:
    """Read `source` (path, URL, sklearn:NAME or sample:reviews) into a DataFrame with at least one row.

    encoding_errors="replace" turns bytes that are not UTF-8 into U+FFFD; their count is in frame.attrs."""
    if source.startswith(SAMPLE_PREFIX):
        return load_sample(source[len(SAMPLE_PREFIX):])
    if source == TEXT_SAMPLE:
        from preprocessing.samples import reviews

        return reviews()
    name = source
    raw = fetch(source, timeout) if is_url(source) and urlparse(source).scheme != "file" else _read_local(source)
    if not raw:
        raise DataError(f"{name} is empty (0 bytes); expected a CSV, Parquet or JSON-lines table")
    fmt = _guess_format(name, raw) if fmt == "auto" else fmt
    frame = _parse(name, raw, fmt, encoding_errors)
    if len(frame.columns) == 0:
        raise DataError(f"{name} has no columns; expected a header row naming the columns")
    if len(frame) == 0:
        raise DataError(f"{name} has a header but no data rows")
    return frame


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


def _read_local(source: str) -> bytes:
    path = Path(urlparse(source).path if source.startswith("file:") else source).expanduser()
    if not path.exists():
        raise DataError(f"data file not found: {source} (looked for {path.resolve()})")
    if path.is_dir():
        raise DataError(f"{source} is a folder; tabular data must be one CSV, Parquet or JSON-lines file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror or exc}") from exc


def fetch(url: str, timeout: float) -> bytes:
    """Download `url`; TransientReadError for failures worth retrying, DataError for the rest."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        message = f"could not download {url}: HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code == 429:
            raise TransientReadError(message) from exc
        raise DataError(message) from exc
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientReadError(f"could not reach {url}: {reason}") from exc


def _guess_format(name: str, raw: bytes) -> str:
    if raw[:4] == _PARQUET_MAGIC:
        return "parquet"
    suffix = Path(urlparse(name).path).suffix.lower()
    return _SUFFIX_FORMATS.get(suffix, "csv")


def _parse(name: str, raw: bytes, fmt: str, encoding_errors: str = "error") -> pd.DataFrame:
    if fmt == "parquet":
        try:
            return pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{name} could not be read as Parquet: {exc}") from exc
    if b"\x00" in raw[:8192]:
        raise DataError(f"{name} does not look like a {fmt.upper()} file: it contains binary data")
    replaced = 0
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if encoding_errors != "replace":
            line = raw[: exc.start].count(b"\n") + 1
            row = f" (data row {line - 1})" if fmt == "csv" and line > 1 else ""
            raise DataError(f"{name} is not valid UTF-8 text: line {line}{row} has the byte {raw[exc.start]:#04x}; "
                            "re-save the file as UTF-8 or set data.encoding_errors: replace") from exc
        text = raw.decode("utf-8-sig", errors="replace")
        replaced = text.count("\ufffd") - raw.decode("utf-8-sig", errors="ignore").count("\ufffd")
    frame = _parse_text(name, text, fmt)
    frame.attrs["replaced_characters"] = replaced
    return frame


def _parse_text(name: str, text: str, fmt: str) -> pd.DataFrame:
    if fmt == "json":
        return _parse_json(name, text)
    sep = "\t" if name.lower().endswith(".tsv") else ","
    try:
        return pd.read_csv(io.StringIO(text), sep=sep)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{name} has no header and no rows; expected a CSV table") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{name} could not be parsed as CSV: {str(exc).strip()}") from exc


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
    stem = Path(urlparse(source).path).name.split(".")[0]
    return stem or "dataset"


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table (values, column names and types), independent of file format and row index."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
