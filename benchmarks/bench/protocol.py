"""The findings' protocol: models, data sets, the held-out split and the recipe of a run.

``findings``, ``budget`` and ``choose_k`` measure on the same held-out documents with the
same settings, so that their numbers compare: per data set, 1,000 labelled documents
sampled with seed 42 are held out (never trained on), quality is leave-one-out kNN
accuracy over them (k=10, euclidean; what ``lastlayer train`` writes to ``eval.json``),
and a BEIR folder (SciFact) is scored by nDCG@10 of its test queries against a
1,000-document corpus sample that keeps every judged document. Training sees document text
only. ``speed`` holds out its documents the same way (:func:`held_out_split`).

The tables here are read when a function runs, not when it is defined: a test points them
at a tiny model and tiny data sets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench import ROOT
from lastlayer.config import DataConfig, EvalConfig, ObjectiveConfig, Recipe, load_recipe

EVAL_SEED = 42  # the held-out documents are the same for every training seed
EVAL_DOCS = 1000
STEPS, BATCH = 40, 32
SEEDS = (42, 43)


@dataclass(frozen=True)
class ModelSpec:
    """A base model and the settings every run on it shares."""

    name_or_path: str
    num_layers: int
    max_length: int
    cache_k: int  # bottom-layer caches hold block L-cache_k inputs; runs with k <= it reuse them
    lr: dict[str, float]  # per adapter kind
    kind: str  # the adapter kind of the headline rows


MODELS = {
    "smollm2": ModelSpec("HuggingFaceTB/SmolLM2-135M-Instruct", 30, 64, 4,
                         {"full": 2e-4, "lora": 1e-3}, "full"),
    "minilm": ModelSpec("sentence-transformers/all-MiniLM-L6-v2", 6, 128, 2,
                        {"full": 2e-5, "lora": 1e-4}, "lora"),
}

DATASETS = {  # name -> path under the data root (a labelled file, or a BEIR folder)
    "medical_abstracts": "medical_abstracts/medical_abstracts_test.jsonl.gz",
    "ohsumed23": "ohsumed23/ohsumed23.jsonl.gz",
    "reuters_r8": "reuters_r8/r8.jsonl.gz",
    "mr_movie_reviews": "mr_movie_reviews/mr.jsonl.gz",
    "scifact": "scifact",
}


@dataclass
class EvalData:
    """Texts to embed, and how to score their embeddings against the base's."""

    texts: list[str]
    labels: list[str] | None = None  # labelled sets: LOO kNN
    task: Any = None  # retrieval: a lastlayer.evaluation.suite.RetrievalTask
    train_docs: list[str] | None = None

    @property
    def metric(self) -> str:
        return "knn_accuracy" if self.labels is not None else "ndcg@10"

    def score(self, vectors: Any) -> tuple[float, list[bool] | None]:
        """(metric value, per-document correctness for paired deltas, if any)."""
        from lastlayer.evaluation.metrics import knn_accuracy

        x = vectors.numpy()
        if self.labels is not None:
            result = knn_accuracy(x, self.labels, k=10, metric="euclidean")
            return result.accuracy, result.correct.tolist()
        n = len(self.task.docs)
        return self.task.score(x[:n], x[n:])["ndcg@10"], None


def held_out_split(data: str, max_docs: int, seed: int) -> tuple[Any, list[str]]:
    """``(held-out EvalSet, training documents)`` of a labelled corpus: the held-out
    documents are never trained on, and both are chosen exactly as ``lastlayer train``
    chooses them for this data and seed."""
    from lastlayer.evaluation.datasets import load_eval_set
    from lastlayer.training.data import training_documents

    cfg = EvalConfig(data=data, max_docs=max_docs)
    held_out = load_eval_set(cfg, seed)
    recipe = Recipe(data=DataConfig(train=data), eval=cfg, seed=seed, output_dir="unused")
    return held_out, training_documents(recipe, held_out)


def eval_data(dataset: str, data_root: Path) -> EvalData:
    """The held-out evaluation texts and the training documents of a data set."""
    from lastlayer.evaluation.datasets import read_beir
    from lastlayer.evaluation.suite import retrieval_task

    path = data_root / DATASETS[dataset]
    if path.is_dir():  # BEIR: train on the whole corpus text, score the test queries
        task = retrieval_task(path, "test", max_docs=EVAL_DOCS, seed=EVAL_SEED)
        return EvalData(task.docs + task.queries, task=task, train_docs=read_beir(path).docs)
    held, docs = held_out_split(str(path), EVAL_DOCS, EVAL_SEED)
    return EvalData(held.texts, labels=held.labels, train_docs=docs)


def crop_pairs(docs: list[str], total_pairs: int, seed: int):
    """Exactly the crop pairs lastlayer's trainer draws (``PairStream``, seeded per pair)."""
    from lastlayer.training.pairs import DocumentStream, PairStream

    return PairStream(DocumentStream(docs, total_pairs, seed), ObjectiveConfig(kind="crop"), seed)


def portable(path: Path) -> str:
    """A data path as a recipe should hold it: relative to the project root."""
    return os.path.relpath(path, ROOT)


def recipe(spec: ModelSpec, data: Path, *, kind: str, k: int, objective: str, steps: int,
           batch_size: int, lr: float, cached_pairs: int, seed: int, output_dir: str,
           extra: tuple[str, ...] = ()) -> Recipe:
    """The recipe of one run on ``data``: what ``lastlayer train`` runs to give its row
    (the same held-out documents, pairs and training; the artifacts' ``recipe.yaml``).

    Args:
        extra: further ``dotted.key=value`` overrides.
    """
    evaluation = [] if data.is_dir() else [f"eval.data={portable(data)}",
                                           f"eval.max_docs={EVAL_DOCS}"]
    return load_recipe(None, [
        f"model.name_or_path={spec.name_or_path}", f"model.max_length={spec.max_length}",
        f"adapter.kind={kind}", f"adapter.top_k={k}", f"objective.kind={objective}",
        f"data.train={portable(data)}", *evaluation, f"train.max_steps={steps}",
        f"train.batch_size={batch_size}", f"train.lr={lr}", f"train.cached_pairs={cached_pairs}",
        f"seed={seed}", *extra, f"output_dir={output_dir}",
    ])
