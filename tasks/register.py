"""register: add the exported model to the MLflow model registry, with its metrics and a description."""
import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from preprocessing.steps import Exported
from tasks import tracking


@task(name="register", cache_policy=NO_CACHE)
def register(exported: Exported, name: str, metrics: dict, run_id: str, fingerprint: str, config_hash: str) -> str:
    client = tracking.configure()
    version = mlflow.register_model(
        exported.model_uri, name,
        tags={**{k: f"{v:.6g}" for k, v in metrics.items()}, "data_fingerprint": fingerprint, "run_id": run_id,
              "torchyard.config_hash": config_hash})
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    client.update_model_version(name, version.version, description=f"torchyard train-flow run {run_id}; {summary}")
    tracking.set_tags(run_id, {"registered_model": f"{name}/{version.version}"})
    get_run_logger().info(f"registered as models:/{name}/{version.version}")
    return str(version.version)
