"""Plots saved as PNG with matplotlib's headless Agg backend: learning curves, the two-axis
loss/accuracy chart, a confusion-matrix heatmap, a grid of sample predictions, first-layer filters."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import backend  # noqa: E402
from .checkpoint import atomic_write_bytes  # noqa: E402


def _save(fig, path):
    """Render to memory, then write atomically (no half-written PNG on a crash)."""
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return os.fspath(path)


def _rows(history):
    return history.rows if hasattr(history, "rows") else list(history)


def learning_curves(history, path, title="Learning curves", labels=None):
    """Loss (left) and accuracy (right) per epoch, train and validation. labels: {'train': ..., 'val':
    ...} say which set and which loss each curve is (e.g. 'validation: 6,000 held-out training images')."""
    labels = {"train": "train", "val": "validation", **(labels or {})}
    rows = _rows(history)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [r.get(f"{split}_{metric}") for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, label=labels[split])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    fig.suptitle(title)
    return _save(fig, path)


def loss_accuracy_chart(history, path, title="Training loss and validation accuracy", val_label="val accuracy"):
    """The tutorials' two-axis chart: training loss on the left axis, accuracy on the right
    (val_label names the held-out set's accuracy, e.g. 'test accuracy')."""
    rows = _rows(history)
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", color="tab:red", label="train loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss", color="tab:red")
    twin = ax.twinx()
    twin.plot(epochs, [r["train_accuracy"] for r in rows], "^-", color="tab:blue", label="train accuracy")
    if any(r.get("val_accuracy") is not None for r in rows):
        twin.plot(epochs, [r.get("val_accuracy") for r in rows], "s--", color="tab:green", label=val_label)
    twin.set_ylabel("accuracy", color="tab:blue")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def confusion_matrix_plot(matrix, class_names, path, title="Confusion matrix"):
    """Heatmap of counts (rows: true class, columns: predicted), each cell annotated."""
    matrix = np.asarray(matrix)
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 0.6 * k + 0.5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(f"{title} (accuracy {np.trace(matrix) / max(matrix.sum(), 1):.2%})")
    return _save(fig, path)


def predictions_grid(images, y_true, y_pred, class_names, path, columns=8, title="Sample predictions"):
    """Images with 'true / predicted' captions; mistakes in red with a red frame."""
    images = np.asarray(images)
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p in zip(axes.flat, images, y_true, y_pred):
        picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        ax.imshow(picture, cmap="gray" if image.shape[0] == 1 else None)
        wrong = t != p
        ax.set_title(f"{class_names[t]} / {class_names[p]}", fontsize=8, color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    fig.suptitle(f"{title} (true / predicted; mistakes in red)")
    return _save(fig, path)


def filters(weight, path, title="First-layer filters"):
    """Each filter of a conv weight (OC, C, KH, KW) as a small image (channel mean for C > 1)."""
    weight = backend.to_numpy(weight).astype(np.float64)
    kernels = weight.mean(axis=1) if weight.shape[1] != 3 else weight.transpose(0, 2, 3, 1)
    n = len(kernels)
    columns = min(n, 8)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, k) in enumerate(zip(axes.flat, kernels)):
        if k.ndim == 3:
            k = (k - k.min()) / (np.ptp(k) or 1)
        ax.imshow(k, cmap="gray" if k.ndim == 2 else None, interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(title, y=1.0 + 0.25 / rows)
    return _save(fig, path)


def save_run_plots(model, history, images, labels, predicted, class_names, out, title="Learning curves",
                   curve_labels=None):
    """Everything a training run shows, into folder ``out``: curves.png, loss_accuracy.png,
    confusion.png, predictions.png (16 test images and up to 8 mistakes) and filters.png.
    curve_labels: as learning_curves' labels."""
    from .train import confusion_matrix
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    learning_curves(history, os.path.join(out, "curves.png"), title=title, labels=curve_labels)
    loss_accuracy_chart(history, os.path.join(out, "loss_accuracy.png"))
    cm = confusion_matrix(labels, predicted, len(class_names))
    confusion_matrix_plot(cm, class_names, os.path.join(out, "confusion.png"))
    wrong = [i for i in np.flatnonzero(predicted != labels) if i >= 16][:8]
    picks = np.concatenate([np.arange(min(len(labels), 24 - len(wrong))), wrong]).astype(np.int64)
    predictions_grid(images[picks], labels[picks], predicted[picks], class_names, os.path.join(out, "predictions.png"))
    first_conv = next((m for m in model.modules() if type(m).__name__ == "Conv2d"), None)
    if first_conv is not None:
        filters(first_conv.weight.data, os.path.join(out, "filters.png"))


def lr_finder(result, path, title="Learning-rate range test"):
    """Loss against learning rate (log axis), raw and smoothed, with the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="0.75", label="loss per batch")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"steepest fall: {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = [v for v in result.smoothed if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * finite[0]) * 1.1)
    ax.legend()
    ax.set_title(title)
    _save(fig, path)
