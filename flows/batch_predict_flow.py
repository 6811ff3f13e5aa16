"""batch-predict: a large CSV/Parquet table (path or URL) predicted in chunks by a model file or registry reference,
written to a CSV/Parquet/JSON-lines file, recorded as one MLflow run.

The prediction is predict.py's streamed one (serving/batch.py over serving.inference.Predictor): memory bounded by
`chunk_rows`, the output renamed into place only when every row is predicted. The run logs the input, the model's
URI, version and training run, the row and chunk counts, rows/s and where the time went; on bad input (a row that
cannot be predicted, a file that cannot be read, a reference that names no model) the flow run and the MLflow run
end FAILED with the reason (the `failure_reason` tag), and no output file is left.

    prefect deployment run 'batch-predict/wine-batch' --param input=rows.parquet --param output=preds.parquet
"""
import os
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here; no telemetry errors

import mlflow  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from preprocessing.errors import DataError  # noqa: E402
from serving import batch  # noqa: E402
from serving.inference import Predictor, load_checked  # noqa: E402
from serving.registry import ModelRef, resolve  # noqa: E402
from tasks import registry, tracking  # noqa: E402

DEFAULT_EXPERIMENT = "batch-predict"


@task(name="load-model", cache_policy=NO_CACHE)
def load_model(reference: str) -> tuple[Predictor, ModelRef]:
    """The checked Predictor of a .pth/.onnx path, models:/name/version, models:/name@alias or a bare registered
    name (its @champion), through serving/registry.py with the MLflow registry (tasks/registry.py)."""
    bundle, ref = resolve(reference, registry)
    return load_checked(bundle, ref.uri), ref


@task(name="predict-chunks", cache_policy=NO_CACHE)
def predict_chunks(predictor: Predictor, source: str, output: str, chunk_rows: int, fmt: str,
                   run_id: str) -> batch.BatchResult:
    logger = get_run_logger()
    every = max(1, 1_000_000 // chunk_rows)  # a progress line about every million rows

    def progress(result: batch.BatchResult) -> None:
        if result.chunks % every == 0:
            logger.info(f"{result.rows} rows predicted in {result.chunks} chunks")
            tracking.log_metrics(run_id, {"rows_done": result.rows}, step=result.chunks, synchronous=False)

    return batch.predict_file(predictor, source, output, chunk_rows, fmt, progress=False, on_chunk=progress)


@flow(name="batch-predict")
def batch_predict_flow(input: str, model: str, output: str, chunk_rows: int = batch.DEFAULT_CHUNK_ROWS,
                       format: str = "auto", experiment: str = DEFAULT_EXPERIMENT) -> dict:
    """input: a CSV or Parquet path or URL; model: a .pth/.onnx path or models:/<name>/<version>,
    models:/<name>@<alias> or a registered name (its @champion); output: .csv, .parquet or .jsonl (written when
    every row is predicted); chunk_rows: rows read, predicted and written at a time."""
    logger = get_run_logger()
    run_key = str(flow_run.id or "local")
    tracking.check_reachable()
    client = tracking.configure()
    experiment_id = tracking.ensure_experiment(client, experiment)
    tags = {"prefect.flow_run_id": run_key, "torchyard.kind": "batch-predict"}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"batch-{Path(output).stem}-{run_key[:8]}",
                          tags=tags) as run:
        run_id = run.info.run_id
        logger.info(f"MLflow run {run_id} in experiment '{experiment}' ({tracking.tracking_uri()})")
        tracking.log_params(run_id, "", {"input": input, "output": output, "chunk_rows": chunk_rows,
                                         "format": format, "model.reference": model})
        try:
            if chunk_rows < 1:
                raise DataError(f"chunk_rows must be at least 1, not {chunk_rows}")
            predictor, ref = load_model(model)
            tracking.log_params(run_id, "model", {"uri": ref.uri, "name": ref.name, "version": ref.version or "none",
                                                  "run_id": ref.run_id or "none",
                                                  "data_type": predictor.data_type})
            logger.info(f"model {ref.uri}" + (f" version {ref.version}" if ref.version else ""))
            result = predict_chunks(predictor, input, output, chunk_rows, format, run_id)
        except BaseException as exc:
            logger.error(f"batch-predict failed: {tracking.record_failure(run_id, exc)}")
            raise
        summary = result.to_dict()
        tracking.log_metrics(run_id, {k: v for k, v in summary.items() if k != "chunk_rows"})
        logger.info(f"wrote {result.rows} predictions to {output} in {result.chunks} chunks of up to {chunk_rows} "
                    f"rows: {result.seconds:.1f} s, {result.rows_per_s:,.0f} rows/s (read {result.read_seconds:.1f} "
                    f"s, predict {result.predict_seconds:.1f} s, write {result.write_seconds:.1f} s)")
    return {"run_id": run_id, "experiment_id": experiment_id, "output": output, "model_uri": ref.uri,
            "model_version": ref.version, **summary}
