"""In-domain quality of embeddings: leave-one-out kNN accuracy, and paired comparisons.

kNN accuracy is the paper's in-domain metric (k=10, euclidean). lastlayer uses the
leave-one-out form: every labelled document is classified by its k nearest *other*
documents, so all N documents count and no split adds noise. On unit-normalised
embeddings euclidean and cosine neighbours are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KnnResult:
    """kNN accuracy and the per-document hits it averages (for paired comparisons)."""

    accuracy: float
    correct: np.ndarray  # (N,) bool


def knn_accuracy(
    embeddings: np.ndarray, labels: list[str], k: int = 10, metric: str = "euclidean"
) -> KnnResult:
    """Leave-one-out kNN accuracy: majority label of each document's k nearest others.

    Ties between labels go to the label whose nearest member is closest (scikit-learn
    returns neighbours sorted by distance, and the vote below keeps the first maximum).

    Args:
        embeddings: (N, d) array.
        labels: N labels.
        k: Neighbours per vote.
        metric: ``euclidean`` or ``cosine`` (any scikit-learn metric works).
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(labels)
    if n <= k:
        raise ValueError(f"kNN with k={k} needs more than {k} labelled documents, got {n}.")
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    index = NearestNeighbors(n_neighbors=k, metric=metric).fit(embeddings)
    neighbours = index.kneighbors(return_distance=False)  # (N, k), self excluded
    votes = y[neighbours]  # (N, k)
    predicted = np.array([_vote(row, len(classes)) for row in votes])
    correct = predicted == y
    return KnnResult(float(correct.mean()), correct)


def _vote(neighbour_labels: np.ndarray, num_classes: int) -> int:
    """Majority label; among tied labels, the one that appears first (nearest)."""
    counts = np.bincount(neighbour_labels, minlength=num_classes)
    tied = np.flatnonzero(counts == counts.max())
    return int(next(label for label in neighbour_labels if label in tied))


def paired_delta(
    base: np.ndarray, adapted: np.ndarray, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Accuracy difference adapted − base with a paired bootstrap 95% interval.

    Both runs classify the same documents, so resampling documents (not runs) gives the
    uncertainty of the difference that comes from which documents were evaluated.
    """
    diff = adapted.astype(float) - base.astype(float)  # (N,) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[samples].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"delta": float(diff.mean()), "ci95_low": float(low), "ci95_high": float(high)}
