"""MLflow's scoring protocol at POST /invocations, so that clients written for `mlflow models serve` work unchanged:
JSON with one of `dataframe_split`, `dataframe_records`, `instances` or `inputs` (plus optional `params`, ignored),
or `text/csv`; the answer is `{"predictions": [...]}`, one record per input with predict.py's columns (what the
registered MLflow model's `predict` returns: `prediction`, `proba_<class>`...). Inputs are the raw ones the
registered model takes: a table's columns, a text table's text column (or a list of texts), an image model's
`image` column of base64 files (or a list of them). Bad requests get MLflow's error shape
`{"error_code": "BAD_REQUEST", "message": ...}` with status 400.
"""
import base64
import binascii
import io
import json
import math

import pandas as pd

from preprocessing.errors import TorchyardError

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
IMAGE_COLUMN = "image"


class ScoringError(TorchyardError):
    """A request /invocations cannot use (400, MLflow's BAD_REQUEST)."""


class TooManyRows(TorchyardError):
    """More inputs than the server takes per request (413), counted before a table is built."""


def parse(raw: bytes, content_type: str | None, schema: dict, max_rows: int) -> pd.DataFrame:
    """The request as the DataFrame the registered model's `predict` would get; TooManyRows above `max_rows`
    inputs, ScoringError for a request without any."""
    frame = _parse(raw, content_type, schema, max_rows)
    if len(frame) > max_rows:
        raise TooManyRows(f"a batch of {len(frame)} exceeds the limit of {max_rows} per request (--max-batch)")
    if len(frame) == 0 or len(frame.columns) == 0:
        raise ScoringError("the request holds no inputs (no rows, or rows without columns)")
    return frame


def _parse(raw: bytes, content_type: str | None, schema: dict, max_rows: int) -> pd.DataFrame:
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media == "text/csv":
        try:
            return pd.read_csv(io.BytesIO(raw))
        except (ValueError, pd.errors.ParserError) as exc:
            raise ScoringError(f"the CSV body could not be parsed: {exc}") from None
    if media != "application/json":
        raise ScoringError(f"Content-Type {media!r} is not supported; send application/json or text/csv")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ScoringError(f"the body is not valid JSON: {exc}") from None
    given = [key for key in FORMATS if isinstance(data, dict) and key in data]
    if len(given) != 1:
        raise ScoringError(f"the JSON body must have exactly one of the keys {', '.join(FORMATS)}; it has "
                           f"{', '.join(given) if given else 'none of them'}")
    value = data[given[0]]
    count = len(value.get("data") or []) if isinstance(value, dict) and given[0] == "dataframe_split" else (
        len(value) if isinstance(value, list) else 0)
    if count > max_rows:  # before a DataFrame of them is built
        raise TooManyRows(f"a batch of {count} exceeds the limit of {max_rows} per request (--max-batch)")
    try:
        if given[0] == "dataframe_split":
            if not isinstance(value, dict):
                raise ValueError("dataframe_split must be an object with 'columns' and 'data'")
            return pd.DataFrame(value.get("data"), columns=value.get("columns"), index=value.get("index"))
        if given[0] == "dataframe_records":
            return pd.DataFrame.from_records(value) if isinstance(value, list) else pd.DataFrame([value])
        return _tensor_input(value, schema)
    except (ValueError, TypeError, AssertionError, KeyError, IndexError) as exc:
        raise ScoringError(f"{given[0]} could not be read as a table: {exc}") from None


def _tensor_input(value, schema: dict) -> pd.DataFrame:
    """`instances`/`inputs`: records, a mapping of columns, or a plain list for a model with one input (texts,
    images)."""
    if isinstance(value, dict):
        return pd.DataFrame(value)
    if not isinstance(value, list):
        raise ValueError("expected a list or an object")
    if value and all(isinstance(item, dict) for item in value):
        return pd.DataFrame.from_records(value)
    if schema["kind"] == "texts":
        return pd.DataFrame({schema["text_column"]: pd.Series(value, dtype=object)})
    if schema["kind"] == "images":
        return pd.DataFrame({IMAGE_COLUMN: value})
    raise ValueError("a table model takes records ([{column: value}]) or columns ({column: [values]})")


def image_files(frame: pd.DataFrame) -> tuple[list[str], list[bytes]]:
    """Names and bytes of the base64 files of an image request's `image` column (file paths are not read: they would
    be paths on the server)."""
    if IMAGE_COLUMN not in frame:
        raise ScoringError(f"an image model takes a column {IMAGE_COLUMN!r} of base64-encoded files; got columns "
                           f"{list(frame.columns)}")
    names, files = [f"{IMAGE_COLUMN}[{i}]" for i in range(len(frame))], []
    for name, encoded in zip(names, frame[IMAGE_COLUMN]):
        try:
            files.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError, TypeError):
            raise ScoringError(f"{name} is not valid base64") from None
    return names, files


def answer(table: pd.DataFrame) -> dict:
    """MLflow's response shape for a DataFrame output: one record per row; NaN as null."""
    return {"predictions": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                            for r in table.to_dict(orient="records")]}
