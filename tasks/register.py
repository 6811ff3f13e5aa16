"""register: add the exported model to the MLflow model registry, with its metrics and a description."""
import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.steps import Exported

CHAMPION = "champion"  # the alias python -m serving serves by default


@task(name="register", cache_policy=NO_CACHE)
def register(exported: Exported, name: str, metrics: dict, run_id: str, fingerprint: str) -> str:
    client = tracking.configure()
    version = mlflow.register_model(
        exported.model_uri, name,
        tags={**{k: f"{v:.6g}" for k, v in metrics.items()}, "data_fingerprint": fingerprint, "run_id": run_id})
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    client.update_model_version(name, version.version, description=f"torchyard train-flow run {run_id}; {summary}")
    tracking.set_tags(run_id, {"registered_model": f"{name}/{version.version}"})
    logger = get_run_logger()
    logger.info(f"registered as models:/{name}/{version.version}")
    if CHAMPION not in client.get_registered_model(name).aliases:  # the first model of a name becomes champion
        client.set_registered_model_alias(name, CHAMPION, version.version)
        logger.info(f"models:/{name}@{CHAMPION} -> version {version.version} (the first of its name)")
    return str(version.version)
