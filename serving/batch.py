"""Batch prediction over large tables: a CSV or Parquet input read, predicted and written in chunks of rows, so that
memory is bounded by the chunk (`chunk_rows`), not by the file. predict.py and flows/batch_predict_flow.py both use
it, through serving.inference.Predictor (the one inference path); it imports neither Prefect nor MLflow.

The output equals what predicting the whole file at once gives (tests/test_batch_predict.py):
- every chunk keeps the file's row numbers as its index, so an error in a later chunk names the file's data row;
- CSV columns that the model treats as categories get the type that reading the whole file would infer (a first
  pass over those columns only), so '7' in a chunk of integers and '7.0' in a column with nulls stay what they were;
- the output file is written beside its target and renamed into place when every row is predicted: a failed run
  leaves no output (stdout, which cannot be taken back, has the chunks before the error).

Input bounds: a streamed file is not refused for its size (preprocessing/sources.py's data.max_file_mb is for reads
into memory), but a line longer than data.max_line_mb still is, found as the bytes pass to the parser. Inputs this
module does not stream (JSON, bundled samples, UTF-16 text, several files, images and texts) are read whole, as before.
"""
import codecs
import io
import os
import queue
import shutil
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from preprocessing.errors import DataError
from preprocessing.sources import (DELIMITERS, PARQUET_MAGIC, UTF16_BOMS, MAX_LINE_MB, SAMPLE_PREFIX,
                                   TEXT_SAMPLE, download_errors, guess_format, refuse_binary, is_url)

DEFAULT_CHUNK_ROWS = 50_000  # wine-like rows: ~10 MB of frame per chunk, and ONNX Runtime calls large enough
STREAMED_FORMATS = ("csv", "parquet")
_BLOCK = 2**20


# ---------------------------------------------------------------- which inputs stream

def streams(predictor, inputs: list[str], fmt: str = "auto") -> bool:
    """Whether `inputs` is one CSV/Parquet table (a local file or a URL) for a model that takes rows."""
    if predictor.kind.input_schema(predictor.transform)["kind"] != "rows" or len(inputs) != 1:
        return False
    source = inputs[0]
    if source.startswith(SAMPLE_PREFIX) or source == TEXT_SAMPLE or fmt == "json":
        return False
    if is_url(source) and urlparse(source).scheme != "file":
        return fmt in STREAMED_FORMATS or guess_format(source, b"") in STREAMED_FORMATS
    path = _local_path(source)
    if not path.is_file():
        return False  # read_table names what is wrong (missing, a folder, a pipe)
    with path.open("rb") as stream:
        head = stream.read(8)
    if head[:2] in UTF16_BOMS:
        return False
    return (fmt if fmt != "auto" else guess_format(source, head)) in STREAMED_FORMATS


def _local_path(source: str) -> Path:
    return Path(urlparse(source).path if source.startswith("file:") else source).expanduser()


# ---------------------------------------------------------------- reading

class _LineGuard(io.RawIOBase):
    """A file's bytes as they pass to the CSV parser, refused at the first line longer than `max_line_mb` (the
    message of preprocessing/sources.py's check of a whole file), before the parser has buffered more of it."""

    def __init__(self, raw, name: str, max_line_mb: int):
        self.raw, self.name, self.max_line_mb = raw, name, max_line_mb
        self.limit = max_line_mb * 2**20
        self.line, self.current, self.consumed = 1, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.consumed += n
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        if len(ends):
            lengths = np.diff(np.concatenate(([-1 - self.current], ends)))
            if lengths.max() > self.limit:
                at = int(lengths.argmax())
                self._refuse(self.line + at, int(lengths[at]))
            self.line += len(ends)
            self.current = n - int(ends[-1]) - 1
        else:
            self.current += n
        if self.current > self.limit:  # measure the rest of the line without handing it on, then refuse it
            length = self.current
            while block := self.raw.read(_BLOCK):
                newline = block.find(b"\n")
                length += len(block) if newline < 0 else newline + 1
                if newline >= 0:
                    break
            self._refuse(self.line, length)
        return n

    def _refuse(self, line: int, length: int):
        raise DataError(f"{self.name}: line {line} is {length / 2**20:.0f} MB long, more than data.max_line_mb "
                        f"({self.max_line_mb} MB); is it the right file? Raise data.max_line_mb if it is")


@dataclass
class Source:
    """One streamed table: `chunks(rows)` gives frames whose index is the file's 0-based data row."""

    name: str  # as given, for messages
    path: Path  # local (a URL is downloaded first)
    fmt: str  # csv or parquet
    columns: list[str] | None = None  # read only these (None: all)
    categorical: list[str] = field(default_factory=list)  # columns whose CSV type must not vary between chunks
    max_line_mb: int = MAX_LINE_MB
    rows: int | None = None  # known for Parquet, and for CSV after the type pass
    bytes_read: int = 0
    size: int = 0

    def chunks(self, chunk_rows: int):
        return (self._parquet if self.fmt == "parquet" else self._csv)(chunk_rows)

    def _parquet(self, chunk_rows: int):
        import pyarrow.parquet as pq

        try:
            # pre_buffer (pyarrow's default) keeps every column chunk read until the file is closed: memory grew
            # with the file (~130 MB per million wine rows); without it, it stays at the chunk
            file = pq.ParquetFile(self.path, pre_buffer=False)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{self.name} could not be read as Parquet: {exc}") from exc
        names = file.schema_arrow.names
        if not names:
            raise DataError(f"{self.name} has no columns; expected a header row naming the columns")
        self.rows = file.metadata.num_rows
        if self.rows == 0:
            raise DataError(f"{self.name} has a header but no data rows")
        columns = [c for c in self.columns if c in names] if self.columns is not None else None
        start = 0
        try:
            for batch in file.iter_batches(batch_size=chunk_rows, columns=columns, use_pandas_metadata=False):
                frame = batch.to_pandas()
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                self.bytes_read = int(self.size * start / self.rows)
                yield frame
        except (OSError, ValueError) as exc:  # a damaged row group
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{self.name} could not be read as Parquet: {exc}") from exc

    def _csv(self, chunk_rows: int):
        sep = self._separator()
        header = self._header(sep)
        dtypes = self._csv_types(sep, header, chunk_rows) if self.categorical else {}
        n = 0  # every column is parsed, as in a whole read: a row with a field too many is an error either way
        for frame in self._read_csv(sep, chunk_rows, dtype=dtypes or None):
            n += len(frame)
            yield frame
        if n == 0:
            raise DataError(f"{self.name} has a header but no data rows")

    def _read_csv(self, sep: str, chunk_rows: int, **options):
        """pandas' chunked reader over the guarded bytes, with read_table's messages for what goes wrong."""
        with self._guarded() as (guard, stream):
            with pd.read_csv(stream, sep=sep, chunksize=chunk_rows, encoding="utf-8-sig", **options) as reader:
                for frame in reader:
                    self.bytes_read = guard.consumed
                    yield frame

    def _separator(self) -> str:
        with self.path.open("rb") as stream:
            head = stream.readline(self.max_line_mb * 2**20 + 1)
        if not head:
            raise DataError(f"{self.name} is empty (0 bytes); expected a CSV, Parquet or JSON-lines table")
        header = head.decode("utf-8-sig", errors="replace").rstrip("\r\n")
        sep = "\t" if self.name.lower().endswith(".tsv") else ","
        if sep == "," and "," not in header and any(d in header for d in DELIMITERS):
            sep = max(DELIMITERS, key=header.count)
        return sep

    def _header(self, sep: str) -> list[str]:
        with self._guarded() as (_, stream):
            return [str(c) for c in pd.read_csv(stream, sep=sep, nrows=0, encoding="utf-8-sig").columns]

    @contextmanager
    def _guarded(self):
        """(the _LineGuard, a buffered stream over it) of the file, and pandas' CSV failures while it is read as the
        DataError read_table gives for the same file."""
        with self.path.open("rb", buffering=0) as raw:
            guard = _LineGuard(raw, self.name, self.max_line_mb)
            try:
                yield guard, io.BufferedReader(guard, buffer_size=_BLOCK)
            except pd.errors.EmptyDataError as exc:
                raise DataError(f"{self.name} has no header and no rows; expected a CSV table") from exc
            except pd.errors.ParserError as exc:
                raise DataError(f"{self.name} could not be parsed as CSV: {str(exc).strip()}") from exc
            except UnicodeDecodeError as exc:
                raise self._not_utf8() from exc

    def _csv_types(self, sep: str, header: list[str], chunk_rows: int) -> dict:
        """The type reading the whole file gives each categorical column, from one pass over those columns: a
        column of numbers in one chunk and of text in another is text in the whole file, integers with a null
        somewhere are floats. Counts the rows too (the progress bar's total)."""
        columns = [c for c in self.categorical if c in header]
        if not columns:
            return {}
        kinds, rows = {c: set() for c in columns}, 0
        for frame in self._read_csv(sep, max(chunk_rows, 100_000), usecols=columns):
            rows += len(frame)
            for column in columns:
                kinds[column].add(frame[column].dtype.kind)
        self.rows, self.bytes_read = rows, 0
        dtypes = {}
        for column, found in kinds.items():
            if found & {"O", "T", "U", "S"} or ("b" in found and found & {"i", "u", "f"}):
                dtypes[column] = str  # text somewhere: every value as written
            elif "f" in found:
                dtypes[column] = "float64"  # a null or a decimal somewhere
        return dtypes

    def _not_utf8(self) -> DataError:
        """read_table's message for the first byte that is not UTF-8: its line and data row."""
        tail, line = b"", 1
        with self.path.open("rb") as stream:
            while True:
                block = stream.read(_BLOCK)
                data = tail + block
                try:
                    used = codecs.utf_8_decode(data, "strict", not block)[1]
                except UnicodeDecodeError as exc:
                    line += data[:exc.start].count(b"\n")
                    row = f" (data row {line - 1})" if line > 1 else ""
                    return DataError(f"{self.name} is not valid UTF-8 text: line {line}{row} has the byte "
                                     f"{data[exc.start]:#04x}; re-save the file as UTF-8 or set "
                                     "data.encoding_errors: replace")
                line += data[:used].count(b"\n")
                tail = data[used:]
                if not block:
                    return DataError(f"{self.name} is not valid UTF-8 text; re-save the file as UTF-8")


@contextmanager
def open_source(source: str, fmt: str = "auto", columns: list[str] | None = None, categorical=(),
                max_line_mb: int = MAX_LINE_MB, timeout: float = 30.0):
    """The streamed table at `source` (a path, file: URL or http(s) URL, downloaded to a temporary file first).
    DataError for what cannot be read; TransientReadError for a download worth retrying."""
    download = None
    try:
        if is_url(source) and urlparse(source).scheme != "file":
            download = Path(tempfile.mkdtemp(prefix="torchyard-batch-"))
            path = _download(source, download / "input", timeout)
        else:
            path = _local_path(source)
            if not path.exists():
                raise DataError(f"data file not found: {source} (looked for {path.resolve()})")
            if path.is_dir():
                raise DataError(f"{source} is a folder; tabular data must be one CSV, Parquet or JSON-lines file")
        try:
            with path.open("rb") as stream:
                head = stream.read(2**20)
            size = path.stat().st_size
        except OSError as exc:
            raise DataError(f"cannot read {source}: {exc.strerror or exc}") from exc
        if not head:
            raise DataError(f"{source} is empty (0 bytes); expected a CSV, Parquet or JSON-lines table")
        fmt = guess_format(source, head) if fmt == "auto" else fmt
        if fmt not in STREAMED_FORMATS:
            raise DataError(f"{source} is {fmt.upper()}; batch prediction streams CSV or Parquet")
        if fmt == "parquet" and head[:4] != PARQUET_MAGIC:
            raise DataError(f"{source} could not be read as Parquet: it does not start with the Parquet magic "
                            "bytes (PAR1)")
        refuse_binary(source, head, fmt)
        if fmt == "csv" and head[:2] in UTF16_BOMS:
            raise DataError(f"{source} is UTF-16 text; batch prediction streams UTF-8 CSV (re-save it as UTF-8)")
        yield Source(source, path, fmt, list(columns) if columns is not None else None, list(categorical),
                     max_line_mb, size=size)
    finally:
        if download is not None:
            shutil.rmtree(download, ignore_errors=True)


def _download(url: str, path: Path, timeout: float) -> Path:
    """`url` copied to `path` in blocks (never whole in memory); read_table's errors for failures."""
    with download_errors(url), urllib.request.urlopen(url, timeout=timeout) as response, path.open("wb") as out:
        shutil.copyfileobj(response, out, _BLOCK)
    return path


# ---------------------------------------------------------------- writing

class Sink:
    """Predictions written as they come: CSV, Parquet or JSON lines by the output's extension (CSV on stdout when
    there is no output). A file is written beside its target and renamed into place by `commit`."""

    def __init__(self, output: str | None, stdout=None):
        self.output = output
        self.rows = 0
        self._writer = None
        if output is None:
            import sys

            self.kind, self.path, self.partial = "csv", None, None
            self._stream = stdout or sys.stdout
            return
        self.path = Path(output)
        suffix = self.path.suffix
        self.kind = "parquet" if suffix in (".parquet", ".pq") else "json" if suffix in (".jsonl", ".json",
                                                                                         ".ndjson") else "csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._stream = None if self.kind == "parquet" else self.partial.open("w", newline="")

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.partial, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        elif self.kind == "json":
            frame.to_json(self._stream, orient="records", lines=True)
        else:
            frame.to_csv(self._stream, index=False, header=self.rows == 0)
        self.rows += len(frame)

    def commit(self) -> None:
        if self.path is None:
            self._stream.flush()
            return
        if self.kind == "parquet":
            if self._writer is None:  # no rows: what frame.to_parquet writes for an empty table
                pd.DataFrame({"prediction": []}).to_parquet(self.partial, index=False)
            else:
                self._writer.close()
        else:
            self._stream.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self.path is None:
            return
        try:
            if self._writer is not None:
                self._writer.close()
            if self._stream is not None:
                self._stream.close()
        finally:
            self.partial.unlink(missing_ok=True)


# ---------------------------------------------------------------- predicting

@dataclass
class BatchResult:
    rows: int = 0
    chunks: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0
    predict_seconds: float = 0.0
    write_seconds: float = 0.0
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"rows": self.rows, "chunks": self.chunks, "seconds": round(self.seconds, 3),
                "rows_per_s": round(self.rows_per_s, 1), "read_seconds": round(self.read_seconds, 3),
                "predict_seconds": round(self.predict_seconds, 3), "write_seconds": round(self.write_seconds, 3),
                "chunk_rows": self.chunk_rows}


def input_columns(predictor) -> tuple[list[str], list[str]]:
    """The columns the model reads from a row and those of them it treats as categories."""
    columns = predictor.kind.input_schema(predictor.transform)["columns"]
    return [c["name"] for c in columns], [c["name"] for c in columns if c["type"] == "category"]


def predict_file(predictor, source: str, output: str | None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 fmt: str = "auto", progress: bool | None = None, max_line_mb: int = MAX_LINE_MB,
                 on_chunk=None, stdout=None) -> BatchResult:
    """Predict the table at `source` chunk by chunk into `output` (None: CSV on stdout). `progress`: a tqdm bar on
    stderr with rows/s (None: only on a terminal). `on_chunk(result)` is called after every chunk. DataError for
    bad input, naming the file's data row; a failed run leaves no output file.

    Reading the next chunk and writing the last one's predictions run on two threads beside the prediction (pyarrow,
    pandas' parser and the file writes release the GIL), so at most four chunks are in memory at once."""
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be at least 1, not {chunk_rows}")
    columns, categorical = input_columns(predictor)
    result, started = BatchResult(chunk_rows=chunk_rows), time.perf_counter()
    with open_source(source, fmt, columns, categorical, max_line_mb) as table, _Ahead(table.chunks(chunk_rows)) as \
            chunks, ThreadPoolExecutor(1, thread_name_prefix="batch-write") as writer:
        sink, bar, pending = Sink(output, stdout), None, None
        try:
            while True:
                tick = time.perf_counter()
                frame = chunks.next()
                result.read_seconds += time.perf_counter() - tick  # waiting for the reader
                if frame is None:
                    break
                if bar is None:
                    bar = _bar(progress, table.rows)
                tick = time.perf_counter()
                predictions = predictor.kind.predict_frame(predictor, frame, source)
                result.predict_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                if pending is not None:
                    pending.result()  # one write in flight, in order
                pending = writer.submit(sink.write, predictions)
                result.write_seconds += time.perf_counter() - tick  # waiting for the writer
                result.rows += len(frame)
                result.chunks += 1
                if bar is not None:
                    bar.update(len(frame))
                    if table.rows is None and table.size:
                        bar.set_postfix_str(f"{100 * table.bytes_read / table.size:.0f}% of the file")
                if on_chunk is not None:
                    on_chunk(result)
            tick = time.perf_counter()
            if pending is not None:
                pending.result()
            sink.commit()
            result.write_seconds += time.perf_counter() - tick
        except BaseException:
            if pending is not None:
                wait([pending])
            sink.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
    result.seconds = time.perf_counter() - started
    return result


class _Ahead:
    """The items of an iterator, read one ahead on a thread: `next()` gives the next (None at the end) or raises
    what the iterator raised. Leaving the block stops the thread."""

    _END = object()

    def __init__(self, iterator):
        self.iterator = iterator
        self.queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="batch-read", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        while self.thread.is_alive():  # unblock a put, then let the thread see the stop
            try:
                self.queue.get_nowait()
            except queue.Empty:
                pass
            self.thread.join(0.05)
        return False

    def _run(self):
        try:
            for item in self.iterator:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, exc))
        finally:
            close = getattr(self.iterator, "close", None)
            if close is not None:
                close()

    def _put(self, entry) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self):
        item, exc = self.queue.get()
        if exc is not None:
            raise exc
        return None if item is self._END else item


def _bar(progress: bool | None, total: int | None):
    import sys

    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" rows", unit_scale=True, file=sys.stderr, desc="predicting", smoothing=0.1)
