"""Optuna pruning as a training callback: each epoch's validation metric goes to the trial, and when the study's
pruner says the trial is hopeless the trainer stops after that epoch, as early stopping would.

Stopping rather than raising optuna.TrialPruned keeps the train task's ending the same for every trial (weights
restored, network saved, MLflow metrics flushed); the sweep then records the trial as pruned. The last epoch is
reported but never pruned. The trial is passed in, so this module imports nothing from Optuna.
"""
from training.callbacks import Callback


class OptunaPruning(Callback):
    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, trainer, metrics):
        if self.monitor not in metrics:
            raise ValueError(f"sweep.prune_metric '{self.monitor}' is not an epoch metric; available: "
                             f"{', '.join(sorted(k for k in metrics if k != 'epoch'))}")
        self.trial.report(float(metrics[self.monitor]), metrics["epoch"])
        if metrics["epoch"] >= trainer.max_epochs:
            return  # the trial is trained: pruning it now would save nothing and lose its evaluation
        if self.trial.should_prune():
            self.pruned_epoch = metrics["epoch"]
            trainer.should_stop = True
