"""The example configs and prefect.yaml stay valid and in step."""
import pytest
import yaml

from flows.config import RunConfig, load_config_file
from tests.conftest import REPO

DEPLOYMENTS = {"wine-classifier": "wine.yaml", "diabetes-regressor": "diabetes.yaml",
               "breast-cancer-classifier": "breast_cancer.yaml", "digits-cnn": "digits.yaml",
               "reviews-text": "reviews.yaml"}


def prefect_yaml():
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment,config_file", DEPLOYMENTS.items())
def test_deployment_parameters_equal_the_example_config(deployment, config_file):
    (spec,) = [d for d in prefect_yaml()["deployments"] if d["name"] == deployment]
    config = load_config_file(REPO / "configs" / config_file)
    assert spec["parameters"] == config
    RunConfig(**spec["parameters"])  # valid against the typed config
    assert spec["entrypoint"] == "flows/train_flow.py:train_flow"
    assert spec["work_pool"]["name"] == "torchyard-process"


def test_pull_step_sets_the_working_directory():
    (step,) = prefect_yaml()["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $TORCHYARD_HOME }}"


def test_the_flow_signature_is_the_typed_config():
    from flows.train_flow import train_flow

    assert list(train_flow.parameters.properties) == list(RunConfig.model_fields)


def test_the_sweep_flow_takes_the_same_sections_typed():
    from prefect.exceptions import ParameterTypeError

    from flows.sweep_flow import sweep_flow

    schema = sweep_flow.parameters
    assert list(schema.properties) == ["sweep"] + [name for name in RunConfig.model_fields
                                                   if name not in ("parallel", "baseline", "model_fn")]
    assert schema.required == ["sweep"]
    assert schema.properties["train"]["$ref"] == "#/definitions/TrainerConfig"  # a form, not a free JSON field
    checked = sweep_flow.validate_parameters({"sweep": {"parameters": {"train.lr": [0.1]}}, "train": {"n_epochs": 3}})
    assert checked["train"].n_epochs == 3 and checked["model"].type == "auto"
    with pytest.raises(ParameterTypeError, match="n_epochs"):
        sweep_flow.validate_parameters({"sweep": {"parameters": {}}, "train": {"n_epochs": "many"}})
