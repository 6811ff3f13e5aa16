"""Classic CLI: predictions from a model file, without Prefect or the MLflow store.

    python predict.py --model_fn m.pth --input rows.csv                 # CSV to stdout
    python predict.py --model_fn m.pth --input test.csv --output preds.csv
    python predict.py --model_fn digits.pth --input photos_to_label/    # images: folders, manifests or files
"""
import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict with a torchyard model file on ONNX Runtime.")
    p.add_argument("--model_fn", required=True, help="model file written by train.py --model_fn (.pth)")
    p.add_argument("--input", required=True, nargs="+", help="rows to predict: a CSV/Parquet/JSON-lines path or "
                   "URL; for an image model: image files, folders (searched recursively) or manifests")
    p.add_argument("--output", help="write here (.csv, .parquet or .jsonl); default: CSV on stdout")
    p.add_argument("--format", default="auto", choices=["auto", "csv", "parquet", "json"], help="input format")
    return p.parse_args(argv)


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


def image_paths(inputs: list[str], path_column: str) -> list[str]:
    """Image files from files, folders (recursively, sorted) and manifests (their path column, in order)."""
    from preprocessing.errors import DataError
    from preprocessing.image import IMAGE_SUFFIXES, MANIFEST_SUFFIXES
    from preprocessing.sources import read_table

    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += [str(f) for f in sorted(path.rglob("*")) if f.is_file() and not f.name.startswith(".")
                      and f.suffix.lower() in IMAGE_SUFFIXES]
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            table = read_table(item)
            if path_column not in table.columns:
                raise DataError(f"manifest {item} has no column '{path_column}'")
            paths += [str((path.parent / p).resolve()) for p in table[path_column].astype(str)]
        elif path.is_file():
            paths.append(str(path))
        else:
            raise DataError(f"input not found: {item}")
    if not paths:
        raise DataError(f"no image files found in {', '.join(inputs)}")
    return paths


def main(argv=None) -> int:
    from preprocessing.errors import DataError, TorchyardError
    from preprocessing.sources import read_table
    from serving.inference import Predictor

    args = parse_args(argv)
    try:
        predictor = Predictor.load(args.model_fn)
        if predictor.data_type == "image":
            config = predictor.transform.config
            predictions = predictor.predict_images(image_paths(args.input, config.path_column))
        else:
            if len(args.input) > 1:
                raise DataError("a tabular model takes one --input table")
            rows = read_table(args.input[0], args.format)
            predictions = predictor.predict(rows, args.input[0])
    except TorchyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write(predictions, args.output)
    if args.output:
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
