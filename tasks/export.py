"""export: ONNX with a dynamic batch axis, checked against torch with ONNX Runtime on real test rows, written as the
self-contained model file, and logged as the MLflow model that register registers: a python-function model that
takes the raw inputs and runs the Predictor (tasks/pyfunc_model.py), with the raw columns' signature, a few raw test
rows as its input example, and the .onnx as its artifact (also its `onnx` flavor).

Exporter: serving.export.export_fast, the fast TorchScript one where the data type's kind allows it (tables,
images), torch.export otherwise (texts); the reasons and timings are there.
"""
import importlib.metadata
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing import kinds
from preprocessing.steps import Exported, Prepared, Trained
from serving.bundle import ModelBundle, onnx_metadata, save_bundle
from serving.export import INPUT_NAMES, export_fast, parity, with_metadata
from tasks import tracking
from tasks.evaluate import serving_model
from tasks.inputs import model_inputs


@task(name="export", cache_policy=NO_CACHE)
def export(prepared: Prepared, trained: Trained, tolerance: float, run_id: str, run_info: dict,
           metrics: dict) -> Exported:
    logger = get_run_logger()
    model, transform, saved = serving_model(prepared, trained)
    test_inputs = model_inputs(prepared, transform, "test")
    data_type = transform.state.get("data_type", "tabular")
    output_name = "value" if transform.target.regression else "probabilities"
    described = {"data_type": data_type, "task": transform.target.task, "preprocessing": transform.state,
                 "metrics": metrics, "run": run_info}  # in the model file, and in the .onnx's metadata
    onnx_bytes, exporter = export_model(model, torch.from_numpy(test_inputs), output_name, data_type)
    onnx_bytes = with_metadata(onnx_bytes, onnx_metadata(**described))
    max_diff = parity(onnx_bytes, model, test_inputs, tolerance)
    tracking.log_metrics(run_id, {"export_max_abs_diff": max_diff})
    logger.info(f"ONNX export ({exporter} exporter) matches torch within {max_diff:.2e} on {len(test_inputs)} test "
                "rows")

    bundle = save_bundle(
        Path(prepared.arrays).with_name("model.pth"), onnx_bytes=onnx_bytes, **described,
        network={k: saved[k] for k in ("model_config", "input_size", "output_size", "state_dict")})
    client = tracking.configure()
    client.log_artifact(run_id, str(bundle), "model_file")

    from serving.inference import Predictor
    from tasks import pyfunc_model

    predictor = Predictor(ModelBundle(onnx=onnx_bytes, **described))
    example = pyfunc_model.input_example(predictor, prepared.test_frame)
    with tracking.active_run(run_id):
        info = pyfunc_model.log_model(
            bundle.with_suffix(".onnx"), predictor, example,
            pip_requirements=pip_requirements() + pyfunc_model.predictor_requirements(data_type),
            metadata={"feature_names": getattr(transform, "feature_names", None),
                      "classes": list(transform.target.labels), "data_type": data_type})
    return Exported(bundle, info.model_uri, max_diff)


def warm_up_requirement_check() -> None:
    """Load ahead what log_model's requirement check loads once per process: MLflow compares the requirements
    against the installed packages through a map of every installed distribution's modules, built by reading all
    their file lists (2.6 s of the export here, even with pip_requirements given). train.py runs this on a
    background thread while the process mostly waits. Best effort: without it log_model builds the map itself."""
    from mlflow.utils import requirements_utils

    getattr(requirements_utils, "_init_modules_to_packages_map", lambda: None)()


def pip_requirements() -> list[str]:
    """What the logged network needs to load and run: ONNX and ONNX Runtime at the versions that exported and checked
    it (the raw-input model adds the Predictor's, MLflow itself). Given, because inferring them loads the model in a
    subprocess (~2-3 s)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("onnx", "onnxruntime")]


def export_model(model: torch.nn.Module, example: torch.Tensor, output_name: str, data_type: str) -> tuple[bytes, str]:
    """ONNX bytes of `model`, whose input `INPUT_NAMES[data_type]` has a dynamic batch axis, and the exporter that
    wrote them (the data type's kind says whether the fast TorchScript exporter applies)."""
    return export_fast(model, example, output_name, INPUT_NAMES[data_type], kinds.get(data_type).torchscript_export)
