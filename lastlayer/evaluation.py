"""In-domain quality of embeddings: kNN accuracy, clustering, retrieval; paired comparisons.

Three families of metrics, each computed offline with scikit-learn / numpy:

- **kNN accuracy** (the paper's in-domain metric, k=10, euclidean). Two forms:
  :func:`knn_accuracy` is leave-one-out (every labelled document is classified by its k
  nearest *other* documents, so all N documents count and no split adds noise; training
  uses it for the before/after report), :func:`knn_split_accuracy` is the paper's protocol
  (fit on a train part, classify a test part: the data set's own train/test split, or a
  90/10 random split with seed 42). On unit-normalised embeddings euclidean and cosine
  neighbours are the same.
- **Clustering**: k-means with as many clusters as labels; V-measure and adjusted Rand index.
- **Retrieval** on a BEIR folder: cosine ranking of the whole corpus for every judged
  query; nDCG@10 (graded relevance, linear gain, as trec_eval / BEIR) and Recall@100.

:func:`evaluate_encoder` embeds one data set with an :class:`~lastlayer.model.Encoder`
and returns the metrics that apply; :func:`format_table` and :func:`results_json` shape
the results of several data sets for the command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lastlayer.data import (
    BeirData,
    DataError,
    dataset_kind,
    read_beir,
    read_labelled,
    read_splits,
)

if TYPE_CHECKING:
    from lastlayer.model import Encoder

log = logging.getLogger(__name__)

KNN_METRICS = ("euclidean", "cosine")
TEST_FRACTION = 0.1  # the paper's 90/10 split
KMEANS_N_INIT = 10
NDCG_AT, RECALL_AT = 10, 100
METRICS = ("knn_accuracy", "v_measure", "ari", f"ndcg@{NDCG_AT}", f"recall@{RECALL_AT}")
"""Every metric name :func:`evaluate_encoder` can return, in table order."""


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


# ------------------------------------------------------------------------ whole data sets


def evaluate_encoder(
    encoder: Encoder,
    data: str | Path,
    *,
    k: int = 10,
    metric: str = "euclidean",
    split_seed: int = 42,
    text_field: str = "text",
    label_field: str = "label",
    split_field: str | None = "split",
    qrels_split: str = "test",
    batch_size: int = 32,
    max_docs: int | None = None,
    clustering: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Embed one evaluation data set with ``encoder`` and compute the metrics that apply.

    A folder in the BEIR layout (see :func:`lastlayer.data.read_beir`) gives
    ``ndcg@10`` and ``recall@100``; anything else is read as a labelled file
    (:func:`lastlayer.data.read_labelled`) and gives ``knn_accuracy`` and, with
    ``clustering``, ``v_measure`` and ``ari``.

    kNN uses the data set's own split when its ``split_field`` holds both ``train`` and
    ``test`` (other values are left out of kNN), else a 90/10 random split seeded with
    ``split_seed``. Clustering uses every document read.

    Args:
        encoder: Embeds texts (``lastlayer.adapters.load_target`` gives one).
        data: Labelled file / ``save_to_disk`` folder, or BEIR folder.
        k: kNN neighbours.
        metric: kNN distance, ``euclidean`` (the paper's) or ``cosine``. Retrieval always
            ranks by cosine.
        split_seed: Seed of the random split, of the ``max_docs`` sample and of k-means.
        text_field, label_field: Field names of a labelled file.
        split_field: Field holding ``train`` / ``test`` (None: always split at random).
        qrels_split: Which ``qrels/<split>.tsv`` of a BEIR folder to score.
        batch_size: Texts per forward pass.
        max_docs: Labelled file: a seeded random sample of this many documents. BEIR: a
            corpus of at most this many documents, always keeping every judged document
            of the scored queries (so scores are higher than on the full corpus).
        clustering: Also cluster a labelled set (k-means takes a few seconds).
        progress: Show progress bars while embedding.

    Returns:
        Metric name -> value, in the order of :data:`METRICS`.

    Raises:
        DataError: The data cannot be read, or holds too few documents or labels.
        ValueError: ``metric`` is not ``euclidean`` or ``cosine``, or ``k`` < 1.
    """
    if metric not in KNN_METRICS:
        raise ValueError(f"metric must be one of {', '.join(KNN_METRICS)}, got {metric!r}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max_docs must be a positive integer or None, got {max_docs!r}.")
    name = Path(data).name
    if dataset_kind(data) == "beir":
        return _evaluate_beir(encoder, data, qrels_split, batch_size, max_docs, split_seed,
                              progress, name)
    texts, labels = read_labelled(data, text_field, label_field)
    splits = read_splits(data, text_field, split_field) if split_field else None
    if max_docs is not None and max_docs < len(texts):
        keep = np.random.default_rng(split_seed).choice(len(texts), size=max_docs, replace=False)
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        splits = [splits[i] for i in keep] if splits is not None else None
    if len(set(labels)) < 2:
        raise DataError(f"{data}: kNN and clustering need at least 2 labels in "
                        f"'{label_field}', found {sorted(set(labels))}.")
    train, test, how = _knn_split(splits, len(texts), split_seed)
    if len(train) < k or not len(test):
        raise DataError(f"{data}: kNN with k={k} needs at least {k} training and 1 test "
                        f"document; {how} gives {len(train)} and {len(test)}.")
    vectors = encoder.encode(texts, batch_size=batch_size, progress=progress,
                             desc=f"embed {name}").numpy()
    y = np.asarray(labels)
    result = knn_split_accuracy(vectors[train], y[train].tolist(), vectors[test],
                                y[test].tolist(), k, metric)
    log.info("%s: kNN (k=%d, %s) on %s: %d train / %d test documents", data, k, metric, how,
             len(train), len(test))
    metrics = {"knn_accuracy": result.accuracy}
    if clustering:
        metrics.update(clustering_scores(vectors, labels, seed=split_seed))
    return metrics


def _knn_split(
    splits: list[str] | None, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, test, description): the data set's own split if it has one, else 90/10."""
    if splits is not None and {"train", "test"} <= set(splits):
        names = np.asarray(splits)
        return (np.flatnonzero(names == "train"), np.flatnonzero(names == "test"),
                "the data set's train/test split")
    train, test = random_split(n, TEST_FRACTION, seed)
    return train, test, f"a {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} random split (seed {seed})"


@dataclass
class RetrievalTask:
    """What retrieval scoring needs: document and query texts and their relevance grades."""

    docs: list[str]
    queries: list[str]
    relevance: Any  # (queries, docs) scipy sparse matrix of graded relevance

    def score(self, doc_embeddings: np.ndarray, query_embeddings: np.ndarray) -> dict[str, float]:
        """nDCG@10 and Recall@100 of these embeddings (see :func:`retrieval_scores`)."""
        return retrieval_scores(query_embeddings, doc_embeddings, self.relevance)


def retrieval_task(
    folder: str | Path, qrels_split: str = "test", max_docs: int | None = None, seed: int = 42
) -> RetrievalTask:
    """Read a BEIR folder into a :class:`RetrievalTask`: judged queries with a relevant
    document, and the corpus (or a ``max_docs`` sample of it keeping every judged document).

    Raises:
        DataError: The folder cannot be read, or no query has a relevant document.
    """
    from scipy.sparse import csr_matrix

    beir = read_beir(folder, qrels_split)
    # Only queries with a relevant document can be scored (nDCG and recall are undefined).
    query_rows = [i for i, q in enumerate(beir.query_ids)
                  if any(s > 0 for s in beir.qrels[q].values())]
    if len(query_rows) < len(beir.query_ids):
        log.warning("%s: %d judged quer(ies) without a relevant document are not scored",
                    folder, len(beir.query_ids) - len(query_rows))
    if not query_rows:
        raise DataError(f"{folder}: no query in qrels/{qrels_split}.tsv has a relevant "
                        "document (score > 0).")
    query_ids = [beir.query_ids[i] for i in query_rows]
    doc_rows = np.arange(len(beir.doc_ids))
    if max_docs is not None and max_docs < len(doc_rows):
        doc_rows = _corpus_sample(beir, query_ids, max_docs, seed)
    column = {beir.doc_ids[j]: c for c, j in enumerate(doc_rows)}
    entries = [(r, column[d], s) for r, q in enumerate(query_ids)
               for d, s in beir.qrels[q].items() if d in column]
    rows, cols, grades = zip(*entries, strict=True)
    relevance = csr_matrix((grades, (rows, cols)), shape=(len(query_ids), len(doc_rows)))
    log.info("%s: %d queries against %d documents (qrels/%s.tsv)", folder, len(query_ids),
             len(doc_rows), qrels_split)
    return RetrievalTask([beir.docs[j] for j in doc_rows],
                         [beir.queries[i] for i in query_rows], relevance)


def _evaluate_beir(
    encoder: Encoder, folder: str | Path, qrels_split: str, batch_size: int,
    max_docs: int | None, seed: int, progress: bool, name: str,
) -> dict[str, float]:
    task = retrieval_task(folder, qrels_split, max_docs, seed)
    docs = encoder.encode(task.docs, batch_size=batch_size, progress=progress,
                          desc=f"embed {name} corpus").numpy()
    queries = encoder.encode(task.queries, batch_size=batch_size, progress=progress,
                             desc=f"embed {name} queries").numpy()
    return task.score(docs, queries)


def _corpus_sample(beir: BeirData, query_ids: list[str], size: int, seed: int) -> np.ndarray:
    """Corpus rows: every document judged for the queries, then seeded random others."""
    judged = {d for q in query_ids for d in beir.qrels[q]}
    keep = [j for j, d in enumerate(beir.doc_ids) if d in judged]
    others = np.array([j for j, d in enumerate(beir.doc_ids) if d not in judged], dtype=int)
    extra = max(0, size - len(keep))
    if extra < len(others):
        others = np.random.default_rng(seed).choice(others, size=extra, replace=False)
    if len(keep) > size:
        log.warning("max_docs=%d is below the %d judged documents; keeping all of them",
                    size, len(keep))
    return np.sort(np.concatenate([np.asarray(keep, dtype=int), others]))


def evaluate_paths(
    encoder: Encoder, paths: list[str | Path], **kwargs: Any
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_encoder` on several data sets: ``{str(path): metrics}`` in order."""
    return {str(path): evaluate_encoder(encoder, path, **kwargs) for path in paths}


def results_json(results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The ``--json`` object: the metrics of a single data set, else keyed by data path."""
    return next(iter(results.values())) if len(results) == 1 else results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per data set, one column per metric that any of them has.

    Args:
        results: Data path -> metric name -> value (what :func:`evaluate_paths` returns).
    """
    present = {m for metrics in results.values() for m in metrics}
    columns = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    header = ["data", *columns]
    rows = [[path, *(f"{metrics[m]:.4f}" if m in metrics else "-" for m in columns)]
            for path, metrics in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(header), *(line(row) for row in rows)])
