"""In-domain quality of embeddings: kNN accuracy, clustering, retrieval; paired comparisons.

Three families of metrics, each computed offline with scikit-learn / numpy:

- **kNN accuracy** (the paper's in-domain metric, k=10, euclidean). Two forms:
  :func:`knn_accuracy` is leave-one-out (every labelled document is classified by its k
  nearest *other* documents, so all N documents count and no split adds noise; it is
  ``knn_accuracy`` in training's before/after report and in ``lastlayer eval``),
  :func:`knn_split_accuracy` is the paper's protocol (fit on a train part, classify a test
  part: the data set's own train/test split, ``knn_accuracy_train_test``, or a 90/10
  random split with seed 42, ``knn_accuracy_split_90_10``). On unit-normalised embeddings
  euclidean and cosine neighbours are the same.
- **Clustering**: k-means with as many clusters as labels; V-measure and adjusted Rand index.
- **Retrieval** on a BEIR folder: cosine ranking of the whole corpus for every judged
  query; nDCG@10 (graded relevance, linear gain, as trec_eval / BEIR) and Recall@100.

Pure functions of embeddings and labels; ``lastlayer.evaluation.suite`` embeds data sets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from lastlayer.config import KnnMetric

log = logging.getLogger(__name__)

KNN_METRICS: tuple[str, ...] = get_args(KnnMetric)
"""The kNN distances: the menu of ``eval.metric``, defined once in :mod:`lastlayer.config`."""
TEST_FRACTION = 0.1  # the paper's 90/10 split
KMEANS_N_INIT = 10
NDCG_AT, RECALL_AT = 10, 100
METRICS = (
    "knn_accuracy",              # leave-one-out over every document (training's report)
    "knn_accuracy_split_90_10",  # fit on a seeded random 90 %, score the other 10 %
    "knn_accuracy_train_test",   # fit on the data set's own train split, score its test split
    "v_measure", "ari", f"ndcg@{NDCG_AT}", f"recall@{RECALL_AT}",
)
"""Every metric name ``evaluate_encoder`` can return, in table order (besides its
``protocol`` string)."""


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


# ------------------------------------------------------------------- split kNN, clustering


def random_split(
    n: int, test_fraction: float = TEST_FRACTION, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a seeded random split (scikit-learn ``train_test_split``).

    With the defaults this is the paper's 90/10 split with seed 42: the same ``n`` and seed
    always give the same split.
    """
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(n), test_size=test_fraction, random_state=seed)
    return train, test


def knn_split_accuracy(
    train_embeddings: np.ndarray,
    train_labels: list[str],
    test_embeddings: np.ndarray,
    test_labels: list[str],
    k: int = 10,
    metric: str = "euclidean",
) -> KnnResult:
    """kNN accuracy of the test documents, classified by their k nearest training documents.

    scikit-learn's ``KNeighborsClassifier`` (uniform weights, exact brute-force search):
    a tie between labels goes to the label that sorts first, unlike the nearest-first rule
    of :func:`knn_accuracy`.

    Args:
        train_embeddings: (N_train, d) array; ``train_labels`` its N_train labels.
        test_embeddings: (N_test, d) array; ``test_labels`` its N_test labels.
        k: Neighbours per vote (at most N_train).
        metric: ``euclidean`` or ``cosine``.

    Returns:
        The accuracy and the per-test-document hits.
    """
    from sklearn.neighbors import KNeighborsClassifier

    if len(train_labels) < k:
        raise ValueError(f"kNN with k={k} needs at least {k} training documents, "
                         f"got {len(train_labels)}.")
    if not len(test_labels):
        raise ValueError("kNN accuracy needs at least one test document.")
    classifier = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute")
    classifier.fit(train_embeddings, np.asarray(train_labels))
    correct = classifier.predict(test_embeddings) == np.asarray(test_labels)
    return KnnResult(float(correct.mean()), correct)


def clustering_scores(
    embeddings: np.ndarray, labels: list[str], seed: int = 42, n_init: int = KMEANS_N_INIT
) -> dict[str, float]:
    """k-means with one cluster per label; how well the clusters match the labels.

    Returns:
        ``{"v_measure": ..., "ari": ...}``: V-measure (1 = clusters and labels coincide,
        0 = independent) and the adjusted Rand index (1 = identical partitions, about 0 for
        a random one, can be negative).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, v_measure_score

    num_classes = len(set(labels))
    if num_classes < 2 or len(labels) < num_classes:
        raise ValueError(f"clustering needs at least 2 labels and a document per cluster, "
                         f"got {num_classes} label(s) over {len(labels)} document(s).")
    kmeans = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed)
    clusters = kmeans.fit_predict(np.asarray(embeddings, dtype=np.float64))
    return {
        "v_measure": float(v_measure_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


# ------------------------------------------------------------------------------- retrieval


def retrieval_scores(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    relevance: Any,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """nDCG@10 and Recall@100 of cosine ranking, averaged over the queries.

    nDCG is scikit-learn's ``ndcg_score`` (gain = relevance grade, log2 discount, ideal
    ranking over all judged documents, tied scores averaged). Recall@100 is the share of a
    query's relevant (grade > 0) documents found among its 100 best-ranked ones. Queries
    are scored in chunks, so the (queries x documents) score matrix never exists whole.

    Args:
        query_embeddings: (Q, d) array.
        doc_embeddings: (D, d) array.
        relevance: (Q, D) relevance grades, a dense array or a scipy sparse matrix; every
            query needs at least one grade > 0. Negative grades count as 0.
        chunk_size: Queries scored at a time (default: about 16 MB of scores).
    """
    from sklearn.metrics import ndcg_score

    queries, docs = _unit(query_embeddings), _unit(doc_embeddings)
    n_queries, n_docs = relevance.shape
    if (n_queries, n_docs) != (len(queries), len(docs)):
        raise ValueError(f"relevance has shape {relevance.shape}, expected "
                         f"({len(queries)}, {len(docs)}) (queries, documents).")
    depth = min(RECALL_AT, n_docs)
    chunk = chunk_size or max(1, 2**22 // max(n_docs, 1))  # ~16 MB of float32 scores
    ndcg_sum = recall_sum = 0.0
    for start in range(0, n_queries, chunk):
        grades = relevance[start : start + chunk]
        grades = np.clip(grades.toarray() if hasattr(grades, "toarray") else grades, 0, None)
        relevant = grades > 0  # (q, D)
        if not relevant.any(axis=1).all():
            raise ValueError("every query needs at least one relevant document (grade > 0).")
        scores = queries[start : start + chunk] @ docs.T  # (q, D) cosine similarities
        ndcg_sum += ndcg_score(grades, scores, k=NDCG_AT) * len(grades)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]  # (q, depth), unordered
        found = np.take_along_axis(relevant, top, axis=1).sum(axis=1)
        recall_sum += float((found / relevant.sum(axis=1)).sum())
    return {f"ndcg@{NDCG_AT}": ndcg_sum / n_queries, f"recall@{RECALL_AT}": recall_sum / n_queries}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

