"""Train a top-k adapter from a recipe: the whole job, from the recipe to the artifact.

``run(recipe)`` (``lastlayer.train``, ``lastlayer train``) is the job in three steps that can
also be called one by one:

- :func:`prepare`: the accelerator and seed, the held-out labelled documents, the training
  documents (:mod:`~lastlayer.training.data`), the encoder, ``adapter.top_k: auto``
  (:mod:`~lastlayer.training.choose_k`), the base model's kNN (keeping block L-k's inputs of
  the held-out documents), and the top-k adapter attached with the objective's model
  switches (:mod:`~lastlayer.training.attach`);
- :func:`fit`: the loop (:mod:`~lastlayer.training.loop`), ``train.max_steps`` optimizer
  steps from fresh or cached views;
- :func:`finish`: the adapted model's kNN, the routing signature and the artifact saved
  atomically (:mod:`~lastlayer.training.assemble`), the checkpoints removed, and a
  before/after table (:mod:`~lastlayer.training.report`).

Every pass of the job runs in the run's precision: under ``train.mixed_precision: bf16``
(``auto`` where the hardware multiplies bf16 natively) the inference passes around
training (choosing k, caching pairs, both kNN measurements, the routing signature) run
under the same autocast as the training steps, so a bf16 run is faster end to end and
measures the precision it was trained in; the weights stay float32 throughout.

Both kNN measurements run the inference engine's head type
(:class:`~lastlayer.core.heads.Head`): the base's own top-k blocks before, and after training
the trained blocks the adapter's kind picks out of training's attached copy
(:func:`~lastlayer.core.heads.trained_head`), pooled as the artifact records, so
``eval.json`` measures what the ``Embedder`` runs. The held-out sample's block L-k inputs are
kept from the base pass (the bottom is the base's in both), so the adapted pass runs the
head alone on them.

The same code runs on one CPU, one GPU, or many processes: launch it with
``accelerate launch -m lastlayer train RECIPE`` or ``torchrun --nproc_per_node N -m
lastlayer train RECIPE``. ``train.batch_size`` is per process; the negatives of the
InfoNCE loss are the global batch (embeddings are gathered with gradients).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lastlayer.config import AUTO, Recipe
from lastlayer.core.adapters import check_top_k, folder_size, trainable_parameters
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.heads import embed_from_inputs, embed_keeping_inputs, model_head, trained_head
from lastlayer.evaluation.datasets import EvalSet, load_eval_set
from lastlayer.evaluation.metrics import KnnResult
from lastlayer.training.accelerator import make_accelerator
from lastlayer.training.assemble import check_output, routing_signature, save_artifact
from lastlayer.training.attach import attach_for_training
from lastlayer.training.checkpoint import remove_checkpoints
from lastlayer.training.choose_k import KChoice, choose_top_k, resolved
from lastlayer.training.data import training_documents
from lastlayer.training.loop import TrainResult, train_adapter
from lastlayer.training.pairs import CachedPairStream
from lastlayer.training.report import eval_report, evaluate_knn, print_report


@dataclass
class TrainingJob:
    """Everything :func:`fit` and :func:`finish` need, as :func:`prepare` leaves it.

    Attributes:
        recipe: The resolved recipe.
        accelerator: The ``accelerate.Accelerator`` of this run (one process or many).
        encoder: The encoder; its model carries the trainable top-k adapter.
        base_model: The model before the adapter was attached (its layer summary goes
            into ``lastlayer.json``).
        docs: The training documents (held-out ones excluded).
        held_out: The held-out labelled documents, or None without ``eval.data``.
        base: The base model's kNN on ``held_out``; None when not measured, and on every
            process but the main one.
        eval_cache: Block L-k's inputs of the held-out documents (main process), so the
            adapted model's kNN runs only the top-k blocks.
        pairs: Cached pairs to train from, built earlier by
            :func:`~lastlayer.training.pairs.cached_pair_stream`; by default
            ``train.cached_pairs`` decides between cached and fresh views.
        top_k_choice: How ``adapter.top_k: auto`` was resolved (None for a given k); the
            recipe then holds the chosen integer.
    """

    recipe: Recipe
    accelerator: Any
    encoder: Encoder
    base_model: nn.Module
    docs: list[str]
    held_out: EvalSet | None = None
    base: KnnResult | None = None
    eval_cache: list[torch.Tensor] = field(default_factory=list)
    pairs: CachedPairStream | None = None
    top_k_choice: KChoice | None = None


@dataclass
class RunResult:
    """What a finished run leaves: the trained encoder, its measurements and artifact.

    Attributes:
        encoder: The encoder with the trained adapter attached (ready to ``encode``).
        metrics: The content of ``eval.json`` (None without ``eval.data``, and on every
            process but the main one).
        output_dir: The saved artifact (None on every process but the main one).
        train: The loop's step history and view statistics.
    """

    encoder: Encoder
    metrics: dict[str, Any] | None
    output_dir: Path | None
    train: TrainResult


def prepare(recipe: Recipe, *, encoder: Encoder | None = None,
            documents: list[str] | None = None, evaluate: bool = True) -> TrainingJob:
    """Everything before the first optimizer step.

    Makes a fresh accelerator (so several runs can follow each other in one process),
    seeds every RNG, holds out ``eval.data``'s labelled sample, reads the training
    documents, loads the encoder, resolves ``adapter.top_k: auto`` on the base and the
    training documents (:mod:`lastlayer.training.choose_k`), measures the base model's kNN
    on the held-out sample and attaches the top-k adapter with the objective's model
    switches. The job's recipe holds the integer top_k that is trained.

    Args:
        recipe: The resolved recipe.
        encoder: An encoder already loaded (its ``model`` gets the adapter), instead of
            loading ``recipe.model``; for callers that train many adapters on one base.
        documents: Training documents already in memory, instead of reading ``data.train``
            (the held-out ones are still left out when ``evaluate`` is on).
        evaluate: Hold out ``eval.data``'s sample, measure the base now and the adapter in
            :func:`finish`. False skips the sample altogether (nothing measured, nothing
            read from ``eval.data``): pass ``documents`` that already leave it out.

    Raises:
        ConfigError, DataError, ModelNotFoundError: Bad recipe, data, or model.
    """
    from accelerate.utils import set_seed

    check_output(recipe)  # before anything slow: the artifact must be writable at the end
    accelerator = make_accelerator(recipe)
    set_seed(recipe.seed, device_specific=True)
    accelerator.print(f"Resolved recipe:\n---\n{recipe.to_yaml()}---")
    held_out = load_eval_set(recipe.eval, recipe.seed) if evaluate else None
    docs = training_documents(recipe, held_out, documents)
    accelerator.print(f"Training on {len(docs)} documents from {recipe.data.train}"
                      + (f"; {len(held_out.texts)} held out for kNN" if held_out else ""))

    if encoder is None:
        encoder = load_encoder(recipe.model, device=accelerator.device)
    accelerator.print(f"Base model: {encoder.resolved.hub_id} from {encoder.resolved.source}"
                      if encoder.resolved else "Base model: given in memory")
    choice = None
    if recipe.adapter.top_k == AUTO:  # before the base kNN: its cache depends on k
        with accelerator.autocast():  # the model passes only; the scores are float32
            choice = choose_top_k(encoder, recipe, docs, held_out,
                                  progress=accelerator.is_local_main_process)
        recipe = resolved(recipe, choice)
        accelerator.print(choice.summary())
    check_top_k(encoder.model, recipe.adapter.top_k)
    base, cache, top_k = None, [], recipe.adapter.top_k
    if held_out is not None and accelerator.is_main_process:
        # keep block L-k's inputs: the adapted pass in finish() reuses them
        with accelerator.autocast():
            vectors, cache = embed_keeping_inputs(encoder, held_out.texts,
                                                  model_head(encoder, top_k),
                                                  recipe.eval.batch_size, "embed (base)")
        base = evaluate_knn(vectors, held_out, recipe.eval)

    base_model = encoder.model
    for message in attach_for_training(encoder, recipe):
        accelerator.print(message)
    trainable, total = trainable_parameters(encoder.model)
    accelerator.print(f"Trainable parameters: {trainable:,} of {total:,} "
                      f"({recipe.adapter.kind}, top {recipe.adapter.top_k} layers)")
    return TrainingJob(recipe, accelerator, encoder, base_model, docs, held_out, base, cache,
                       top_k_choice=choice)


def fit(job: TrainingJob) -> TrainResult:
    """Run the job's ``train.max_steps`` optimizer steps (see :func:`train_adapter`)."""
    return train_adapter(job.encoder, job.docs, job.recipe, job.accelerator, pairs=job.pairs)


def finish(job: TrainingJob, result: TrainResult) -> RunResult:
    """Measure the adapter, save the artifact, remove the checkpoints, print the table.

    Only the main process measures and saves; the others wait for it and return a result
    without metrics or folder.
    """
    recipe, accelerator = job.recipe, job.accelerator
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return RunResult(job.encoder, None, None, result)
    metrics = None
    if job.base is not None:
        top_k = recipe.adapter.top_k
        head = trained_head(job.encoder, recipe.adapter.kind, top_k)
        with accelerator.autocast():
            vectors = embed_from_inputs(job.encoder, job.held_out.texts, job.eval_cache, head,
                                        recipe.eval.batch_size,
                                        f"embed (adapted, top {top_k} layers from cache)")
        adapted = evaluate_knn(vectors, job.held_out, recipe.eval)
        metrics = eval_report(job.base, adapted, job.held_out, recipe)
    signature = routing_signature(job.encoder, job.docs, recipe, accelerator)
    out_dir = save_artifact(job.encoder, recipe, result, job.base_model, metrics,
                            signature=signature, top_k_choice=job.top_k_choice)
    remove_checkpoints(recipe)
    print_report(metrics, folder_size(out_dir), out_dir, result.view_stats, job.top_k_choice)
    return RunResult(job.encoder, metrics, out_dir, result)


def run(recipe: Recipe) -> RunResult:
    """Train, evaluate and save the adapter a recipe describes: :func:`prepare`,
    :func:`fit` and :func:`finish` in order.

    Raises:
        ConfigError, DataError, ModelNotFoundError: Bad recipe, data, or model.
    """
    job = prepare(recipe)
    return finish(job, fit(job))
