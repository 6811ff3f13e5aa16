"""Checks a table against the configuration before anything is trained, and decides the column roles.

Each problem is a DataError naming the source, the column, a row and what was expected.
"""
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from preprocessing.config import DataConfig
from preprocessing.errors import DataError

MAX_CLASSES_FOR_INTEGER_TARGET = 20
MIN_ROWS_PER_CLASS = 3  # one row each for train, val and test
NUMERIC_TEXT_THRESHOLD = 0.9  # a text column this much parseable as numbers is a numeric column with typos
MIXED_NOTE_THRESHOLD = 0.2  # from here up to the above, a text column of numbers and words gets a warning


@dataclass
class TableSchema:
    """What validation decided: column roles, task and classes. Plain values only, so it serialises to JSON."""

    target: str
    task: str
    numeric: list[str]
    categorical: list[str]
    classes: list = field(default_factory=list)
    n_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TableSchema":
        return cls(**data)


def validate_table(frame: pd.DataFrame, config: DataConfig, name: str) -> tuple[pd.DataFrame, TableSchema]:
    """Return the rows usable for training (null targets dropped) and the schema, or raise DataError."""
    notes: list[str] = []
    target = check_target(frame.columns, config, name)
    frame = drop_null_targets(frame, target, name, notes)
    numeric, categorical = _feature_roles(frame, config, target, name, notes)
    frame, task, classes = target_task(frame, target, config.task, name)
    if task == "regression" and len(frame) < MIN_ROWS_PER_CLASS:
        raise DataError(f"{name} has {len(frame)} rows with a target; a train/val/test split needs at least 3")
    return frame, TableSchema(target, task, numeric, categorical, classes, len(frame), notes)


def check_target(columns, config: DataConfig, name: str) -> str:
    """The target column's name; DataError listing the columns when the table lacks it."""
    target = config.target_column()
    if target not in columns:
        hint = "" if config.target else " (no target given; pass --target NAME)"
        raise DataError(f"target column '{target}' not found in {name}{hint}; columns are: {quoted(columns)}")
    return target


def drop_null_targets(frame: pd.DataFrame, target: str, name: str, notes: list[str]) -> pd.DataFrame:
    """The rows with a target (dropped rows counted in `notes`); DataError when no row has one."""
    null_target = frame[target].isna()
    if null_target.all():
        raise DataError(f"target column '{target}' in {name} has no values: all {len(frame)} rows are null")
    if null_target.any():
        notes.append(f"dropped {int(null_target.sum())} rows whose target '{target}' is null")
        frame = frame.loc[~null_target].reset_index(drop=True)
    return frame


def target_task(frame: pd.DataFrame, target: str, requested: str, name: str) -> tuple[pd.DataFrame, str, list]:
    """The task (classification/regression), and the classes (checked) or the target made numeric (checked)."""
    task = decide_task(frame[target], requested)
    if task == "classification":
        return frame, task, check_classes(frame[target], target, name)
    return frame.assign(**{target: numeric_target(frame[target], target, name)}), task, []


def quoted(columns) -> str:
    return ", ".join(f"'{c}'" for c in columns)


def feature_candidates(columns, config: DataConfig, target: str, name: str) -> list[str]:
    """The configured feature columns (all but the target and data.ignore by default), checked to exist."""
    columns = list(columns)
    if config.features is not None:
        missing = [c for c in config.features if c not in columns]
        if missing:
            raise DataError(f"feature column(s) {quoted(missing)} not found in {name}; columns are: {quoted(columns)}")
        candidates = [c for c in config.features if c != target]
    else:
        candidates = [c for c in columns if c != target and c not in set(config.ignore)]
    if not candidates:
        raise DataError(f"{name} has no feature columns besides the target '{target}'")
    return candidates


def usable_features(candidates: list[str], empty: list[str], name: str, notes: list[str]) -> list[str]:
    """The candidates that have at least one value; the all-null ones are noted, or an error if that is all."""
    if len(empty) == len(candidates):
        raise DataError(f"all feature columns in {name} are empty: every value of {quoted(candidates)} is null")
    if empty:
        notes.append(f"dropped feature column(s) {quoted(empty)}: every value is null")
    return [c for c in candidates if c not in empty]


def _feature_roles(frame, config, target, name, notes) -> tuple[list[str], list[str]]:
    candidates = feature_candidates(frame.columns, config, target, name)
    usable = usable_features(candidates, [c for c in candidates if frame[c].isna().all()], name, notes)
    numeric, categorical = [], []
    for column in usable:
        (numeric if is_numeric_feature(frame[column], column, name, notes=notes) else categorical).append(column)
    return numeric, categorical


def is_numeric_feature(values: pd.Series, column: str, name: str, first_row: int = 0,
                       notes: list[str] | None = None) -> bool:
    """Numbers and booleans are numeric, text is categorical; infinities, dates and numbers with a few typos
    are errors naming the data row (`first_row`: rows before these values, for record batches). A text column
    of numbers and words is categorical, with a warning in `notes` showing some words."""
    if pd.api.types.is_bool_dtype(values):
        return True
    if pd.api.types.is_numeric_dtype(values):
        infinite = np.isinf(values.to_numpy(dtype="float64", na_value=np.nan))
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise DataError(f"column '{column}' in {name} has infinite values (first at data row "
                            f"{first_row + row + 1}: {values.iloc[row]}); expected finite numbers or empty cells")
        return True
    if pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.PeriodDtype):
        raise DataError(f"column '{column}' in {name} holds dates ({values.dtype}); features must be numbers, "
                        "booleans or text: convert it or list it under data.ignore")
    present = values.dropna()
    parsed = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
    share = parsed.notna().mean()
    if share >= NUMERIC_TEXT_THRESHOLD and share < 1.0:
        bad = parsed.isna().to_numpy()
        position = int(np.flatnonzero(bad)[0])
        row = int(values.index.get_loc(present.index[position]))
        raise DataError(f"column '{column}' in {name} holds numbers ({share:.0%} of values) but data row "
                        f"{first_row + row + 1} has the text {present.iloc[position]!r}; fix the value, leave the "
                        "cell empty, or list the column under data.ignore")
    if notes is not None and share >= MIXED_NOTE_THRESHOLD:
        words = present[parsed.isna().to_numpy()]
        shown = ", ".join(f"{v!r} (data row {first_row + int(values.index.get_loc(i)) + 1})"
                          for i, v in words.head(3).items())
        notes.append(f"column '{column}' in {name} mixes numbers ({share:.0%} of values) and words (e.g. {shown}): "
                     "it is used as categorical, every distinct number a category of its own; clean it or list it "
                     "under data.ignore if it should be numeric")
    return False


def decide_task(target: pd.Series, requested: str) -> str:
    if requested != "auto":
        return requested
    if pd.api.types.is_bool_dtype(target) or not pd.api.types.is_numeric_dtype(target):
        return "classification"
    values = target.to_numpy(dtype="float64")
    integral = np.all(np.mod(values, 1) == 0)
    return "classification" if integral and target.nunique() <= MAX_CLASSES_FOR_INTEGER_TARGET else "regression"


def check_classes(target: pd.Series, column: str, name: str) -> list:
    return check_class_counts(target.value_counts(), column, name)


def check_class_counts(counts: pd.Series, column: str, name: str) -> list:
    """The sorted classes, given the row count of each; DataError for a single class or a class too small to
    split."""
    counts = counts.sort_values(ascending=False, kind="stable")
    if len(counts) < 2:
        raise DataError(f"target '{column}' in {name} has a single class {sorted_classes(counts.index)[0]!r}; "
                        "classification needs at least two")
    small = counts[counts < MIN_ROWS_PER_CLASS]
    if len(small):
        label, count = sorted_classes(small.index[:1])[0], int(small.iloc[0])
        raise DataError(f"class {label!r} of target '{column}' in {name} has only {count} row(s); a stratified "
                        f"train/val/test split needs at least {MIN_ROWS_PER_CLASS} rows per class")
    return sorted_classes(counts.index)


def sorted_classes(values) -> list:
    """Class labels as plain Python values in a stable order (numeric order for numbers, else text order)."""
    plain = [v.item() if hasattr(v, "item") else v for v in values]
    try:
        return sorted(plain)
    except TypeError:
        return sorted(plain, key=str)


def numeric_target(target: pd.Series, column: str, name: str, first_row: int = 0) -> pd.Series:
    """The target as float64; DataError naming the data row (`first_row` + the row's index label, so a batch
    keeps the numbering of its file) of a value that is not a finite number."""
    parsed = pd.to_numeric(target, errors="coerce")
    values = parsed.to_numpy(dtype="float64", na_value=np.nan)
    for bad, problem in ((np.isnan(values), "must be numeric for regression but data row {row} has {value!r}"),
                         (np.isinf(values), "has an infinite value at data row {row}")):
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            row = first_row + int(target.index[position]) + 1
            raise DataError(f"target '{column}' in {name} " + problem.format(row=row, value=target.iloc[position]))
    return parsed.astype("float64")
