import numpy as np
import pandas as pd
import pytest

from preprocessing.config import DataConfig
from preprocessing.errors import DataError
from preprocessing.validate import validate_table


def frame(**columns):
    return pd.DataFrame(columns)


def test_roles_and_task(wine_frame):
    rows, schema = validate_table(wine_frame.assign(color=["red"] * len(wine_frame)), DataConfig(), "wine")
    assert schema.task == "classification"
    assert schema.classes == ["class_0", "class_1", "class_2"]
    assert schema.categorical == ["color"]
    assert len(schema.numeric) == 13 and len(rows) == 178


@pytest.mark.parametrize("target,task", [
    ([0.5, 1.7, 2.2, 3.1, 4.0, 5.5], "regression"),
    ([0, 1, 0, 1, 0, 1], "classification"),
    (["a", "b", "a", "b", "a", "b"], "classification"),
    ([True, False, True, False, True, False], "classification"),
])
def test_task_auto(target, task):
    _, schema = validate_table(frame(x=range(6), target=target), DataConfig(), "f.csv")
    assert schema.task == task


def test_target_absent_lists_columns():
    with pytest.raises(DataError, match=r"target column 'species' not found in f.csv.*columns are: 'a', 'b'"):
        validate_table(frame(a=[1], b=[2]), DataConfig(target="species"), "f.csv")


def test_target_all_null():
    with pytest.raises(DataError, match="target column 'y' in f.csv has no values: all 3 rows are null"):
        validate_table(frame(a=[1, 2, 3], y=[None, None, None]), DataConfig(target="y"), "f.csv")


def test_null_targets_dropped_with_note():
    rows, schema = validate_table(frame(a=range(7), y=[1, 2, None, 3, 4, 5, 6.5]), DataConfig(target="y"), "f")
    assert len(rows) == 6 and "dropped 1 rows" in schema.notes[0]


def test_class_with_one_row():
    with pytest.raises(DataError, match="class 'rare' of target 'y' in f.csv has only 1 row"):
        validate_table(frame(a=range(7), y=["c"] * 6 + ["rare"]), DataConfig(target="y"), "f.csv")


def test_single_class():
    with pytest.raises(DataError, match="single class"):
        validate_table(frame(a=range(4), y=["c"] * 4), DataConfig(target="y", task="classification"), "f.csv")


def test_numeric_column_with_text_names_column_row_and_value():
    ages = [str(v) for v in range(20)]
    ages[13] = "n/a?"
    with pytest.raises(DataError, match=r"column 'age' in f.csv holds numbers \(95% of values\) but data row 14 "
                                        r"has the text 'n/a\?'"):
        validate_table(frame(age=ages, y=[0, 1] * 10), DataConfig(target="y"), "f.csv")


def test_a_column_of_numbers_and_words_is_categorical_with_a_warning_showing_words():
    sizes = ["10", "12", "small", "14", None, "large", "16", "xl", "9", "11"]
    _, schema = validate_table(frame(size=sizes, kind=list("abababab") + ["a", "b"], y=[0, 1] * 5),
                               DataConfig(target="y"), "f.csv")
    assert schema.categorical == ["size", "kind"]
    (note,) = schema.notes
    assert note.startswith("column 'size' in f.csv mixes numbers (67% of values) and words (e.g. 'small' (data row 3), "
                           "'large' (data row 6), 'xl' (data row 8))")


def test_all_features_null():
    with pytest.raises(DataError, match="all feature columns in f.csv are empty"):
        validate_table(frame(a=[None] * 4, b=[np.nan] * 4, y=[1.0, 2, 3, 4]), DataConfig(target="y"), "f.csv")


def test_empty_feature_column_is_dropped_with_note():
    data = frame(a=[None] * 4, b=[1, 2, 3, 4], y=[1.0, 2, 3, 4])
    _, schema = validate_table(data, DataConfig(target="y", task="regression"), "f")
    assert schema.numeric == ["b"] and "'a'" in schema.notes[0]


def test_infinite_values():
    with pytest.raises(DataError, match=r"column 'x' in f.csv has infinite values \(first at data row 2: inf\)"):
        validate_table(frame(x=[1.0, np.inf, 2.0, 3.0], y=[1.0, 2, 3, 4]), DataConfig(target="y"), "f.csv")


def test_dates_are_rejected_by_name():
    dates = pd.to_datetime(["2024-01-01"] * 4)
    with pytest.raises(DataError, match="column 'when' in f.csv holds dates"):
        validate_table(frame(when=dates, y=[1.0, 2, 3, 4]), DataConfig(target="y"), "f.csv")


def test_regression_target_must_be_numeric():
    with pytest.raises(DataError, match="must be numeric for regression but data row 2 has 'oops'"):
        validate_table(frame(x=[1, 2, 3], y=["1", "oops", "3"]), DataConfig(target="y", task="regression"), "f")


def test_features_and_ignore():
    data = frame(id=range(6), a=range(6), b=range(6), y=[0, 1] * 3)
    _, schema = validate_table(data, DataConfig(target="y", ignore=["id"]), "f")
    assert schema.numeric == ["a", "b"]
    _, schema = validate_table(data, DataConfig(target="y", features=["b"]), "f")
    assert schema.numeric == ["b"]
    with pytest.raises(DataError, match="feature column\\(s\\) 'zz' not found"):
        validate_table(data, DataConfig(target="y", features=["zz"]), "f")
