"""Classic CLI: predictions from a model file, without Prefect or the MLflow store.

    python predict.py --model_fn m.pth --input rows.csv                 # CSV to stdout
    python predict.py --model_fn m.pth --input test.csv --output preds.csv
    python predict.py --model_fn digits.pth --input photos_to_label/    # images: folders, manifests or files
    python predict.py --model_fn m.pth --input big.parquet --output preds.parquet --chunk_rows 100000

A CSV or Parquet table for a model that takes rows is streamed (serving/batch.py): read, predicted and written in
chunks of --chunk_rows rows, so memory is bounded by the chunk, with a progress bar (rows/s) on a terminal. The
output equals predicting the whole file at once. Other inputs (JSON lines, bundled samples, images, texts) are read
whole.
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict with a torchyard model file on ONNX Runtime.")
    p.add_argument("--model_fn", required=True, help="model file written by train.py --model_fn (.pth, or the "
                   ".onnx beside it); checked completely, with one prediction on a sample input, before use")
    p.add_argument("--input", required=True, nargs="+", help="rows to predict: a CSV/Parquet/JSON-lines path or "
                   "URL; for an image model: image files, folders (searched recursively) or manifests")
    p.add_argument("--output", help="write here (.csv, .parquet or .jsonl); default: CSV on stdout")
    p.add_argument("--format", default="auto", choices=["auto", "csv", "parquet", "json"], help="input format")
    p.add_argument("--chunk_rows", type=_positive, default=None, help="rows read, predicted and written at a time "
                   "when a CSV/Parquet table is streamed (default 50000); memory grows with it, not with the file")
    return p.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of rows, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def write(frame, output: str | None) -> None:
    if output is None:
        frame.to_csv(sys.stdout, index=False)
        return
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    elif path.suffix in (".jsonl", ".json", ".ndjson"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)


def main(argv=None) -> int:
    from preprocessing import kinds
    from preprocessing.errors import TorchyardError
    from serving import batch
    from serving.inference import Predictor

    args = parse_args(argv)
    try:
        predictor = Predictor.load(args.model_fn)
        if batch.streams(predictor, args.input, args.format):
            result = batch.predict_file(predictor, args.input[0], args.output, args.chunk_rows or
                                        batch.DEFAULT_CHUNK_ROWS, args.format)
            if args.output:
                print(f"wrote {result.rows} predictions to {args.output}", file=sys.stderr)
            return 0
        kind = kinds.of(predictor.transform)
        inputs = kind.read_inputs(args.input, args.format, predictor.transform)
        predictions = kind.predict_frame(predictor, inputs, args.input[0])
    except TorchyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    skipped = predictions.attrs.get("skipped", [])
    for path, reason in skipped:  # listed, not fatal: the readable ones are predicted (as training skips them)
        print(f"skipped: {reason}", file=sys.stderr)
    write(predictions, args.output)
    if skipped:
        print(f"warning: {len(skipped)} of {len(predictions) + len(skipped)} input(s) could not be read and have "
              "no prediction", file=sys.stderr)
    if args.output:
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    return 0


def cli(argv=None) -> None:
    """`python predict.py`: main(), then, once the output streams are flushed (a --output file is closed by then),
    os._exit, skipping the interpreter's teardown of torch, onnxruntime and pandas. Library code and tests call
    main(), which returns; an exception still ends the process the usual way, with its traceback."""
    code = main(argv)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more can be written anyway
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
