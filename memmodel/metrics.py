"""Metrics: classification (accuracy, macro precision / recall / F1, the confusion matrix)
and language modelling (bits per byte), with their intervals.

    from memmodel.metrics import classification_metrics, plot_confusion

    report = classification_metrics(y_true, y_pred, labels=range(10))
    report.f1, (report.f1_low, report.f1_high)      # macro F1 and its bootstrap interval
    plot_confusion(report, "confusion.png")          # needs matplotlib (the `plot` extra)

The classification figures are scikit-learn's (`sklearn.metrics`, the `domains` extra),
imported when first used, so the core install needs neither scikit-learn nor matplotlib.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .plotting import pyplot

log = logging.getLogger("memmodel.metrics")

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
LN2 = math.log(2.0)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default).

    Args:
        successes: k, the number of successes, 0 <= k <= n.
        n: trials; n = 0 gives the uninformative (0, 1).
        z: the normal quantile of the interval's level.

    Returns:
        (low, high), both in [0, 1].

    Example:
        >>> [round(x, 3) for x in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= n, got "
                         f"successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def bits_per_byte(loss_nats: float) -> float:
    """A mean cross-entropy per byte in nats, in bits: loss / ln 2."""
    return loss_nats / LN2


def mean_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float, float]:
    """(mean, low, high): the normal interval mean -+ z * sd / sqrt(n) of independent
    values (one per sequence); n = 1 gives (v, v, v)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_interval: expected a non-empty 1-D sequence, got shape "
                         f"{list(x.shape)}")
    m = float(x.mean())
    half = z * float(x.std(ddof=1)) / math.sqrt(x.size) if x.size > 1 else 0.0
    return m, m - half, m + half


def _sklearn_metrics():
    try:
        from sklearn import metrics
    except ImportError as e:
        raise ImportError("memmodel.metrics: classification metrics need scikit-learn "
                          "(pip install 'memmodel[domains]')") from e
    return metrics


@dataclass
class ClassificationReport:
    """What `classification_metrics` measured; `to_dict()` gives plain fields.

    Attributes:
        n: examples scored.
        labels: the classes, in the order of every per-class list and of the matrix.
        names: a name per class (the labels as strings unless given).
        accuracy: fraction predicted right, with its 95% Wilson interval ci_low, ci_high.
        precision, recall, f1: macro averages over `labels` (a class never predicted has
            precision 0, one never present recall 0: sklearn's zero_division=0).
        f1_low, f1_high: the 95% percentile bootstrap interval of the macro F1 (examples
            resampled `resamples` times with a fixed seed).
        per_class: precision, recall, f1 and support, a list each, per class.
        confusion: [K][K] counts, row = true class, column = predicted class.
        outside: [K] per true class, predictions that are none of the labels (they count
            as errors; the matrix leaves them out).
    """

    n: int
    labels: list[Any]
    names: list[str]
    accuracy: float
    ci_low: float
    ci_high: float
    precision: float
    recall: float
    f1: float
    f1_low: float
    f1_high: float
    resamples: int
    per_class: dict[str, list[float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    outside: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_labels(name: str, values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"classification_metrics: expected {name} as a 1-D sequence, got "
                         f"shape {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"classification_metrics: expected integer {name}, got dtype "
                        f"{arr.dtype}")
    return arr.astype(np.int64)


def classification_metrics(y_true, y_pred, labels: Sequence[int],
                           names: Optional[Sequence[str]] = None, resamples: int = 500,
                           seed: int = 0) -> ClassificationReport:
    """Accuracy, macro precision / recall / F1 and the confusion matrix (scikit-learn's).

    Args:
        y_true: [N] int class of each example (a tensor, an array or a list); every value
            one of `labels`.
        y_pred: [N] int prediction of each example; a value outside `labels` is an error
            for its example (it lowers recall and accuracy, and no class's precision).
        labels: the K classes, distinct ints; the macro averages run over them.
        names: K names for the classes (None: the labels as strings).
        resamples: bootstrap resamples of the macro F1's interval (0: no interval, the
            point estimate twice).
        seed: of the bootstrap's generator.

    Returns:
        A ClassificationReport.

    Example:
        >>> r = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], labels=[0, 1])
        >>> round(r.accuracy, 2), round(r.f1, 3)
        (0.75, 0.733)
    """
    metrics = _sklearn_metrics()
    t, p = _as_labels("y_true", y_true), _as_labels("y_pred", y_pred)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"classification_metrics: expected y_true and y_pred of one "
                         f"non-empty length, got {t.size} and {p.size}")
    labels = [int(v) for v in labels]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"classification_metrics: expected distinct labels, got {labels}")
    unknown = sorted(set(t.tolist()) - set(labels))
    if unknown:
        raise ValueError(f"classification_metrics: y_true holds values {unknown[:5]} that "
                         f"are not among labels {labels}")
    if names is None:
        names = [str(v) for v in labels]
    if len(names) != len(labels):
        raise ValueError(f"classification_metrics: expected {len(labels)} names, got "
                         f"{len(names)}")
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 0:
        raise ValueError(f"classification_metrics: expected resamples >= 0, got "
                         f"{resamples!r}")

    def macro(ti, pi):
        return metrics.precision_recall_fscore_support(ti, pi, labels=labels,
                                                       average="macro", zero_division=0)

    precision, recall, f1, _ = macro(t, p)
    pc, rc, fc, support = metrics.precision_recall_fscore_support(
        t, p, labels=labels, average=None, zero_division=0)
    accuracy = float(metrics.accuracy_score(t, p))
    correct = int((t == p).sum())
    lo, hi = wilson_interval(correct, t.size)
    f1_lo = f1_hi = float(f1)
    if resamples:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, t.size, size=(resamples, t.size))
        boot = np.array([macro(t[i], p[i])[2] for i in draws])
        f1_lo, f1_hi = (float(v) for v in np.quantile(boot, [0.025, 0.975]))
    matrix = metrics.confusion_matrix(t, p, labels=labels)
    listed = np.isin(p, labels)
    outside = [int(((t == v) & ~listed).sum()) for v in labels]
    return ClassificationReport(
        n=int(t.size), labels=labels, names=[str(s) for s in names],
        accuracy=accuracy, ci_low=lo, ci_high=hi, precision=float(precision),
        recall=float(recall), f1=float(f1), f1_low=f1_lo, f1_high=f1_hi, resamples=resamples,
        per_class=dict(precision=pc.tolist(), recall=rc.tolist(), f1=fc.tolist(),
                       support=support.tolist()),
        confusion=matrix.tolist(), outside=outside)


def plot_confusion(report: ClassificationReport, path, title: Optional[str] = None) -> bool:
    """The report's confusion matrix as a PNG at `path` (rows: true class, columns:
    predicted; each cell's count written in it). Returns False (and logs a warning)
    without matplotlib (the `plot` extra)."""
    plt = pyplot(path)
    if plt is None:
        return False
    matrix = np.asarray(report.confusion)
    k = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * k, 0.8 + 0.45 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), report.names, rotation=90 if k > 6 else 0, fontsize=8)
    ax.set_yticks(range(k), report.names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title(title or f"accuracy {report.accuracy:.3f}, macro F1 {report.f1:.3f} "
                          f"(n={report.n})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
