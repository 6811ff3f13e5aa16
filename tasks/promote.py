"""Champion/challenger: does the new model (the challenger) replace the registered champion?

The challenger's test metrics come from evaluate. The champion, read from the registry (`models:/<name>@champion`),
is scored on the same new test split through the same Predictor that serves it. The alias moves only when the
configured metric improves by more than 0 and by at least `min_improvement`; moving an alias is one registry
update, so the registry always has a champion, whatever fails when. The first model of a name becomes champion.
"""
import functools

import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from preprocessing import kinds
from preprocessing.errors import TorchyardError
from preprocessing.steps import Prepared
from serving.inference import Predictor
from serving.registry import resolve
from tasks import registry, tracking
from tasks.inputs import load_transform
from training import promotion

CHAMPION = "champion"
SCORE_BATCH_ROWS = 65536


def champion_version(client, name: str):
    """The registry version the alias points at, or None (no such model, or no champion yet)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def unchanged_since_champion(name: str, fingerprint: str, config_hash: str):
    """The champion version when it was trained on this exact data with this exact config, else None."""
    champion = champion_version(tracking.configure(), name)
    asked = {"data_fingerprint": fingerprint, "torchyard.config_hash": config_hash}
    return champion if champion and all(champion.tags.get(k) == v for k, v in asked.items()) else None


def score_on(prepared: Prepared, reference: str, metric: str) -> float:
    """`metric` of the model at `reference`, on this run's test split, through the serving Predictor. The test
    rows are read in record batches, so a test split larger than memory is scored too."""
    predictor = Predictor(resolve(reference, registry)[0])
    target = load_transform(prepared).target
    predict = functools.partial(kinds.of(predictor.transform).predict_frame, predictor, name="the new test split")
    frames = (batch.to_pandas() for batch in pq.ParquetFile(prepared.test_frame).iter_batches(SCORE_BATCH_ROWS))
    return promotion.score(predict, frames, target.name, target.task, list(target.labels), metric)


@task(name="promote", cache_policy=NO_CACHE)
def promote(prepared: Prepared, metrics: dict, metric: str, min_improvement: float, name: str, version: str,
            run_id: str) -> dict:
    logger = get_run_logger()
    client = tracking.configure()
    if metric not in metrics:
        raise TorchyardError(f"promote.metric '{metric}' is not a test metric of this run; it has "
                             + ", ".join(sorted(metrics)))
    challenger = metrics[metric]
    champion = champion_version(client, name)
    champion_score = None
    if champion is None:
        promoted, reason = True, f"first model of the name {name}"
    elif str(champion.version) == str(version):
        promoted, reason = True, "already champion"
    else:
        try:
            champion_score = score_on(prepared, f"models:/{name}/{champion.version}", metric)
        except TorchyardError as exc:
            logger.warning(f"champion version {champion.version} cannot score the new data: {exc}")
        promoted, reason = promotion.decide(challenger, champion_score, metric, min_improvement)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)  # one atomic move: never without a champion
    decision = "promoted" if promoted else "not promoted"
    result = {"decision": decision, "reason": reason, "metric": metric, "challenger_score": challenger,
              "champion_score": champion_score, "champion_version": str(champion.version) if champion else None,
              "challenger_version": version}
    tracking.set_tags(run_id, {f"promotion.{k}": "" if v is None else str(v) for k, v in result.items()})
    client.set_model_version_tag(name, version, "promotion", f"{decision}: {reason}")
    description = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=f"{description}\n{decision} ({reason})".strip())
    before = "none" if champion is None else f"version {champion.version}"
    logger.info(f"challenger version {version}: {decision} ({reason}); champion was {before}")
    rows = [("challenger", version, challenger), ("champion before", before, champion_score)]
    table = "\n".join(f"| {who} | {v} | {'' if s is None else f'{s:.4f}'} |" for who, v, s in rows)
    create_markdown_artifact(  # not promoted: there is a champion, which keeps the alias
        key="promotion", description="champion/challenger decision of this train-flow run",
        markdown=(f"# {name}: {decision}\n\n{reason}.\n\n| model | version | {metric} |\n|---|---|---|\n{table}\n\n"
                  f"`models:/{name}@{CHAMPION}` -> version {version if promoted else champion.version}\n"))
    return result
