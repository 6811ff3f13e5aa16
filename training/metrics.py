"""Which way a metric improves: the one rule behind early stopping, ReduceLROnPlateau, sweeps, promotion and the
baseline margins.

A name improves upwards when one of its underscore-separated words is a score (accuracy, f1, auroc, auc, r2,
precision, recall); every other name (losses, mse, rmse, mae, errors) improves downwards.
"""
_SCORES = frozenset({"accuracy", "acc", "f1", "auroc", "auc", "r2", "precision", "recall"})


def higher_is_better(metric: str) -> bool:
    return any(word in _SCORES for word in metric.lower().split("_"))


def lower_is_better(metric: str) -> bool:
    return not higher_is_better(metric)


def resolve_mode(metric: str, mode: str = "auto") -> str:
    """'min' or 'max': the given mode, or the metric's direction when mode is 'auto'."""
    if mode != "auto":
        return mode
    return "max" if higher_is_better(metric) else "min"


def improvement(new: float, old: float, metric: str) -> float:
    """How much better `new` is than `old` (positive = better), whichever way the metric goes."""
    return old - new if lower_is_better(metric) else new - old
