"""Test-split metrics with torchmetrics, and the plots that go with them."""
import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional import classification as C  # noqa: E402
from torchmetrics.functional import regression as R  # noqa: E402


def test_metrics(task: str, served: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Metrics from what the served model returns: probabilities [N, C] or values [N, 1], on the original scale.

    Names are stable across datasets: test_accuracy, test_f1, test_auroc / test_mse, test_mae, test_r2."""
    if task == "regression":
        values = served.reshape(-1).double()
        truth = targets.double()
        return {"test_mse": R.mean_squared_error(values, truth).item(),
                "test_mae": R.mean_absolute_error(values, truth).item(),
                "test_r2": R.r2_score(values, truth).item()}
    n_classes = served.shape[1]
    if n_classes == 2:
        positive = served[:, 1]
        return {"test_accuracy": C.binary_accuracy(positive, targets).item(),
                "test_f1": C.binary_f1_score(positive, targets).item(),
                "test_auroc": C.binary_auroc(positive, targets).item()}
    return {"test_accuracy": C.multiclass_accuracy(served, targets, num_classes=n_classes, average="micro").item(),
            "test_f1": C.multiclass_f1_score(served, targets, num_classes=n_classes, average="macro").item()}


def confusion_matrix(served: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    n_classes = served.shape[1]
    return C.multiclass_confusion_matrix(served, targets, num_classes=n_classes).numpy()


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
    predicted = served.argmax(dim=1).numpy().astype(np.int64)
    truth = targets.numpy().astype(np.int64)
    support = np.bincount(truth, minlength=n)
    if n <= PLOT_CLASSES:
        shown = np.arange(n)
        title = "confusion matrix (test split)"
    else:  # most frequent first, ties by class order
        shown = np.sort(np.argsort(-support, kind="stable")[:PLOT_CLASSES])
        title = f"confusion matrix (test split): the {PLOT_CLASSES} most frequent of {n} classes"
    position = np.full(n, -1, dtype=np.int64)
    position[shown] = np.arange(len(shown))
    keep = (position[truth] >= 0) & (position[predicted] >= 0)
    k = len(shown)
    matrix = np.bincount(position[truth[keep]] * k + position[predicted[keep]], minlength=k * k).reshape(k, k)
    plot_confusion_matrix(matrix, [classes[i] for i in shown], png, title=title)
    written = False
    if csv is not None and n <= CSV_CLASSES:
        import pandas as pd

        full = np.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
        labels = [str(c) for c in classes]
        pd.DataFrame(full, index=pd.Index(labels, name="true / predicted"), columns=labels).to_csv(csv)
        written = True
    return {"classes": n, "classes_plotted": k, "csv": written}


MIN_TEST_ROWS_PER_CLASS = 5


def class_count_warning(n_classes: int, n_rows: int) -> str | None:
    """A warning when the test split has too few rows per class for per-class results to mean much, else None."""
    if n_classes <= 2 or n_rows >= MIN_TEST_ROWS_PER_CLASS * n_classes:
        return None
    return (f"{n_classes} classes for {n_rows} test rows ({n_rows / n_classes:.1f} per class on average): per-class "
            "results (macro F1, the confusion matrix) rest on very few rows; merge rare classes or gather more data")


def plot_confusion_matrix(matrix: np.ndarray, classes: list, path, title: str = "confusion matrix (test split)") -> None:
    """Counts in the cells up to LABELLED_CLASSES classes; the figure grows with the classes up to 16 inches."""
    n = len(classes)
    size = min(16.0, max(4.0, 0.6 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    labels = [_label(c) for c in classes]
    ax.set_xticks(range(n), labels, rotation=45 if n <= LABELLED_CLASSES else 90, ha="right",
                  fontsize=None if n <= LABELLED_CLASSES else 7)
    ax.set_yticks(range(n), labels, fontsize=None if n <= LABELLED_CLASSES else 7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= LABELLED_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label(value, limit: int = 24) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_predicted_vs_true(predicted: np.ndarray, truth: np.ndarray, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(truth, predicted, s=10, alpha=0.6)
    low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("predicted vs true (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
