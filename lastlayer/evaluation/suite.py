"""Evaluate an encoder on whole data sets: labelled files (kNN, clustering) or BEIR folders.

:func:`evaluate_encoder` embeds one data set and returns the metrics that apply;
:func:`format_table` and :func:`results_json` shape the results of several for the CLI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lastlayer.corpus import DataError, read_labelled
from lastlayer.evaluation.datasets import (
    BeirData,
    dataset_kind,
    read_beir,
    read_splits,
    sample_rows,
)
from lastlayer.evaluation.metrics import (
    KMEANS_N_INIT,
    KNN_METRICS,
    METRICS,
    NDCG_AT,
    RECALL_AT,
    TEST_FRACTION,
    clustering_scores,
    knn_accuracy,
    knn_split_accuracy,
    random_split,
    retrieval_scores,
)

if TYPE_CHECKING:
    from lastlayer.core.encoder import Encoder
    from lastlayer.core.target import Target

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------ whole data sets


def evaluate_encoder(
    encoder: Encoder | Target,
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
) -> dict[str, Any]:
    """Embed one evaluation data set with ``encoder`` and compute the metrics that apply.

    A folder in the BEIR layout (see :func:`lastlayer.evaluation.datasets.read_beir`) gives
    ``ndcg@10`` and ``recall@100``; anything else is read as a labelled file
    (:func:`lastlayer.corpus.read_labelled`) and gives two kNN accuracies and, with
    ``clustering``, ``v_measure`` and ``ari``:

    - ``knn_accuracy``: leave-one-out over every document read (each is classified by its
      k nearest others), the protocol of training's report: on training's held-out sample
      (same data, ``max_docs`` and seed) it is the number in the artifact's ``eval.json``.
    - ``knn_accuracy_train_test`` when the ``split_field`` holds both ``train`` and ``test``
      (fit on train, score test; other values are left out), else
      ``knn_accuracy_split_90_10`` (a 90/10 random split seeded with ``split_seed``).

    Clustering uses every document read. The ``protocol`` entry says how each number was
    measured (k, distance, documents, splits, seeds).

    Args:
        encoder: Embeds texts: ``encode(texts, batch_size=, progress=, desc=)`` -> (N, d)
            tensor, as an ``Encoder`` or a ``lastlayer.core.target.Target`` (an adapter on
            the inference engine: ``load_target``) has.
        data: Labelled file / ``save_to_disk`` folder, or BEIR folder.
        k: kNN neighbours.
        metric: kNN distance, ``euclidean`` (the paper's) or ``cosine``. Retrieval always
            ranks by cosine.
        split_seed: Seed of the ``max_docs`` sample (the rule of training's held-out set),
            of the random split and of k-means.
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
        Metric name -> value, in the order of :data:`METRICS`, then ``protocol`` (a string).

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
    total = len(texts)
    keep = sample_rows(total, max_docs, split_seed)
    if keep is not None:
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        splits = [splits[i] for i in keep] if splits is not None else None
    if len(set(labels)) < 2:
        raise DataError(f"{data}: kNN and clustering need at least 2 labels in "
                        f"'{label_field}', found {sorted(set(labels))}.")
    if len(texts) <= k:
        raise DataError(f"{data}: leave-one-out kNN with k={k} needs more than {k} "
                        f"documents; {len(texts)} were read.")
    train, test, split_key, how = _knn_split(splits, len(texts), split_seed)
    if len(train) < k or not len(test):
        raise DataError(f"{data}: kNN with k={k} needs at least {k} training and 1 test "
                        f"document; {how} gives {len(train)} and {len(test)}.")
    vectors = encoder.encode(texts, batch_size=batch_size, progress=progress,
                             desc=f"embed {name}").numpy()
    y = np.asarray(labels)
    split_result = knn_split_accuracy(vectors[train], y[train].tolist(), vectors[test],
                                      y[test].tolist(), k, metric)
    sample = (f"a seeded sample (seed {split_seed}) of {len(texts)} of {total} documents"
              if keep is not None else f"all {total} documents")
    protocol = [
        f"knn_accuracy: k={k}, {metric}, leave-one-out over {sample}",
        f"{split_key}: k={k}, {metric}, fit on {len(train)}, scored on {len(test)} "
        f"({how})",
    ]
    metrics: dict[str, Any] = {
        "knn_accuracy": knn_accuracy(vectors, labels, k, metric).accuracy,
        split_key: split_result.accuracy,
    }
    if clustering:
        metrics.update(clustering_scores(vectors, labels, seed=split_seed))
        protocol.append(f"v_measure, ari: k-means, one cluster per label "
                        f"({len(set(labels))}), n_init={KMEANS_N_INIT}, seed {split_seed}, "
                        f"over the same {len(texts)} documents")
    metrics["protocol"] = "; ".join(protocol)
    log.info("%s: %s", data, metrics["protocol"])
    return metrics


def _knn_split(
    splits: list[str] | None, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(train, test, metric name, description): the data set's own split if it has one,
    else a seeded 90/10 random split."""
    if splits is not None and {"train", "test"} <= set(splits):
        names = np.asarray(splits)
        return (np.flatnonzero(names == "train"), np.flatnonzero(names == "test"),
                "knn_accuracy_train_test", "the data set's own train/test split")
    train, test = random_split(n, TEST_FRACTION, seed)
    return (train, test, "knn_accuracy_split_90_10",
            f"a {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} random split, seed {seed}")


@dataclass
class RetrievalTask:
    """What retrieval scoring needs: document and query texts and their relevance grades."""

    docs: list[str]
    queries: list[str]
    relevance: Any  # (queries, docs) scipy sparse matrix of graded relevance
    sampled: bool = False  # the corpus is a max_docs sample, not the whole corpus

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
                         [beir.queries[i] for i in query_rows], relevance,
                         sampled=len(doc_rows) < len(beir.doc_ids))


def _evaluate_beir(
    encoder: Encoder | Target, folder: str | Path, qrels_split: str, batch_size: int,
    max_docs: int | None, seed: int, progress: bool, name: str,
) -> dict[str, Any]:
    task = retrieval_task(folder, qrels_split, max_docs, seed)
    docs = encoder.encode(task.docs, batch_size=batch_size, progress=progress,
                          desc=f"embed {name} corpus").numpy()
    queries = encoder.encode(task.queries, batch_size=batch_size, progress=progress,
                             desc=f"embed {name} queries").numpy()
    corpus = (f"a corpus sample of {len(task.docs)} documents keeping every judged one "
              f"(seed {seed})" if task.sampled else f"all {len(task.docs)} documents")
    protocol = (f"ndcg@{NDCG_AT}, recall@{RECALL_AT}: cosine ranking of {corpus} for "
                f"{len(task.queries)} judged queries of qrels/{qrels_split}.tsv")
    return {**task.score(docs, queries), "protocol": protocol}


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
    encoder: Encoder | Target, paths: list[str | Path], **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_encoder` on several data sets: ``{str(path): metrics}`` in order."""
    return {str(path): evaluate_encoder(encoder, path, **kwargs) for path in paths}


def results_json(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` object: the metrics of a single data set, else keyed by data path."""
    return next(iter(results.values())) if len(results) == 1 else results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per data set, one column per metric that any of them has;
    below it, how each data set was measured (its ``protocol``).

    Args:
        results: Data path -> metric name -> value (what :func:`evaluate_paths` returns).
    """
    present = {m for metrics in results.values() for m in metrics if m != "protocol"}
    columns = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    header = ["data", *columns]
    rows = [[path, *(f"{metrics[m]:.4f}" if m in metrics else "-" for m in columns)]
            for path, metrics in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    table = [line(header), *(line(row) for row in rows)]
    protocols = [""]  # under the table: each data set, then one line per protocol part
    for path, metrics in results.items():
        if "protocol" in metrics:
            protocols += [f"{path}:", *(f"  {part}" for part in metrics["protocol"].split("; "))]
    return "\n".join(table + (protocols if len(protocols) > 1 else []))
