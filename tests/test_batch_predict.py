"""Issue 16, batch prediction: predict.py streams CSV and Parquet in chunks (serving/batch.py) with the output of a
whole-file read, and the batch-predict flow runs the same chunked prediction, logged to MLflow.

Models are built directly (tests/test_hardening.py's make_model: an untrained MLP in well under a second); only the
flow tests need the Prefect server."""
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

import predict
from preprocessing.errors import DataError
from preprocessing.sources import read_table
from serving import batch
from serving.inference import Predictor
from tests.conftest import REPO
from tests.test_hardening import CLASSES, make_model

CODES = ["01", "02", "x", "1", "2", "3"]  # categories as text: '01' is not 1, 3 is not 3.0


def training_rows(n=120, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n) * 10, "c": rng.choice(CODES, n),
                         "label": (CLASSES * n)[:n]})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "m.pth", training_rows())


def inputs(n=50, seed=1) -> pd.DataFrame:
    """Rows whose column c reads as integers in the first chunks and as text (or floats) only in a later one, with
    nulls in numeric and categorical columns."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n) * 10,
                          "c": rng.choice(["01", "02"], n).astype(object), "label": (CLASSES * n)[:n]})
    frame.loc[[3, 17, 31], "a"] = np.nan
    frame.loc[[5, 40], "b"] = np.nan
    frame.loc[[44], "c"] = "x"  # only in the last chunk of 7 rows: the whole file reads c as text ('01', not 1)
    frame.loc[[46], "c"] = None
    return frame


def whole(model_path, source, output):
    """What predict.py wrote before streaming: read the whole file, predict, write."""
    predictor = Predictor.load(model_path)
    predict.write(predictor.predict(read_table(str(source)), str(source)), str(output) if output else None)


def streamed(model_path, source, output, chunk_rows=7, **options):
    return batch.predict_file(Predictor.load(model_path), str(source), str(output), chunk_rows, **options)


# ---------------------------------------------------------------- the output of a whole-file read

@pytest.mark.parametrize("out", ["csv", "parquet", "jsonl"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_streamed_output_equals_the_whole_file_output(model, tmp_path, fmt, out):
    frame = inputs()
    source = tmp_path / f"in.{fmt}"
    frame.to_csv(source, index=False) if fmt == "csv" else frame.to_parquet(source, index=False, row_group_size=20)
    whole(model, source, tmp_path / f"whole.{out}")
    result = streamed(model, source, tmp_path / f"streamed.{out}")
    assert (result.rows, result.chunks) == (50, 8)  # 7 rows a chunk: boundaries mid-file, a short last chunk
    if out == "parquet":
        expected, got = pd.read_parquet(tmp_path / "whole.parquet"), pd.read_parquet(tmp_path / "streamed.parquet")
        pd.testing.assert_frame_equal(got, expected)
    else:
        assert (tmp_path / f"streamed.{out}").read_bytes() == (tmp_path / f"whole.{out}").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_categorical_types_follow_the_whole_file(model, tmp_path):
    # integers everywhere but a null in the last chunk: the whole file reads c as floats ('1.0', an unknown category)
    frame = inputs().assign(c=lambda f: np.resize(["1", "2", "3"], len(f)))
    frame.loc[48, "c"] = None
    frame.to_csv(tmp_path / "ints.csv", index=False)
    whole(model, tmp_path / "ints.csv", tmp_path / "whole.csv")
    streamed(model, tmp_path / "ints.csv", tmp_path / "streamed.csv", chunk_rows=10)
    assert (tmp_path / "streamed.csv").read_text() == (tmp_path / "whole.csv").read_text()


def test_the_cli_streams_in_chunks_to_stdout_as_before(model, tmp_path):
    inputs().to_csv(tmp_path / "in.csv", index=False)
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "predict.py", "--model_fn", str(model), "--input", str(tmp_path / "in.csv"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    chunked, default = run("--chunk_rows", "7"), run()
    assert chunked.returncode == 0 and default.returncode == 0, chunked.stderr + default.stderr
    whole(model, tmp_path / "in.csv", tmp_path / "whole.csv")
    assert chunked.stdout == default.stdout == (tmp_path / "whole.csv").read_text()
    assert chunked.stderr == ""  # no progress bar when stderr is not a terminal
    refused = run("--chunk_rows", "0")
    assert refused.returncode == 2 and "--chunk_rows: must be at least 1, not 0" in refused.stderr


def test_predict_reads_in_chunks_and_never_whole(model, tmp_path, monkeypatch, capsys):
    inputs(200).to_parquet(tmp_path / "in.parquet", index=False)
    sizes = []
    original = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, frame, name="input": sizes.append(len(frame))
                        or original(self, frame, name))
    monkeypatch.setattr("preprocessing.sources.read_table", lambda *a, **k: pytest.fail("read whole"))
    code = predict.main(["--model_fn", str(model), "--input", str(tmp_path / "in.parquet"), "--output",
                         str(tmp_path / "out.parquet"), "--chunk_rows", "32"])
    assert code == 0 and "wrote 200 predictions to" in capsys.readouterr().err
    assert sizes[-7:] == [32] * 6 + [8]  # after the load check's samples of 1 and 2 rows
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 200


# ---------------------------------------------------------------- errors: the file's row, and no output

def test_an_error_in_a_later_chunk_names_its_file_row_and_leaves_no_output(model, tmp_path, capsys):
    frame = inputs().astype({"a": object})
    frame.loc[43, "a"] = "n/a!"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    code = predict.main(["--model_fn", str(model), "--input", str(tmp_path / "bad.csv"), "--output",
                         str(tmp_path / "out.csv"), "--chunk_rows", "10"])
    err = capsys.readouterr().err
    assert code == 1 and "error: column 'a' in" in err and "data row 44 has 'n/a!'" in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.csv"]  # neither the output nor its partial file

    frame = inputs()
    frame.loc[37, "b"] = 1e308
    frame.to_parquet(tmp_path / "huge.parquet", index=False)
    with pytest.raises(DataError, match=r"column 'b' in .*huge.parquet has a value too large .* at data row 38 "):
        streamed(model, tmp_path / "huge.parquet", tmp_path / "out.parquet", chunk_rows=10)
    assert not (tmp_path / "out.parquet").exists()


def refusal(call) -> str:
    with pytest.raises(DataError) as raised:
        call()
    return str(raised.value)


@pytest.mark.parametrize("case", ["not_utf8", "extra_field", "header_only", "empty", "long_line", "last_line"])
def test_bad_files_get_the_messages_of_a_whole_read(model, tmp_path, case):
    path = tmp_path / "in.csv"
    lines = [b"a,b,c,label"] + [b"%d,%d,01,p" % (i, i) for i in range(30)]
    content = {"not_utf8": lines[:25] + [b"1,2,\xff,p"] + lines[25:],
               "extra_field": lines[:20] + [b"1,2,3,4,5"] + lines[20:],
               "header_only": lines[:1], "empty": [],
               "long_line": lines[:12] + [b"1,2," + b"y" * (2 * 2**20) + b",p"] + lines[12:],
               "last_line": lines + [b"1,2," + b"y" * (2 * 2**20)]}[case]
    path.write_bytes(b"\n".join(content) + (b"\n" if content and case != "last_line" else b""))
    expected = refusal(lambda: read_table(str(path), max_line_mb=1))
    assert refusal(lambda: streamed(model, path, tmp_path / "out.csv", chunk_rows=4, max_line_mb=1)) == expected
    assert not (tmp_path / "out.csv").exists()


def test_only_one_table_for_a_rows_model_streams(model, tmp_path):
    predictor = Predictor.load(model)
    inputs().to_csv(tmp_path / "in.csv", index=False)
    inputs().to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    assert batch.streams(predictor, [str(tmp_path / "in.csv")])
    assert batch.streams(predictor, [(tmp_path / "in.csv").as_uri()])
    assert not batch.streams(predictor, [str(tmp_path / "in.jsonl")])
    assert not batch.streams(predictor, [str(tmp_path / "in.csv")] * 2)
    assert not batch.streams(predictor, ["sklearn:wine"])
    assert not batch.streams(predictor, [str(tmp_path / "missing.csv")])  # read_table names what is wrong
    (tmp_path / "u16.csv").write_bytes("a,b\n1,2\n".encode("utf-16"))
    assert not batch.streams(predictor, [str(tmp_path / "u16.csv")])


def test_the_batch_module_imports_neither_prefect_nor_mlflow():
    probe = "import sys, serving.batch; print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


# ---------------------------------------------------------------- the batch-predict flow

def register(client, model_path, folder) -> str:
    """A registered version of the model file, as train-flow's export leaves it (artifact model_file/model.pth),
    with the champion alias."""
    from tasks import tracking

    name = f"batch-{uuid.uuid4().hex[:6]}"
    experiment = tracking.ensure_experiment(client, f"reg-{name}")  # artifacts beside the session's store
    run = client.create_run(experiment)
    (folder / "model.pth").write_bytes(model_path.read_bytes())
    client.log_artifact(run.info.run_id, str(folder / "model.pth"), "model_file")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model_file", run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    return name


def flow_run(client, state):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'")
    assert len(runs) == 1
    return runs[0]


@pytest.mark.usefixtures("prefect_harness")
def test_batch_predict_flow_predicts_a_registered_model_and_logs_to_mlflow(model, tmp_path, mlflow_client):
    from flows.batch_predict_flow import batch_predict_flow

    name = register(mlflow_client, model, tmp_path)
    frame = inputs()
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    experiment = f"test-batch-{uuid.uuid4().hex[:6]}"
    state = batch_predict_flow(input=str(tmp_path / "in.parquet"), model=name, output=str(tmp_path / "out.csv"),
                               chunk_rows=7, experiment=experiment, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["rows"] == 50 and result["chunks"] == 8 and result["model_version"] == "1"
    whole(model, tmp_path / "in.parquet", tmp_path / "whole.csv")
    assert (tmp_path / "out.csv").read_text() == (tmp_path / "whole.csv").read_text()
    run = flow_run(mlflow_client, state)
    assert run.info.status == "FINISHED"
    metrics, params = run.data.metrics, run.data.params
    assert metrics["rows"] == 50 and metrics["chunks"] == 8 and metrics["rows_per_s"] > 0 and metrics["seconds"] > 0
    assert params["model.uri"] == f"models:/{name}@champion" and params["model.version"] == "1"
    assert params["input"] == str(tmp_path / "in.parquet") and params["chunk_rows"] == "7"

    frame.loc[30, "b"] = np.inf  # bad input in a later chunk: FAILED with the reason, in Prefect and MLflow
    frame.to_parquet(tmp_path / "bad.parquet", index=False)
    state = batch_predict_flow(input=str(tmp_path / "bad.parquet"), model=f"models:/{name}/1",
                               output=str(tmp_path / "bad.csv"), chunk_rows=7, experiment=experiment,
                               return_state=True)
    assert state.is_failed() and "infinite value at data row 31" in state.message, state.message
    run = flow_run(mlflow_client, state)
    assert run.info.status == "FAILED" and "infinite value at data row 31" in run.data.tags["failure_reason"]
    assert not (tmp_path / "bad.csv").exists()


def test_the_deployment_runs_the_flow_with_valid_parameters():
    import yaml

    from flows.batch_predict_flow import batch_predict_flow

    (spec,) = [d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
               if d["entrypoint"] == "flows/batch_predict_flow.py:batch_predict_flow"]
    assert spec["work_pool"]["name"] == "torchyard-process" and "schedules" not in spec
    checked = batch_predict_flow.validate_parameters({**spec["parameters"], "input": "in.parquet", "output": "o.csv"})
    assert checked["model"] == "wine-mlp" and checked["chunk_rows"] == batch.DEFAULT_CHUNK_ROWS
    assert set(batch_predict_flow.parameters.required) == {"input", "model", "output"}
