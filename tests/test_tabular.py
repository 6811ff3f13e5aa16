import json

import numpy as np
import pandas as pd
import pytest

from preprocessing import tabular
from preprocessing.config import DataConfig, TabularConfig
from preprocessing.errors import DataError
from preprocessing.tabular import TabularTransform
from preprocessing.targets import Target
from preprocessing.validate import validate_table


def fitted(train: pd.DataFrame, **config):
    _, schema = validate_table(train, DataConfig(target="y"), "train")
    state = tabular.fit(train, schema, TabularConfig(**config))
    return TabularTransform(json.loads(json.dumps(state)))  # the state survives a JSON round trip


@pytest.fixture
def train():
    return pd.DataFrame({
        "num": [1.0, 2.0, 3.0, None, 10.0, 2.0],
        "cat": ["a", "b", "a", None, "a", "c"],
        "y": ["p", "q", "p", "q", "p", "q"],
    })


def test_statistics_come_from_the_rows_given_to_fit(train):
    transform = fitted(train, scaler="standard", numeric_impute="median")
    spec = transform.state["numeric"][0]
    present = train["num"].dropna()
    assert spec["fill"] == present.median()
    assert spec["center"] == pytest.approx(present.mean())
    assert (spec["min"], spec["max"]) == (present.min(), present.max())  # serving's skew gauge reads them
    assert spec["scale"] == pytest.approx(present.std(ddof=0))
    x = transform.features(pd.DataFrame({"num": [present.mean()], "cat": ["a"]}))
    assert x[0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("strategy,expected", [("mean", 3.6), ("median", 2.0), ("most_frequent", 2.0),
                                               ("constant", -1.0)])
def test_numeric_imputation(train, strategy, expected):
    transform = fitted(train, numeric_impute=strategy, fill_value=-1.0, scaler="none")
    x = transform.features(pd.DataFrame({"num": [None], "cat": ["a"]}))
    assert x[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("scaler,low,high", [("minmax", 0.0, 1.0), ("robust", None, None), ("none", 1.0, 10.0)])
def test_scalers(train, scaler, low, high):
    transform = fitted(train, scaler=scaler)
    x = transform.features(pd.DataFrame({"num": [1.0, 10.0], "cat": ["a", "a"]}))[:, 0]
    if low is not None:
        assert x.tolist() == pytest.approx([low, high])
    else:  # robust: centred on the median, scaled by the IQR
        present = train["num"].dropna()
        iqr = present.quantile(0.75) - present.quantile(0.25)
        assert x.tolist() == pytest.approx([(1 - present.median()) / iqr, (10 - present.median()) / iqr])


def test_onehot_with_unknown_bucket_and_missing_category(train):
    transform = fitted(train, categorical="onehot", categorical_impute="constant")
    names = transform.feature_names
    assert names[0] == "num" and "cat=__unknown__" in names and "cat=__missing__" in names
    x = transform.features(pd.DataFrame({"num": [1.0, 1.0, 1.0], "cat": ["b", "never-seen", None]}))
    onehot = x[:, 1:]
    assert onehot.sum(axis=1).tolist() == [1, 1, 1]
    assert onehot[0, names.index("cat=b") - 1] == 1
    assert onehot[1, names.index("cat=__unknown__") - 1] == 1
    assert onehot[2, names.index("cat=__missing__") - 1] == 1


def test_index_encoding(train):
    transform = fitted(train, categorical="index", categorical_impute="most_frequent")
    x = transform.features(pd.DataFrame({"num": [1.0] * 3, "cat": ["a", "zzz", None]}))
    assert x[:, 1].tolist() == [1.0, 0.0, 1.0]  # 'a' is the most frequent: code 1 and the fill; unknown is 0


def test_max_categories_sends_rare_values_to_unknown(train):
    transform = fitted(train, max_categories=1, categorical_impute="most_frequent")
    assert transform.state["categorical"][0]["categories"] == ["a"]


def test_drop_columns_above_null_fraction():
    train = pd.DataFrame({"mostly_null": [None, None, None, 1.0], "ok": [1.0, 2, 3, 4], "y": [0, 1, 0, 1] * 1})
    train = pd.concat([train] * 2, ignore_index=True)
    transform = fitted(train, missing="drop_columns", max_null_fraction=0.5)
    assert transform.state["dropped_columns"] == ["mostly_null"]
    assert transform.feature_names == ["ok"]
    # predict-time input may still carry the dropped column, or lack it
    assert transform.features(pd.DataFrame({"ok": [1.0]})).shape == (1, 1)


def test_drop_rows_fits_on_complete_rows_only(train):
    transform = fitted(train, missing="drop_rows", scaler="none", numeric_impute="mean")
    complete = train.dropna()
    assert transform.state["numeric"][0]["fill"] == pytest.approx(complete["num"].mean())


def test_missing_feature_column_and_text_in_numeric_at_predict(train):
    transform = fitted(train)
    with pytest.raises(DataError, match="rows.csv lacks the feature column\\(s\\) 'cat'"):
        transform.features(pd.DataFrame({"num": [1.0]}), "rows.csv")
    with pytest.raises(DataError, match="column 'num' in rows.csv must be numeric but data row 2 has 'x'"):
        transform.features(pd.DataFrame({"num": ["1", "x"], "cat": ["a", "a"]}), "rows.csv")


def test_label_encoding_round_trip(train):
    transform = fitted(train)
    assert transform.encode_target(pd.Series(["q", "p"])).tolist() == [1, 0]
    labels, probabilities = transform.decode_predictions(np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32))
    assert labels == ["q", "p"] and probabilities.shape == (2, 2)
    with pytest.raises(DataError, match="'r', which is not among the training classes"):
        transform.encode_target(pd.Series(["r"]))


def test_regression_target_scaling():
    train = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0) * 100 + 5})
    _, schema = validate_table(train, DataConfig(target="y", task="regression"), "t")
    transform = TabularTransform(tabular.fit(train, schema, TabularConfig()))
    scaled = transform.encode_target(train["y"])
    assert scaled.mean() == pytest.approx(0, abs=1e-6) and scaled.std() == pytest.approx(1, abs=1e-5)
    assert transform.n_outputs == 1


def test_a_target_whose_squared_error_overflows_float32_is_refused_unless_scaled():
    train = pd.DataFrame({"x": np.arange(6.0), "y": [1e20, 2e20, 3e20, 1.0, 2.0, 3.0]})
    _, schema = validate_table(train, DataConfig(target="y", task="regression"), "t")
    unscaled = TabularTransform(tabular.fit(train, schema, TabularConfig(scale_target=False)))
    assert unscaled.target.mean == 0.0 and unscaled.target.std == 1.0
    with pytest.raises(DataError, match=r"target 'y' has 3 value\(s\) whose squared error overflows float32 "
                                        r"unscaled .* \(first: 1e\+20 at data row 1\); keep preprocess.scale_target on"):
        unscaled.encode_target(train["y"])
    scaled = TabularTransform(tabular.fit(train, schema, TabularConfig()))  # the default: standardised, trainable
    assert np.isfinite(scaled.encode_target(train["y"]) ** 2).all()


def test_the_target_is_typed_and_its_state_is_plain_data(train):
    transform = fitted(train)
    assert transform.target == Target("y", "classification", ("p", "q"))
    assert Target.from_state(json.loads(json.dumps(transform.target.to_state()))) == transform.target
    assert transform.state["target"] == {"name": "y", "task": "classification", "classes": ["p", "q"], "mean": 0.0,
                                         "std": 1.0}  # the saved form of model files written before the type


def test_features_are_float32_and_vectorised():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(size=50_000), "c": rng.choice(list("abcdef"), 50_000),
                          "y": rng.integers(0, 2, 50_000)})
    transform = fitted(train)
    x = transform.features(train)
    assert x.dtype == np.float32 and x.shape == (50_000, 1 + 6 + 1)
