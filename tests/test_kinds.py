"""The data-type modules (preprocessing/kinds/): one registry, one interface, and nobody else branches on the type."""
import re
import subprocess
import sys

import pytest

from models.config import ModelConfig
from preprocessing import kinds
from preprocessing.errors import DataError
from preprocessing.kinds.base import Kind
from tests.conftest import REPO

STEPS = ("collect", "validate", "prepare", "transform", "input_size", "batch_source", "fit_baseline", "input_schema")


@pytest.mark.parametrize("data_type", kinds.DATA_TYPES)
def test_every_kind_is_registered_under_its_name_and_implements_the_steps(data_type):
    kind = kinds.get(data_type)
    assert isinstance(kind, Kind) and kind.name == data_type
    for step in STEPS:
        implemented = getattr(type(kind), step) is not getattr(Kind, step) or step in ("collect", "prepare")
        assert implemented, f"{data_type} does not implement {step}"
    if data_type != "tabular":  # fit_parts is what the shared prepare() calls for data held in memory
        assert type(kind).fit_parts is not Kind.fit_parts


@pytest.mark.parametrize("data_type", kinds.DATA_TYPES)
def test_the_kind_names_the_model_type_that_auto_resolves_to(data_type):
    assert ModelConfig().resolved(data_type, 32).type == kinds.get(data_type).model_type


def test_an_unknown_data_type_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data type 'audio'.*tabular, image, text"):
        kinds.get("audio")


def test_a_table_never_imports_the_image_or_text_stack():
    probe = ("import sys; from preprocessing import kinds; kinds.get('tabular'); "
             "import tasks.inputs, serving.inference; "
             "print(sorted(m for m in ('albumentations', 'cv2', 'preprocessing.image', 'preprocessing.text') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_step_outside_the_kinds_branches_on_the_data_type():
    files = [REPO / "predict.py", REPO / "train.py", REPO / "serve.py"]
    for folder in ("tasks", "flows", "serving"):
        files += sorted((REPO / folder).glob("*.py"))
    branching = re.compile(r"data_type\s*(==|!=|in\s)|isinstance\(\w+,\s*(Image|Text|Tabular)Transform")
    found = [f"{path.relative_to(REPO)}:{i}: {line.strip()}" for path in files
             for i, line in enumerate(path.read_text().splitlines(), 1) if branching.search(line)]
    assert not found, "\n".join(found)
