"""The classic CLI as a user runs it: separate processes, flags, files."""
import io
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from tests.conftest import REPO

import train as train_cli


def run(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_flags_override_the_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: 'sklearn:iris'}\ntrain: {n_epochs: 50, lr: 0.1}\nmodel: {hidden_size: 8}\n")
    built = train_cli.build_config(train_cli.parse_args(
        ["--config", str(config), "--n_epochs", "3", "--scheduler", "steplr", "--patience", "2", "--n_layers", "5"]))
    assert built.data.source == "sklearn:iris" and built.train.lr == 0.1 and built.model.hidden_size == 8
    assert built.train.n_epochs == 3 and built.model.n_layers == 5
    assert built.train.scheduler.name == "StepLR" and built.train.early_stopping.patience == 2


def test_invalid_flag_values_are_reported_without_traceback(tmp_path):
    result = run("train.py", "--n_epochs", "0", "--model_fn", str(tmp_path / "m.pth"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.n_epochs" in result.stderr and "greater than or equal to 1" in result.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("train: {n_epoch: 3}\n")
    result = run("train.py", "--config", str(typo))
    assert result.returncode == 2 and "n_epoch" in result.stderr and "Extra inputs are not permitted" in result.stderr


def test_classic_command_trains_and_predict_runs_without_the_store(tmp_path, wine_frame):
    model_fn = tmp_path / "tmp.pth"
    result = run("train.py", "--model_fn", str(model_fn), "--gpu_id", "-1", "--batch_size", "256",
                 "--n_epochs", "3", "--n_layers", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert model_fn.exists() and model_fn.with_suffix(".onnx").exists()
    assert "epoch 3/3" in result.stderr + result.stdout and "Traceback" not in result.stderr

    rows = wine_frame.sample(25, random_state=1)  # includes the target column, which predict must ignore
    rows.to_csv(tmp_path / "rows.csv", index=False)
    nowhere = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/absent/none.db", "PREFECT_API_URL": "http://127.0.0.1:9"}
    result = run("predict.py", "--model_fn", str(model_fn), "--input", str(tmp_path / "rows.csv"),
                 "--output", str(tmp_path / "preds.csv"), env=nowhere)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "absent").exists()
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert list(preds.columns) == ["prediction", "proba_class_0", "proba_class_1", "proba_class_2"]
    assert len(preds) == 25 and set(preds["prediction"]) <= {"class_0", "class_1", "class_2"}
    assert np.allclose(preds.filter(like="proba_").sum(axis=1), 1.0, atol=1e-5)
    stdout = run("predict.py", "--model_fn", str(model_fn), "--input", str(tmp_path / "rows.csv"), env=nowhere)
    assert pd.read_csv(io.StringIO(stdout.stdout))["prediction"].tolist() == preds["prediction"].tolist()


def test_own_csv_with_categories_nulls_and_unseen_values(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(size=n)
    label = np.where((colour == "red") | (size > 1), "yes", "no")
    data = pd.DataFrame({"id": range(n), "colour": colour, "size": size, "label": label})
    data.loc[::17, "size"] = None
    data.loc[::13, "colour"] = None
    data.to_parquet(tmp_path / "own.parquet", index=False)
    model_fn = tmp_path / "own.pth"
    result = run("train.py", "--data", (tmp_path / "own.parquet").as_uri(), "--target", "label",
                 "--model_fn", str(model_fn), "--n_epochs", "15", "--lr", "0.01", "--optimizer", "adamw",
                 "--scheduler", "CosineAnnealingLR", "--seed", "3", "--experiment", "own-data")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test_accuracy" in result.stdout and "test_auroc" in result.stdout

    new = pd.DataFrame({"id": [1, 2, 3, 4], "colour": ["red", "purple", None, "blue"], "size": [0.0, 0.0, None, 3.0]})
    new.to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    result = run("predict.py", "--model_fn", str(model_fn), "--input", str(tmp_path / "new.jsonl"),
                 "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == 4 and list(out.columns) == ["prediction", "proba_no", "proba_yes"]
    assert out["prediction"].iloc[0] == "yes"  # red is always yes


def test_bad_input_prints_one_line_not_a_traceback(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    result = run("train.py", "--data", str(tmp_path / "d.csv"), "--target", "species", "--n_epochs", "1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: target column 'species' not found in" in result.stderr and "columns are: 'a', 'b'" in result.stderr


def test_predict_errors(tmp_path):
    result = run("predict.py", "--model_fn", str(tmp_path / "none.pth"), "--input", "x.csv")
    assert result.returncode == 1 and "error: model file not found" in result.stderr
    assert "Traceback" not in result.stderr
