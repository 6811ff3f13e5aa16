import pytest
import torch

from models import build_model
from models.config import ModelConfig
from training.callbacks import Callback, EarlyStopping, ModelCheckpoint
from training.config import SchedulerConfig, TrainerConfig
from training.device import select_device
from training.objectives import ServingModel, make_objective
from training.optim import build_optimizer, build_scheduler
from training.data import TensorData
from training.trainer import Trainer


def blobs(n=300, seed=0):
    """Three separable Gaussian blobs: a problem any working trainer learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[3.0, 0], [-3, 0], [0, 3]])
    return TensorData(centres[y] + torch.randn(n, 2, generator=g), y, batch_size=32)


def make_trainer(n_epochs=5, callbacks=(), scheduler=SchedulerConfig(name="plateau"), lr=0.01, seed=0):
    torch.manual_seed(seed)
    objective = make_objective("classification", 3)
    model = build_model(ModelConfig(type="mlp", n_layers=3, hidden_size=16, dropout=0.1), 2, objective.output_size)
    optimizer = build_optimizer(model.parameters(), TrainerConfig(lr=lr))
    return Trainer(model, objective, optimizer, build_scheduler(optimizer, scheduler, n_epochs, "min"),
                   max_epochs=n_epochs, device=torch.device("cpu"), seed=seed,
                   callbacks=list(callbacks), progress_bar=False)


def test_learns_and_reports_each_epoch():
    trainer = make_trainer(n_epochs=8)
    history = trainer.fit(blobs(), blobs(seed=1))
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.9
    assert set(history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr"}


def lrs(scheduler: SchedulerConfig, n_epochs=6):
    trainer = make_trainer(n_epochs=n_epochs, scheduler=scheduler, lr=1.0)
    return [h["lr"] for h in trainer.fit(blobs(60), blobs(30, 1))]


def test_schedulers_change_the_learning_rate_per_epoch():
    assert lrs(SchedulerConfig(name="StepLR", step_size=2, gamma=0.5)) == pytest.approx([1, 1, .5, .5, .25, .25])
    assert lrs(SchedulerConfig(name="MultiStepLR", milestones=[1, 4], gamma=0.1)) == pytest.approx(
        [1, .1, .1, .1, .01, .01])
    assert lrs(SchedulerConfig(name="ExponentialLR", gamma=0.5))[:3] == pytest.approx([1, .5, .25])
    cosine = lrs(SchedulerConfig(name="CosineAnnealingLR"), n_epochs=4)
    assert cosine[0] == 1 and cosine == sorted(cosine, reverse=True) and cosine[-1] < 0.5
    warm = lrs(SchedulerConfig(name="LambdaLR", warmup_epochs=2, decay="linear", final_factor=0.0), n_epochs=6)
    assert warm[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and warm[3] < warm[2] and warm[-1] < 0.5
    assert lrs(SchedulerConfig(name="none")) == [1.0] * 6


def test_reduce_on_plateau_watches_the_monitor():
    trainer = make_trainer(n_epochs=3, scheduler=SchedulerConfig(name="plateau", patience=0, factor=0.5), lr=1.0)
    trainer.monitor = "lr"  # a monitored value that does not improve until the scheduler acts
    history = trainer.fit(blobs(60), blobs(30, 1))
    assert [h["lr"] for h in history] == [1.0, 1.0, 0.5]


def test_scheduler_names_are_case_insensitive():
    assert SchedulerConfig(name="steplr").name == "StepLR"
    assert SchedulerConfig(name="cosine").name == "CosineAnnealingLR"
    with pytest.raises(ValueError):
        SchedulerConfig(name="OneCycle")


def test_early_stopping_stops_and_restores_best_weights():
    class Worsen(Callback):
        """Reports val_loss getting worse after epoch 2, and remembers the weights at epoch 2."""

        def on_epoch_end(self, trainer, metrics):
            metrics["val_loss"] = float(abs(metrics["epoch"] - 2))
            if metrics["epoch"] == 2:
                self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    worsen = Worsen()
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    trainer = make_trainer(n_epochs=20, callbacks=[worsen, stopper])
    history = trainer.fit(blobs(), blobs(seed=1))
    assert len(history) == 4 and trainer.should_stop and stopper.best_epoch == 2
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, worsen.weights[key]), key


def test_early_stopping_rejects_unknown_monitor():
    trainer = make_trainer(callbacks=[EarlyStopping(monitor="val_f1")])
    with pytest.raises(ValueError, match="'val_f1' is not an epoch metric; available: .*val_accuracy"):
        trainer.fit(blobs(60), blobs(30, 1))


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    class Crash(Callback):
        def on_epoch_end(self, trainer, metrics):
            if metrics["epoch"] == 3:
                raise KeyboardInterrupt("simulated crash after epoch 3")

    uninterrupted = make_trainer(n_epochs=6, callbacks=[EarlyStopping(patience=10)],
                                 scheduler=SchedulerConfig(name="StepLR", step_size=2, gamma=0.5))
    expected = uninterrupted.fit(blobs(), blobs(seed=1))

    def resumable(*extra):
        return make_trainer(n_epochs=6, callbacks=[EarlyStopping(patience=10), ModelCheckpoint(tmp_path), *extra],
                            scheduler=SchedulerConfig(name="StepLR", step_size=2, gamma=0.5))

    with pytest.raises(KeyboardInterrupt):
        resumable(Crash()).fit(blobs(), blobs(seed=1))
    checkpoint = ModelCheckpoint(tmp_path)
    resumed = make_trainer(n_epochs=6, callbacks=[EarlyStopping(patience=10), checkpoint],
                           scheduler=SchedulerConfig(name="StepLR", step_size=2, gamma=0.5))
    history = resumed.fit(blobs(), blobs(seed=1))
    assert checkpoint.resumed_from == 3
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected], rel=1e-6)
    for key, value in resumed.model.state_dict().items():
        assert torch.allclose(value, uninterrupted.model.state_dict()[key], atol=1e-6), key


def test_gpu_id_falls_back_with_a_message():
    device, warning = select_device(-1)
    assert device.type == "cpu" and warning is None
    if not torch.cuda.is_available():
        device, warning = select_device(0)
        assert device.type == "cpu" and "CUDA is not available" in warning


@pytest.mark.parametrize("task,classes,output_size", [("classification", 2, 1), ("classification", 4, 4),
                                                      ("regression", 0, 1)])
def test_objectives_and_serving_head(task, classes, output_size):
    objective = make_objective(task, classes)
    assert objective.output_size == output_size
    net = torch.nn.Linear(3, output_size)
    served = ServingModel(net, objective, target_mean=10.0, target_std=2.0)(torch.randn(5, 3))
    if task == "regression":
        assert served.shape == (5, 1)
    else:
        assert served.shape == (5, classes)
        assert torch.allclose(served.sum(1), torch.ones(5))


def test_task_defaults_are_made_per_task_and_given_values_win():
    classification = TrainerConfig().for_task("multiclass")
    assert (classification.n_epochs, classification.early_stopping.patience) == (100, 10)
    assert classification.scheduler.name == "ReduceLROnPlateau"
    regression = TrainerConfig().resolved(500, task="regression")
    assert (regression.n_epochs, regression.early_stopping.patience) == (200, 30)
    assert (regression.scheduler.name, regression.scheduler.warmup_epochs, regression.scheduler.decay) == (
        "LambdaLR", 5, "cosine")
    given = TrainerConfig(n_epochs=7, scheduler={"name": "StepLR"}, early_stopping={"patience": 2})
    assert given.for_task("regression") == given
    with pytest.raises(ValueError, match="for_task"):
        build_scheduler(None, SchedulerConfig(), 5, "min")


def test_make_trainer_makes_the_task_defaults_for_direct_callers():
    from training.objectives import make_objective
    from training.optim import make_trainer as build

    trainer = build(torch.nn.Linear(3, 1), make_objective("regression", 0), TrainerConfig(), 0,
                    torch.device("cpu"), [])
    assert trainer.max_epochs == 200 and trainer.scheduler.lr_lambdas[0](0) < 1  # warm-up
