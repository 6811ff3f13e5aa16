"""Search spaces and Optuna studies for sweep-flow.

A search space names config fields by their dotted path and gives each a dimension: a float or int range (log
scale, step) or a list of choices. The study is Optuna's: its sampler proposes each trial's values, its pruner
stops hopeless trials from their per-epoch validation metric, and its storage outlives the flow run, so that a
rerun of the same sweep continues the study and concurrent trials (threads, Dask workers) share it.

Optuna is imported inside the functions that use it: importing this module (and sweep-flow's config) costs
nothing.
"""
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

SAMPLERS = ("tpe", "random", "grid", "cmaes")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
SQLITE_TIMEOUT_S = 60  # a writer waits this long for another's lock instead of failing at once (default 5 s)
_PLAIN = (str, int, float, bool, type(None))  # what Optuna stores as a categorical choice


class _Range(BaseModel):
    """What the float and int ranges share: the checks, Optuna's distribution, the ends, the decoding."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid(self):
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        if self.log and self.step not in (None, 1):
            raise ValueError("a log scale takes no step")
        return self

    def distribution(self):
        from optuna.distributions import FloatDistribution, IntDistribution

        kind = FloatDistribution if self.type == "float" else IntDistribution
        return kind(self.low, self.high, log=self.log, step=self.step)

    def edges(self) -> list:
        return [self.low, self.high]

    def decode(self, value):
        return float(value) if self.type == "float" else int(value)


class FloatRange(_Range):
    """{type: float, low, high, log: true}: a real number in [low, high], on a log scale when log is set."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0, description="Discretisation step (not with log).")

    def grid(self) -> list:
        if self.step is None:
            raise ValueError("a float range without a step has no grid; give step, choices, or another sampler")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [self.low + i * self.step for i in range(count)]


class IntRange(_Range):
    """{type: int, low, high, step}: an integer in [low, high] (both included), every `step`."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    def grid(self) -> list:
        return list(range(self.low, self.high + 1, self.step))


class Choice(BaseModel):
    """{type: categorical, choices: [...]}, or the plain list form [a, b, c]."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    def _encoded(self) -> list:
        # Optuna stores only None, bool, int, float and str; other values (lists such as conv_channels, mappings)
        # travel as their JSON text and are decoded when the trial's config is built.
        return [c if isinstance(c, _PLAIN) else json.dumps(c, sort_keys=True) for c in self.choices]

    def distribution(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self._encoded())

    def grid(self) -> list:
        return self._encoded()

    def edges(self) -> list:
        return list(self.choices)

    def decode(self, value):
        return dict(zip(self._encoded(), self.choices)).get(value, value) if isinstance(value, str) else value


Dimension = Annotated[Union[FloatRange, IntRange, Choice], Field(discriminator="type")]


def parse_space(parameters: dict[str, Any]) -> dict[str, FloatRange | IntRange | Choice]:
    """The dimensions of a search space as given in config: a list is a categorical dimension (the old grid
    form), a mapping is read by its `type`. Only model.* and train.* fields: the data is prepared once."""
    if not parameters:
        raise ValueError("sweep.parameters is empty; give at least one field and its values or range")
    space = {}
    for name, spec in parameters.items():
        if not name.startswith(("model.", "train.")):
            raise ValueError(f"sweep parameter '{name}': only model.* and train.* fields can be swept")
        if isinstance(spec, (FloatRange, IntRange, Choice)):
            space[name] = spec
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"sweep parameter '{name}' has no values")
            space[name] = Choice(type="categorical", choices=list(spec))
        elif isinstance(spec, dict):
            kind = spec.get("type")
            model = {"float": FloatRange, "int": IntRange, "categorical": Choice}.get(kind)
            if model is None:
                raise ValueError(f"sweep parameter '{name}': type must be float, int or categorical (got {kind!r})")
            try:
                space[name] = model(**spec)
            except ValueError as exc:
                raise ValueError(f"sweep parameter '{name}': {exc}") from None
        else:
            raise ValueError(f"sweep parameter '{name}': give a list of values or a mapping with a type")
    return space


def distributions(space: dict) -> dict:
    """Optuna distributions by parameter name, for Study.ask(fixed_distributions=...)."""
    return {name: dimension.distribution() for name, dimension in space.items()}


def decode(space: dict, params: dict) -> dict:
    """A trial's Optuna parameters as config values."""
    return {name: space[name].decode(value) for name, value in params.items()}


def all_categorical(space: dict) -> bool:
    return all(isinstance(dimension, Choice) for dimension in space.values())


def grid_size(space: dict) -> int:
    return math.prod(len(dimension.grid()) for dimension in space.values())


def epoch_metric_for(metric: str) -> str:
    """The per-epoch validation metric that stands for a sweep metric while a trial trains: best_val_loss ->
    val_loss, test_accuracy -> val_accuracy, test_mae -> val_mae."""
    name = metric.removeprefix("best_")
    for prefix in ("test_", "val_"):
        if name.startswith(prefix):
            return "val_" + name[len(prefix):]
    return "val_loss"


def study_name_for(experiment: str, config_hash: str, space: dict, metric: str) -> str:
    """Same experiment, base config, space and metric: same study, whatever n_trials, sampler or runner."""
    described = json.dumps({"config": config_hash, "metric": metric,
                            "space": {k: v.model_dump(mode="json") for k, v in sorted(space.items())}},
                           sort_keys=True, default=str)
    return f"{experiment}-sweep-{hashlib.sha256(described.encode()).hexdigest()[:10]}"


def default_storage(study_name: str, store_folder: Path) -> str:
    """A journal file per study in the 'optuna' folder beside the MLflow store."""
    safe = re.sub(r"[^\w.-]+", "_", study_name)
    return f"journal:///{(Path(store_folder) / 'optuna' / f'{safe}.journal').resolve().as_posix().lstrip('/')}"


def open_storage(url: str):
    """Optuna storage for a URL: an RDB (sqlite:///, postgresql://, mysql://...) or a journal file
    (journal:///path, or a plain path). Journal files are locked by open(O_EXCL) lock files, which work across
    processes and machines on a shared file system (NFS) too."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    scheme = urlparse(url).scheme.split("+")[0]
    if scheme in RDB_SCHEMES:
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if scheme == "sqlite" else {"pool_pre_ping": True}
        if scheme == "sqlite":
            Path(urlparse(url).path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    if scheme not in ("journal", "", "file"):
        raise ValueError(f"sweep.storage {url}: give an RDB URL (sqlite:///, postgresql://, mysql://) or a journal "
                         "file (journal:///path/study.journal or a path)")
    path = Path(urlparse(url).path if scheme else url).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


@dataclass(frozen=True)
class StudySpec:
    """Everything a trial needs to reopen the study where it runs (a thread here, or a Dask worker): plain values,
    so that it pickles; the storage URL must reach the same study from there."""

    storage: str
    study_name: str
    direction: Literal["minimize", "maximize"]
    pruner: str = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 1
    max_epochs: int | None = None  # hyperband's largest budget; None: found from the trials

    def make_pruner(self):
        import optuna

        if self.pruner == "median":
            # Optuna skips pruning while step < n_warmup_steps; steps are epochs counted from 1
            return optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup_trials,
                                               n_warmup_steps=self.pruner_warmup_epochs + 1)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=max(1, self.pruner_warmup_epochs),
                                                  max_resource=self.max_epochs or "auto")
        return optuna.pruners.NopPruner()

    def create(self):
        """The study, created on first use, else loaded (its trials go on). The sampler is set by the caller."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what Optuna's would
        study = optuna.create_study(storage=open_storage(self.storage), study_name=self.study_name,
                                    direction=self.direction, load_if_exists=True,
                                    sampler=optuna.samplers.RandomSampler(), pruner=self.make_pruner())
        if study.direction.name.lower() != self.direction:
            raise ValueError(f"study {self.study_name} in {self.storage} was created to "
                             f"{study.direction.name.lower()}, this sweep's metric asks to {self.direction}; "
                             "give another sweep.study_name")
        return study

    def trial(self, trial_id: int):
        """The running trial `trial_id`, reopened from the storage to report to and tell. Loaded with a random
        sampler: the trial's values were fixed when it was asked for, and a model-based or grid sampler would
        work (or write grid ids) for nothing here."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage),
                                  sampler=optuna.samplers.RandomSampler(), pruner=self.make_pruner())
        return optuna.trial.Trial(study, trial_id)


def make_sampler(name: str, space: dict, seed: int, startup_trials: int):
    """Optuna's sampler by name, seeded. Pass a seed that moves on with the study (seed + trials so far): the
    same seed in a continued study would draw the first run's random start-up values again."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({k: v.grid() for k, v in space.items()}, seed=seed)
    if name == "cmaes":  # categorical dimensions go to its independent (random) sampler
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials,
                                            warn_independent_sampling=False)
    raise ValueError(f"sweep.sampler must be one of {', '.join(SAMPLERS)} (got {name!r})")


def unvisited_grid_points(study, space: dict) -> int:
    """Grid points of `space` no trial of the study has taken yet (finished or running)."""
    taken = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False)
             if "grid_id" in t.system_attrs}
    return max(0, grid_size(space) - len(taken))


def plot_study(study, folder: Path, n_params: int) -> tuple[list[Path], list[str]]:
    """Optuna's optimization history, intermediate values (the pruned curves), parameter importances (two
    parameters or more, four finished trials or more) and parallel coordinates, as PNG files. A plot that
    cannot be drawn is skipped with the reason: plots never fail a sweep."""
    import warnings

    from training.evaluation import pyplot

    plt = pyplot()  # the Agg backend before optuna's plots import pyplot
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    wanted = {"optimization_history": plots.plot_optimization_history,
              "intermediate_values": plots.plot_intermediate_values}
    if complete >= 2:
        wanted["parallel_coordinate"] = plots.plot_parallel_coordinate
    if n_params >= 2 and complete >= 4:
        wanted["param_importances"] = plots.plot_param_importances
    folder.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for name, plot in wanted.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
                axes = plot(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(max(8, figure.get_figwidth()), max(5, figure.get_figheight()))
            path = folder / f"{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot is a nice-to-have
            skipped.append(f"{name}: {type(exc).__name__}: {exc}")
    return written, skipped
