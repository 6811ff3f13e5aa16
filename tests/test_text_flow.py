"""Texts through train-flow, train.py and predict.py, against a temporary Prefect API and the session's MLflow store."""
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from flows.config import ExportConfig
from models.config import ModelConfig
from preprocessing.config import DataConfig, TextConfig
from serving.inference import Predictor
from tests.conftest import REPO
from tests.test_flow import mlflow_run
from training.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = TrainerConfig(n_epochs=8, batch_size=32, lr=0.01)


def run_text(source, **params):
    from flows.train_flow import train_flow

    params.setdefault("train", FAST)
    params.setdefault("experiment", f"text-{uuid.uuid4().hex[:8]}")
    data = params.pop("data", DataConfig(source=str(source), data_type="text"))
    return train_flow(data=data, **params, return_state=True)


def test_reviews_sample_trains_logs_exports_and_predicts_raw_text(tmp_path, mlflow_client):
    model_fn = tmp_path / "reviews.pth"
    state = run_text("sample:reviews", export=ExportConfig(model_name=f"reviews-{uuid.uuid4().hex[:6]}"),
                     model_fn=str(model_fn))
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    params, metrics = run.data.params, run.data.metrics
    assert run.info.run_name.startswith("reviews-text-")
    assert params["model.type"] == "text" and params["model.encoder"] == "mean"
    assert params["preprocess.min_freq"] == "2" and params["preprocess.lowercase"] == "True"
    assert int(params["preprocess.vocab_after"]) <= int(params["preprocess.vocab_before"])
    assert {"vocab_size_before", "vocab_size_after", "val_unk_share", "train_unk_share"} <= set(metrics)
    assert metrics["test_accuracy"] > 0.7  # 3 classes, 40/20/40
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "preprocess")}
    assert {"preprocess/preprocessing.json", "preprocess/cleaning_examples.csv"} <= artifacts
    saved = json.loads(Path(mlflow_client.download_artifacts(run.info.run_id, "preprocess/preprocessing.json",
                                                             str(tmp_path))).read_text())
    assert saved["data_type"] == "text" and saved["steps"][0] == ["nfkc"]

    rows = pd.DataFrame({"text": ["정말 재미있어요 😍 강력 추천합니다", "너무 지루해요 👎 waste of time", None,
                                  "<b>그냥 그래요</b> it was okay", "x" * 100_000],
                         "label": ["?"] * 5})
    rows.to_csv(tmp_path / "texts.csv", index=False)
    done = subprocess.run([sys.executable, "predict.py", "--model_fn", str(model_fn), "--input",
                           str(tmp_path / "texts.csv")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    predicted = pd.read_csv(io.StringIO(done.stdout))
    assert list(predicted.columns) == ["prediction", "proba_negative", "proba_neutral", "proba_positive"]
    assert len(predicted) == 5 and predicted["prediction"][:2].tolist() == ["positive", "negative"]
    assert predicted.filter(like="proba_").sum(axis=1).round(4).eq(1).all()
    # predict.py and the in-process Predictor are the same path
    direct = Predictor.load(model_fn).predict(rows)
    assert direct["prediction"].tolist() == predicted["prediction"].tolist()


def test_text_regression_with_a_recurrent_encoder(mlflow_client):
    state = run_text("sample:reviews", data=DataConfig(source="sample:reviews", data_type="text", target="rating"),
                     model=ModelConfig(encoder="gru", n_layers=1, hidden_size=16, embedding_dim=16),
                     text=TextConfig(tokenizer="char_ngram", ngram=2, max_len=32),
                     export=ExportConfig(register_model=False))
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    assert run.data.params["validate.task"] == "regression" and run.data.params["preprocess.tokenizer"] == "char_ngram"
    assert run.data.metrics["test_r2"] > 0.3 and run.data.metrics["export_max_abs_diff"] < 1e-3


def _invalid_utf8(tmp_path):
    """20 good UTF-8 rows, then one row saved in the legacy Korean encoding (cp949)."""
    path = tmp_path / "legacy.csv"
    body = "text,label\n" + "좋아요,p\n" * 10 + "별로예요,n\n" * 10
    path.write_bytes(body.encode() + "최악이에요".encode("cp949") + b",n\n")
    return path


def test_invalid_utf8_fails_naming_the_line_or_is_replaced_on_request(tmp_path, mlflow_client):
    path = _invalid_utf8(tmp_path)
    state = run_text(path, export=ExportConfig(register_model=False))
    assert state.is_failed()
    with pytest.raises(Exception, match=r"legacy.csv is not valid UTF-8 text: line 22 \(data row 21\)") as info:
        state.result()
    run = mlflow_run(mlflow_client, state)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == str(info.value)

    state = run_text(path, data=DataConfig(source=str(path), data_type="text", encoding_errors="replace"),
                     export=ExportConfig(register_model=False), train=TrainerConfig(n_epochs=1))
    assert state.is_completed(), state.message
    assert mlflow_run(mlflow_client, state).data.metrics["collect_replaced_characters"] >= 1


def test_all_empty_texts_fail_the_run_with_the_reason(tmp_path, mlflow_client):
    path = tmp_path / "empty.jsonl"
    pd.DataFrame({"text": ["", None, "  "] * 3, "label": ["a", "b", "c"] * 3}).to_json(path, orient="records",
                                                                                         lines=True)
    state = run_text(path)
    assert state.is_failed()
    with pytest.raises(Exception, match="has no text: all 9 rows are empty or null"):
        state.result()
    assert mlflow_run(mlflow_client, state).info.status == "FAILED"


def test_text_config_errors_are_refused_before_running():
    from flows.config import RunConfig

    with pytest.raises(ValueError, match="model.type mlp cannot take text data; use text"):
        RunConfig(data=DataConfig(data_type="text"), model=ModelConfig(type="mlp"))
    with pytest.raises(ValueError, match="not offered for text models"):
        RunConfig(data=DataConfig(data_type="text"), model=ModelConfig(pretrained="m.pth"))
