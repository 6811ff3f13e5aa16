"""Test-split metrics with scikit-learn's metrics, and the plots that go with them.

scikit-learn, not torchmetrics: torchmetrics 1.9 imports torchvision and transformers whenever they are installed
(about 2 s of every run, for a table too; issue 18), while scikit-learn is loaded anyway for the baseline. The
definitions are torchmetrics' (macro F1 over the classes present in the truth or the predictions, a binary
prediction is positive above 0.5), checked by tests on hand-computed numbers. matplotlib loads when a plot is drawn.
"""
import numpy as np
import torch


def test_metrics(task: str, served: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Metrics from what the served model returns: probabilities [N, C] or values [N, 1], on the original scale.

    Names are stable across datasets: test_accuracy, test_f1, test_auroc / test_mse, test_mae, test_r2. test_auroc
    is NaN when the test split holds one class only (it is not defined then)."""
    from sklearn import metrics

    if task == "regression":
        values = served.reshape(-1).double().numpy()
        truth = targets.double().numpy()
        return {"test_mse": float(metrics.mean_squared_error(truth, values)),
                "test_mae": float(metrics.mean_absolute_error(truth, values)),
                "test_r2": float(metrics.r2_score(truth, values))}
    scores = served.double().numpy()
    truth = targets.numpy().astype(np.int64)
    binary = scores.shape[1] == 2
    predicted = (scores[:, 1] > 0.5).astype(np.int64) if binary else scores.argmax(axis=1)
    out = {"test_accuracy": float(metrics.accuracy_score(truth, predicted)),
           "test_f1": float(metrics.f1_score(truth, predicted, average="binary" if binary else "macro",
                                             zero_division=0))}
    if binary:
        both = len(np.unique(truth)) == 2
        out["test_auroc"] = float(metrics.roc_auc_score(truth, scores[:, 1])) if both else float("nan")
    return out


def confusion_matrix(served: torch.Tensor, targets: torch.Tensor, shown: np.ndarray | None = None) -> np.ndarray:
    """Counts [true class, predicted class] over all the model's classes, or over the classes `shown` only (rows
    whose true or predicted class is not shown are left out)."""
    n = int(served.shape[1])
    shown = np.arange(n) if shown is None else shown
    predicted = served.argmax(dim=1).numpy().astype(np.int64)
    truth = targets.numpy().astype(np.int64)
    position = np.full(n, -1, dtype=np.int64)
    position[shown] = np.arange(len(shown))
    keep = (position[truth] >= 0) & (position[predicted] >= 0)
    k = len(shown)
    return np.bincount(position[truth[keep]] * k + position[predicted[keep]], minlength=k * k).reshape(k, k)


PLOT_CLASSES = 30  # a confusion matrix plot shows at most this many classes (the most frequent in the test split)
LABELLED_CLASSES = 20  # counts written in the cells up to this many classes
CSV_CLASSES = 200  # the whole matrix is also written as CSV up to this many classes (200 x 200 cells)


def confusion_artifacts(served: torch.Tensor, targets: torch.Tensor, classes: list, png, csv=None) -> dict:
    """The confusion matrix of the test split as a plot (`png`) and, for at most CSV_CLASSES classes, a CSV of the
    whole matrix (`csv`). Above PLOT_CLASSES classes the plot shows the PLOT_CLASSES most frequent true classes
    (and says so in its title), so its size and drawing time are bounded whatever the class count; the counts
    are computed with bincount over those classes only (a full matrix of 10,000 classes would be 800 MB).
    Returns what was drawn: classes, classes_plotted, csv (written or not)."""
    n = int(served.shape[1])
    if n <= PLOT_CLASSES:
        shown = np.arange(n)
        title = "confusion matrix (test split)"
    else:  # most frequent first, ties by class order
        support = np.bincount(targets.numpy().astype(np.int64), minlength=n)
        shown = np.sort(np.argsort(-support, kind="stable")[:PLOT_CLASSES])
        title = f"confusion matrix (test split): the {PLOT_CLASSES} most frequent of {n} classes"
    matrix = confusion_matrix(served, targets, shown)
    plot_confusion_matrix(matrix, [classes[i] for i in shown], png, title=title)
    written = csv is not None and n <= CSV_CLASSES
    if written:
        import pandas as pd

        labels = [str(c) for c in classes]
        pd.DataFrame(confusion_matrix(served, targets), index=pd.Index(labels, name="true / predicted"),
                     columns=labels).to_csv(csv)
    return {"classes": n, "classes_plotted": len(shown), "csv": written}


MIN_TEST_ROWS_PER_CLASS = 5


def class_count_warning(n_classes: int, n_rows: int) -> str | None:
    """A warning when the test split has too few rows per class for per-class results to mean much, else None."""
    if n_classes <= 2 or n_rows >= MIN_TEST_ROWS_PER_CLASS * n_classes:
        return None
    return (f"{n_classes} classes for {n_rows} test rows ({n_rows / n_classes:.1f} per class on average): per-class "
            "results (macro F1, the confusion matrix) rest on very few rows; merge rare classes or gather more data")


def plot_confusion_matrix(matrix: np.ndarray, classes: list, path, title: str = "confusion matrix (test split)") -> None:
    """Counts in the cells up to LABELLED_CLASSES classes; the figure grows with the classes up to 16 inches."""
    plt = pyplot()
    n = len(classes)
    size = min(16.0, max(4.0, 0.6 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    labels = [_label(c) for c in classes]
    ax.set_xticks(range(n), labels, rotation=45 if n <= LABELLED_CLASSES else 90, ha="right",
                  fontsize=None if n <= LABELLED_CLASSES else 7)
    ax.set_yticks(range(n), labels, fontsize=None if n <= LABELLED_CLASSES else 7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= LABELLED_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label(value, limit: int = 24) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_predicted_vs_true(predicted: np.ndarray, truth: np.ndarray, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(truth, predicted, s=10, alpha=0.6)
    low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="true", ylabel="predicted", title="predicted vs true (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    return plt
