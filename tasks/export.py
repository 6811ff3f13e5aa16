"""export: ONNX with a dynamic batch axis, checked against torch with ONNX Runtime on real test rows, logged as an
MLflow model with signature and input example, and written as the self-contained model file."""
from pathlib import Path

import mlflow.onnx
import onnx
import torch
from mlflow.models import infer_signature
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from serving.bundle import onnx_metadata, save_bundle
from serving.export import INPUT_NAMES, export_onnx, parity, with_metadata
from tasks import tracking
from tasks.evaluate import serving_model
from tasks.inputs import model_inputs
from tasks.steps import Exported, Prepared, Trained

EXAMPLE_ROWS = 5


@task(name="export", cache_policy=NO_CACHE)
def export(prepared: Prepared, trained: Trained, tolerance: float, run_id: str, run_info: dict,
           metrics: dict) -> Exported:
    logger = get_run_logger()
    model, transform, saved = serving_model(prepared, trained)
    test_inputs = model_inputs(prepared, transform, "test")
    data_type = transform.state.get("data_type", "tabular")
    output_name = "value" if transform.target["task"] == "regression" else "probabilities"
    described = {"data_type": data_type, "task": transform.target["task"], "preprocessing": transform.state,
                 "metrics": metrics, "run": run_info}  # in the model file, and in the .onnx's metadata
    onnx_bytes = export_onnx(model, torch.from_numpy(test_inputs), output_name, INPUT_NAMES[data_type])
    onnx_bytes = with_metadata(onnx_bytes, onnx_metadata(**described))
    max_diff = parity(onnx_bytes, model, test_inputs, tolerance)
    tracking.log_metrics(run_id, {"export_max_abs_diff": max_diff})
    logger.info(f"ONNX export matches torch within {max_diff:.2e} on {len(test_inputs)} test rows")

    bundle = save_bundle(
        Path(prepared.arrays).with_name("model.pth"), onnx_bytes=onnx_bytes, **described,
        network={k: saved[k] for k in ("model_config", "input_size", "output_size", "state_dict")})
    client = tracking.configure()
    client.log_artifact(run_id, str(bundle), "model_file")

    example = test_inputs[:EXAMPLE_ROWS]
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    with tracking.active_run(run_id):
        info = mlflow.onnx.log_model(onnx.load_from_string(onnx_bytes), name="model", signature=signature,
                                     onnx_execution_providers=["CPUExecutionProvider"],
                                     input_example=example, metadata={
                                         "feature_names": getattr(transform, "feature_names", None),
                                         "classes": transform.target["classes"], "data_type": data_type})
    return Exported(bundle, info.model_uri, max_diff)
