"""Records the steps hand to each other: small, JSON-friendly, holding paths to the data on disk. Plain data in
the core, so the data-type modules (preprocessing/kinds/) and the tasks share one typed contract."""
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Snapshot:
    path: Path
    source: str
    fingerprint: str
    n_rows: int
    memory_budget_mb: int | None = None  # set: the table is streamed in record batches, never read whole


@dataclass
class Validated:
    path: Path
    schema: dict
    cache: Path | None = None  # images: the decoded uint8 cache, rows referenced by the 'cache_row' column
    data_type: str = "tabular"
    memory_budget_mb: int | None = None


@dataclass
class Splits:
    path: Path  # .npz of row positions per split
    sizes: dict


@dataclass
class Prepared:
    arrays: Path  # .npz: {train,val,test}_targets, and _features (tables) or _rows into the cache (images);
    # for a streamed table, a folder of {split}_features.npy / _targets.npy and stream.json
    state_path: Path  # preprocessing state (JSON)
    test_frame: Path  # raw test rows
    cache: Path | None = None


@dataclass
class Trained:
    network: Path
    epochs: int
    device: str


@dataclass
class Exported:
    bundle: Path
    model_uri: str
    max_abs_diff: float
