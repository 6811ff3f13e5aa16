"""Tables streamed from Parquet in record batches (data.memory_budget_mb): the same schema, split, statistics and
arrays as the same table read whole, and a training reader that visits every row once per epoch."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from preprocessing import streaming, tabular
from preprocessing.config import DataConfig, SplitConfig, TabularConfig
from preprocessing.errors import DataError
from preprocessing.split import SPLITS, split_indices
from preprocessing.summaries import NumericSummary
from preprocessing.validate import validate_table
from training.data import StreamedData

BATCH = 700  # several record batches, and batch boundaries that fall inside every split


def mixed_table(n=5000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "x": rng.normal(3, 2, n),
        "count": pd.array(rng.integers(0, 50, n), dtype="Int64"),
        "colour": rng.choice(["red", "green", "blue", "teal"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object),
        "flag": rng.random(n) > 0.5,
        "label": np.where(rng.random(n) > 0.6, "yes", "no").astype(object),
    })
    frame.loc[rng.random(n) < 0.05, "x"] = np.nan
    frame.loc[rng.random(n) < 0.05, "count"] = pd.NA
    frame.loc[rng.random(n) < 0.05, "colour"] = None
    frame.loc[[3, n // 3, n - 7], "label"] = None  # null targets: dropped by both paths
    return frame


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "table.parquet"
    mixed_table().to_parquet(path, index=False, row_group_size=1000)
    return path


@pytest.mark.parametrize("missing", ["impute", "drop_rows", "drop_columns"])
def test_streamed_steps_equal_the_table_read_whole(table, tmp_path, missing):
    config = DataConfig(source=str(table), target="label", memory_budget_mb=64)
    preprocess = TabularConfig(missing=missing, max_null_fraction=0.04, numeric_impute="median", scaler="robust")
    stream = streaming.ParquetStream(table, 64, batch_rows=BATCH)

    whole, schema = validate_table(pd.read_parquet(table), config, str(table))
    streamed = streaming.validate_stream(stream, config)
    assert (streamed.task, streamed.classes, streamed.n_rows) == (schema.task, schema.classes, schema.n_rows)
    assert (streamed.numeric, streamed.categorical) == (schema.numeric, schema.categorical)
    assert streamed.notes == schema.notes == ["dropped 3 rows whose target 'label' is null"]

    positions, target = streaming.target_rows(stream, "label")
    assert len(positions) == schema.n_rows and 3 not in positions
    parts = split_indices(whole["label"], schema.task, SplitConfig(), seed=7)
    streamed_parts = {k: positions[v] for k, v in split_indices(target, streamed.task, SplitConfig(), 7).items()}
    assert all(np.array_equal(positions[parts[k]], streamed_parts[k]) for k in SPLITS)

    assignment = streaming.split_assignment(stream.n_rows, streamed_parts)
    fitting = streaming.fit_stream(stream, assignment, streamed, preprocess)
    state, train_rows = fitting.state(), fitting.rows
    expected = tabular.fit(whole.iloc[parts["train"]], schema, preprocess)
    assert json.dumps(state, sort_keys=True) == json.dumps(json.loads(json.dumps(expected)), sort_keys=True) or \
        _close(state, expected)
    manifest = streaming.write_splits(stream, assignment, state, train_rows, tmp_path / "arrays",
                                      tmp_path / "test_rows.parquet")
    transform = tabular.TabularTransform(expected)
    for name in SPLITS:
        rows = whole.iloc[parts[name]]
        if name == "train" and missing == "drop_rows":
            rows = rows.dropna(subset=transform.input_columns)
        features = np.load(tmp_path / "arrays" / f"{name}_features.npy")
        np.testing.assert_allclose(features, transform.features(rows), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.load(tmp_path / "arrays" / f"{name}_targets.npy"),
                                      transform.encode_target(rows["label"]))
        assert manifest["rows"][name] == len(rows)
    test_rows = pd.read_parquet(tmp_path / "test_rows.parquet")
    assert test_rows["x"].equals(whole.iloc[parts["test"]]["x"].reset_index(drop=True))


def _close(state, expected) -> bool:
    assert state.keys() == expected.keys()
    for kind in ("numeric", "categorical"):
        for got, want in zip(state[kind], expected[kind], strict=True):
            assert got.keys() == want.keys()
            for key, value in want.items():
                assert got[key] == pytest.approx(value, rel=1e-9) if isinstance(value, float) else got[key] == value
    assert state["feature_names"] == expected["feature_names"] and state["target"] == expected["target"]
    return True


def test_streamed_regression_target_and_bad_rows_are_named_with_their_file_row(tmp_path):
    frame = pd.DataFrame({"a": np.arange(3000, dtype=float), "y": np.linspace(0, 1, 3000)})
    frame.loc[2500, "a"] = np.inf
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path, index=False)
    config = DataConfig(source=str(path), target="y", memory_budget_mb=16)
    with pytest.raises(DataError, match=r"column 'a' .* infinite values \(first at data row 2501"):
        streaming.validate_stream(streaming.ParquetStream(path, 16, batch_rows=BATCH), config)
    frame.loc[2500, "a"] = 1.0
    frame["y"] = frame["y"].astype(str)
    frame.loc[2100, "y"] = "n/a"
    frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match=r"target 'y' .* must be numeric for regression but data row 2101 has 'n/a'"):
        streaming.validate_stream(streaming.ParquetStream(path, 16, batch_rows=BATCH),
                                  config.model_copy(update={"task": "regression"}))


def test_streaming_refuses_what_it_cannot_stream(tmp_path):
    with pytest.raises(ValueError, match="memory_budget_mb streams tabular Parquet"):
        DataConfig(source="x.csv", format="csv", memory_budget_mb=64)
    with pytest.raises(ValueError, match="memory_budget_mb streams tabular Parquet"):
        DataConfig(source="photos/", data_type="image", memory_budget_mb=64)
    (tmp_path / "t.csv").write_text("a,target\n1,2\n")
    with pytest.raises(DataError, match=r"t.csv could not be read as Parquet .*streams Parquet only"):
        streaming.ParquetStream(tmp_path / "t.csv", 64)
    with pytest.raises(DataError, match="is a URL"):
        streaming.ParquetStream("https://example.com/t.parquet", 64)


def test_quantiles_from_a_bounded_sample_and_exact_moments():
    rng = np.random.default_rng(1)
    values = rng.normal(0, 1, 200_000)
    summary = NumericSummary(sample_size=20_000, seed=3)
    for chunk in np.array_split(values, 37):
        summary.update(chunk)
    assert len(summary.sample) == 20_000 and not summary.exact
    assert summary.mean == pytest.approx(values.mean(), abs=1e-12)
    assert summary.std == pytest.approx(values.std(), rel=1e-10)
    assert (summary.low, summary.high) == (values.min(), values.max())
    assert summary.quantile(0.5) == pytest.approx(np.median(values), abs=0.03)
    assert summary.quantile(0.75) - summary.quantile(0.25) == pytest.approx(1.349, abs=0.05)


def _rows_on_disk(tmp_path, n=1000, d=3):
    features = np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1)
    np.save(tmp_path / "f.npy", features)
    np.save(tmp_path / "t.npy", np.arange(n, dtype=np.int64))
    return tmp_path / "f.npy", tmp_path / "t.npy"


def test_streamed_data_visits_every_row_once_per_epoch_in_a_seeded_order(tmp_path):
    features, targets = _rows_on_disk(tmp_path)
    data = StreamedData(features, targets, batch_size=32, block_rows=64, buffer_rows=200)
    epochs = []
    for seed in (0, 0, 1):
        batches = list(data.epoch(torch.Generator().manual_seed(seed)))
        assert all(len(y) == 32 for _, y in batches[:-1])
        assert all(torch.equal(x[:, 0].long(), y) for x, y in batches)  # rows stay whole
        epochs.append(torch.cat([y for _, y in batches]))
    assert sorted(epochs[0].tolist()) == list(range(1000))
    assert torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], epochs[2])
    assert not torch.equal(epochs[0], torch.arange(1000))
    ordered = torch.cat([y for _, y in data.ordered()])
    assert torch.equal(ordered, torch.arange(1000))
    assert data.n_batches() == 32 and len(data) == 1000



@pytest.mark.usefixtures("prefect_harness")
def test_train_flow_streams_a_parquet_table(fast_train, mlflow_client, tmp_path):
    import uuid

    from flows.config import ExportConfig
    from flows.train_flow import train_flow
    from serving.inference import Predictor

    rng = np.random.default_rng(5)
    frame = mixed_table(4000)
    frame["label"] = np.where(frame["x"].fillna(3) + 2 * (frame["colour"] == "red") > 4, "yes", "no")
    path = tmp_path / "big.parquet"
    frame.sample(frac=1, random_state=int(rng.integers(1000))).to_parquet(path, index=False, row_group_size=500)
    name = f"streamed-{uuid.uuid4().hex[:6]}"
    runs = []
    for seed in (1, 1):  # the second run's promotion scores the first (champion) on the same streamed test rows
        state = train_flow(data=DataConfig(source=str(path), target="label", memory_budget_mb=16),
                           train=fast_train, export=ExportConfig(model_name=name), experiment=name, seed=seed,
                           model_fn=str(tmp_path / "m.pth"), return_state=True)
        assert state.is_completed(), state.message
        runs.append(state.result())
    run = mlflow_client.get_run(runs[1]["run_id"])
    params = run.data.params
    assert params["preprocess.memory_budget_mb"] == "16" and params["preprocess.quantiles"] == "exact"
    assert params["split.train_rows"] == str(int(params["validate.rows"]) - int(params["split.val_rows"])
                                             - int(params["split.test_rows"]))
    assert run.data.metrics["test_accuracy"] > 0.85
    assert run.data.tags["promotion.champion_score"] not in ("", None)
    assert float(run.data.tags["promotion.champion_score"]) == pytest.approx(
        mlflow_client.get_run(runs[0]["run_id"]).data.metrics["test_accuracy"], abs=1e-6)  # same test split
    predicted = Predictor.load(tmp_path / "m.pth").predict(frame.head(50).drop(columns=["label"]))
    assert (np.asarray(predicted["prediction"]) == frame.head(50)["label"].to_numpy()).mean() > 0.8
