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


def plot_confusion_matrix(matrix: np.ndarray, classes: list, path) -> None:
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    labels = [str(c) for c in classes]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
