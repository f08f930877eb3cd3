"""``adapter.top_k: auto``: choose how many top blocks to train, before training.

Two signals give a per-layer curve of the base model; the layer probe's rule
(:func:`lastlayer.evaluation.probe.recommend_top_k`: the first layer within one standard
error of the best one is the plateau ``p``; ``k = L - p + 1``, clipped to ``[2, L]``) turns
the curve into k.

- ``crops`` (the default, label-free): ``adapter.top_k_docs`` training documents, each cut
  into two random crops by the project's own crop views (seeded per pair as in training),
  are embedded with every hidden state; a layer's score is how often a crop's nearest
  neighbour (cosine) among the other document's crops of its batch is its own partner,
  averaged over both directions (top-1 in-batch pair retrieval, batches of
  ``train.batch_size`` as in training); every crop is one query, so the rule's standard
  error is taken over 2N queries. It asks the training task's own question (can
  this layer tell which two crops come from one document?) of the base, on the training
  documents only: the held-out documents are never looked at.
- ``probe`` (labelled): leave-one-out kNN accuracy per layer, as ``lastlayer probe``
  measures it, on up to ``adapter.top_k_docs`` labelled documents of ``eval.data`` that are
  NOT in the held-out sample (so the evaluation still measures documents that chose
  nothing).

The choice, its curve and what it cost are returned as a :class:`KChoice`, which training
writes into ``lastlayer.json`` (``top_k_choice``) and prints.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from lastlayer.config import ConfigError, EvalConfig, ObjectiveConfig, Recipe
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.layers import find_layer_stack
from lastlayer.corpus import DataError
from lastlayer.evaluation.datasets import EvalSet, load_eval_set
from lastlayer.evaluation.metrics import knn_accuracy
from lastlayer.evaluation.probe import RULE as PROBE_RULE
from lastlayer.evaluation.probe import layer_embeddings, recommend_top_k, rule_text
from lastlayer.training.accelerator import make_accelerator
from lastlayer.training.data import training_documents
from lastlayer.training.pairs import DocumentStream, PairStream

CROPS_MEASURE = (
    "top-1 in-batch crop-pair retrieval (cosine) per layer: two random crops of each of N "
    "training documents (the crop objective's views, seeded per pair), batches of the "
    "training batch size, both directions averaged"
)
PROBE_MEASURE = (
    "leave-one-out kNN accuracy per layer on N labelled documents of eval.data outside the "
    "held-out sample"
)


@dataclass
class KChoice:
    """What ``top_k: auto`` chose and why (saved as ``top_k_choice`` in ``lastlayer.json``).

    Attributes:
        top_k: The chosen k.
        plateau_layer: p, the first layer within one standard error of the best.
        best_layer: The layer with the best score.
        num_layers: L.
        signal: ``crops`` or ``probe``.
        measure: What the curve measures.
        curve: The score of layers 0..L (0 = embedding output).
        num_documents: The documents the curve was measured on.
        num_queries: The N of the rule's standard error: the queries each score averages
            over (crops: two per document, each crop one retrieval; probe: one per
            document).
        seconds: Wall time of the measurement (model already loaded).
        rule: The rule that turned the curve into k.
    """

    top_k: int
    plateau_layer: int
    best_layer: int
    num_layers: int
    signal: str
    measure: str
    curve: list[float]
    num_documents: int
    num_queries: int
    seconds: float
    rule: str = PROBE_RULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the choice and where it came from."""
        return (f"top_k: auto -> {self.top_k} ({self.signal} signal: plateau at layer "
                f"{self.plateau_layer} of {self.num_layers}, best layer {self.best_layer}; "
                f"{self.num_documents} documents, {self.seconds:.1f}s)")


# ---------------------------------------------------------------------------------------
# The label-free crop signal.


def crop_pairs(docs: list[str], objective: ObjectiveConfig, seed: int,
               num_docs: int) -> tuple[list[str], list[str]]:
    """Two crops of each of ``num_docs`` seeded training documents (distinct documents when
    the corpus has that many), made as training makes them: pair ``i`` from
    ``random.Random(f"{seed}:{i}")``. A recipe whose objective is not ``crop`` still gets
    crops (its own sentence settings): dropout views are one text twice, which any layer
    matches perfectly and so says nothing about layers."""
    crops = objective if objective.kind == "crop" else replace(objective, kind="crop",
                                                                model_dropout=True)
    stream = PairStream(DocumentStream(docs, min(num_docs, len(docs)), seed), crops, seed)
    pairs = [stream[i] for i in range(len(stream))]
    return [a for a, _ in pairs], [b for _, b in pairs]


def pair_retrieval(a: np.ndarray, b: np.ndarray, batch_size: int) -> float:
    """Top-1 in-batch retrieval accuracy of L2-normalised pairs ``a[i] <-> b[i]``.

    Rows are cut into consecutive batches of ``batch_size`` (the last may be smaller; a
    batch of one is skipped: nothing to tell apart); in each, a row is right when its own
    partner is its most similar row of the other side. Both directions are averaged.

    The similarities are numpy float32 products, on purpose: a raw LM's pooled states of
    different texts have cosines within ~0.005 of each other in its middle layers, and a
    torch matmul under a bf16 autocast (which a bf16 training run is inside) rounds them to
    bf16's 2**-8 steps, ties most pairs and sinks those layers' scores (SmolLM2-135M's
    layers 12-23: 0.10-0.48 instead of 0.55-0.61).
    """
    right = total = 0
    for start in range(0, len(a), batch_size):
        x, y = a[start:start + batch_size], b[start:start + batch_size]
        if len(x) < 2:
            continue
        sim = np.asarray(x, np.float32) @ np.asarray(y, np.float32).T
        own = np.arange(len(x))
        right += int((sim.argmax(1) == own).sum()) + int((sim.argmax(0) == own).sum())
        total += 2 * len(x)
    if total == 0:
        raise ValueError("pair_retrieval needs at least two pairs in a batch.")
    return right / total


def crop_curve(encoder: Encoder, docs: list[str], objective: ObjectiveConfig, seed: int,
               num_docs: int, batch_size: int, progress: bool = True) -> tuple[list[float], int]:
    """The crop signal of every layer: (curve over layers 0..L, pairs measured)."""
    views_a, views_b = crop_pairs(docs, objective, seed, num_docs)
    if len(views_a) < 2:
        raise DataError("top_k: auto needs at least 2 training documents to compare crops.")
    layers = layer_embeddings(encoder, views_a + views_b, batch_size, progress,
                              "choose top_k (crops)")
    n = len(views_a)
    return [pair_retrieval(x[:n], x[n:], batch_size) for x in layers], n


def crop_queries(pairs: int) -> int:
    """The N of the rule's standard error for the crop signal: every crop is one retrieval
    query (as every document is one kNN query in the probe), so 2 per pair."""
    return 2 * pairs


# ---------------------------------------------------------------------------------------
# The labelled probe, on labelled documents outside the held-out sample.


def labelled_training_docs(recipe: Recipe, held_out: EvalSet | None,
                           num_docs: int) -> tuple[list[str], list[str]]:
    """Up to ``num_docs`` labelled documents of ``eval.data`` that are not held out.

    The held-out sample is what training reports on; choosing k on it would be choosing
    on the test set. These are the other rows of the same file (a seeded sample), minus
    any whose text is also held out.

    Raises:
        ConfigError: No ``eval.data``, or too few labelled documents outside the sample.
    """
    from lastlayer.corpus import read_labelled
    from lastlayer.evaluation.datasets import sample_rows

    cfg: EvalConfig = recipe.eval
    if cfg.data is None:
        raise ConfigError("adapter.top_k_signal=probe needs labelled eval.data; use "
                          "adapter.top_k_signal=crops (label-free) instead.")
    texts, labels = read_labelled(cfg.data, cfg.text_field, cfg.label_field)
    held_rows = sample_rows(len(texts), cfg.max_docs, recipe.seed)
    held = set(held_out.texts) if held_out is not None else set()
    # held_rows None: every row is held out
    taken = set(range(len(texts))) if held_rows is None else set(held_rows.tolist())
    free = [i for i in range(len(texts)) if i not in taken and texts[i] not in held]
    if len(free) < 10:
        raise ConfigError(
            f"adapter.top_k_signal=probe: only {len(free)} labelled documents of {cfg.data} "
            f"lie outside the held-out sample (eval.max_docs={cfg.max_docs}); lower "
            "eval.max_docs or use adapter.top_k_signal=crops.")
    rng = np.random.default_rng(recipe.seed)
    rows = rng.permutation(free)[:num_docs]
    return [texts[i] for i in rows], [labels[i] for i in rows]


# ---------------------------------------------------------------------------------------
# The choice.


def choose_top_k(encoder: Encoder, recipe: Recipe, docs: list[str],
                 held_out: EvalSet | None = None, progress: bool = True) -> KChoice:
    """Measure the recipe's ``adapter.top_k_signal`` on the base and apply the probe's rule.

    Args:
        encoder: The base encoder (no adapter attached).
        recipe: Its adapter section says the signal and ``top_k_docs``; seed and batch size
            as for training.
        docs: The training documents (held-out ones already removed).
        held_out: The held-out sample, which the ``probe`` signal must not use.
        progress: Show a progress bar.
    """
    cfg = recipe.adapter
    num_layers = find_layer_stack(encoder.model).num_layers
    start = time.perf_counter()
    if cfg.top_k_signal == "probe":
        texts, labels = labelled_training_docs(recipe, held_out, cfg.top_k_docs)
        layers = layer_embeddings(encoder, texts, recipe.eval.batch_size, progress,
                                  "choose top_k (probe)")
        curve = [knn_accuracy(x, labels, recipe.eval.k, recipe.eval.metric).accuracy
                 for x in layers]
        n, measure = len(texts), PROBE_MEASURE
        queries = n
    else:
        curve, n = crop_curve(encoder, docs, recipe.objective, recipe.seed, cfg.top_k_docs,
                              recipe.train.batch_size, progress)
        queries, measure = crop_queries(n), CROPS_MEASURE
    rule = PROBE_RULE if cfg.top_k_signal == "probe" else rule_text("crop-pair retrieval accuracy")
    seconds = time.perf_counter() - start
    if len(curve) != num_layers + 1:  # pragma: no cover - hidden_states is L + 1 long
        raise ValueError(f"expected {num_layers + 1} layers, measured {len(curve)}")
    k, plateau = recommend_top_k(curve, queries)
    return KChoice(k, plateau, int(np.argmax(curve)), num_layers, cfg.top_k_signal, measure,
                   [float(c) for c in curve], n, queries, round(seconds, 1), rule)


def choose_for_recipe(recipe: Recipe, progress: bool = True) -> KChoice:
    """What ``top_k: auto`` would choose for this recipe, without training (``lastlayer
    choose-k``): the same held-out sample left out, the same documents, the same base, in
    the precision training would measure it in (``train.mixed_precision``)."""
    held_out = load_eval_set(recipe.eval, recipe.seed)
    docs = training_documents(recipe, held_out)
    accelerator = make_accelerator(recipe)
    encoder = load_encoder(recipe.model, device=accelerator.device)
    with accelerator.autocast():
        return choose_top_k(encoder, recipe, docs, held_out, progress)


def resolved(recipe: Recipe, choice: KChoice) -> Recipe:
    """The recipe with the chosen integer ``adapter.top_k`` (what is trained and saved)."""
    return replace(recipe, adapter=replace(recipe.adapter, top_k=choice.top_k))
