"""Train a top-k adapter from a recipe: one readable Accelerate loop, then the artifact.

``run(recipe)`` is the whole job, in three steps that can also be called one by one:

- :func:`prepare`: the accelerator and seed, the held-out labelled documents, the training
  documents, the encoder, the base model's kNN (keeping block L-k's inputs of the held-out
  documents), and the top-k adapter attached with the objective's model switches;
- :func:`fit`: ``train.max_steps`` optimizer steps (crop / span / dropout views, InfoNCE
  over the global batch), from fresh or cached views;
- :func:`finish`: the adapted model's kNN, the artifact (PEFT files + lastlayer.json +
  recipe.yaml + eval.json + README.md) saved atomically, and a before/after table.

The same code runs on one CPU, one GPU, or many processes: launch it with
``accelerate launch -m lastlayer train RECIPE`` or ``torchrun --nproc_per_node N -m
lastlayer train RECIPE``. ``train.batch_size`` is per process; the negatives of the
InfoNCE loss are the global batch (embeddings are gathered with gradients).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lastlayer import artifact
from lastlayer.artifact import (
    RECIPE,
    ArtifactError,
    ArtifactMeta,
    BaseWeights,
    Embedding,
    Layers,
    Training,
    check_output_dir,
    side_files,
)
from lastlayer.config import AUTO, ConfigError, Recipe
from lastlayer.core.adapters import (
    attach,
    check_top_k,
    folder_size,
    layer_summary,
    save_adapter,
    trainable_parameters,
)
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.routing import RoutingSignature, signature_for_texts
from lastlayer.core.split import TopKHead, encode_from_cache, encode_with_cache
from lastlayer.corpus import DataError, read_texts
from lastlayer.evaluation.datasets import EvalSet, load_eval_set
from lastlayer.evaluation.metrics import KnnResult
from lastlayer.training.accelerator import make_accelerator
from lastlayer.training.choose_k import KChoice, choose_top_k, resolved
from lastlayer.training.loss import info_nce
from lastlayer.training.objectives import objective_for
from lastlayer.training.pairs import (
    CachedPairCollator,
    CachedPairStream,
    DocumentStream,
    PairCollator,
    PairStream,
    cached_pair_stream,
    embed_view,
    length_grouped_sampler,
)
from lastlayer.training.report import eval_report, evaluate_knn, print_report
from lastlayer.training.views import ViewStats

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Data: which documents are trained on (the held-out ones never are).


def training_documents(recipe: Recipe, held_out: EvalSet | None,
                       docs: list[str] | None = None) -> list[str]:
    """The training corpus, minus any document that is held out for evaluation.

    Args:
        recipe: Its ``data`` section names the corpus and caps it (``data.max_docs``).
        held_out: Documents to leave out, if any.
        docs: Documents already in memory, used instead of reading ``data.train``.
    """
    docs = read_texts(recipe.data.train, recipe.data.text_field) if docs is None else docs
    if held_out is not None:
        excluded = set(held_out.texts)
        docs = [d for d in docs if d not in excluded]
    if recipe.data.max_docs is not None:
        docs = docs[: recipe.data.max_docs]
    if len(docs) < 2:
        raise DataError(
            f"{recipe.data.train}: only {len(docs)} training documents remain after holding out "
            "the evaluation documents; use a larger corpus or a smaller eval.max_docs."
        )
    return docs


# ---------------------------------------------------------------------------------------
# The training loop.


@dataclass
class TrainResult:
    """What the loop did: per-step history and view statistics."""

    steps: int
    history: list[dict[str, float]]
    view_stats: ViewStats
    resumed_from: int = 0


def checkpoint_root(recipe: Recipe) -> Path:
    """Where periodic checkpoints go: next to the artifact, removed once it is saved."""
    out = Path(recipe.output_dir)
    return out.parent / f"{out.name}.checkpoints"


def latest_checkpoint(root: Path) -> tuple[Path, int] | None:
    """The newest ``step-N`` folder under ``root`` and its step, if any."""
    found = [(int(m.group(1)), p) for p in root.glob("step-*")
             if (m := re.fullmatch(r"step-(\d+)", p.name))]
    if not found:
        return None
    step, path = max(found)
    return path, step


def keep_trainable_weights_only(models, weights, output_dir) -> None:
    """Accelerate save hook: checkpoint the adapter's weights, not the frozen base."""
    for i, model in enumerate(models):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in weights[i].items() if k in trainable}


def train_adapter(
    encoder: Encoder, docs: list[str], recipe: Recipe, accelerator,
    pairs: CachedPairStream | None = None,
) -> TrainResult:
    """Run ``train.max_steps`` optimizer steps of the objective on ``docs``.

    Args:
        encoder: An encoder whose model already carries the (trainable) adapter.
        docs: Training documents.
        recipe: The resolved recipe.
        accelerator: An ``accelerate.Accelerator`` (one process or many).
        pairs: Cached pairs built earlier by :func:`~lastlayer.training.pairs.cached_pair_stream`
            (with ``k`` ≥ the adapter's ``top_k``), to reuse one cache across runs; by
            default ``train.cached_pairs`` decides between cached and fresh views.
    """
    from transformers import get_linear_schedule_with_warmup

    cfg, objective = recipe.train, recipe.objective
    params = [p for p in encoder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Not prepared: Accelerate would step it once per process; we step it once per update.
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps
    )
    per_step = cfg.batch_size * cfg.grad_accum_steps * accelerator.num_processes
    total = cfg.max_steps * per_step
    if pairs is None and cfg.cached_pairs:
        pairs = cached_pair_stream(encoder, docs, recipe, total, per_step)
    if pairs is not None:
        if pairs.k < recipe.adapter.top_k:
            raise ValueError(f"cached pairs hold inputs of block L-{pairs.k}, below which "
                             f"no adapter block may sit; the adapter has top_k="
                             f"{recipe.adapter.top_k}.")
        collate = CachedPairCollator(pairs, encoder.tokenizer.pad_token_id)
    else:
        pairs = PairStream(DocumentStream(docs, total, recipe.seed), objective, recipe.seed)
        collate = PairCollator(encoder)
    blocks = getattr(pairs, "k", recipe.adapter.top_k)  # blocks run per cached view
    # Its own generator: a DataLoader iterator otherwise draws from the global torch RNG when
    # it starts, which would shift the dropout masks of a resumed run.
    sampler = None
    if cfg.group_by_length and isinstance(pairs, CachedPairStream):
        sampler = length_grouped_sampler(pairs, cfg.batch_size, recipe.seed)
    loader = DataLoader(pairs, batch_size=cfg.batch_size, collate_fn=collate, sampler=sampler,
                        drop_last=True, generator=torch.Generator().manual_seed(recipe.seed))
    # Cached views run only the top blocks: through a head that holds the model's own
    # parameters (the adapter's included), prepared in the model's place so that several
    # processes all-reduce its gradients.
    cached = isinstance(pairs, CachedPairStream)
    trained = TopKHead(encoder.model, blocks) if cached else encoder.model
    model, optimizer, loader = accelerator.prepare(trained, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(keep_trainable_weights_only)

    start = _maybe_resume(recipe, accelerator)
    if start:
        loader = accelerator.skip_first_batches(loader, start * cfg.grad_accum_steps)
    step, history = start, []
    bar = tqdm(total=cfg.max_steps, initial=start, desc="train", unit="step",
               disable=not accelerator.is_local_main_process)
    model.train()
    for batch in loader:
        with accelerator.accumulate(model):
            a = embed_view(encoder, model, batch["a"])  # (B, d) view 1
            b = embed_view(encoder, model, batch["b"])  # (B, d) view 2
            loss, acc = info_nce(a, b, objective.temperature, objective.symmetric)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        step += 1
        record = {
            "step": step,
            "loss": accelerator.reduce(loss.detach(), "mean").item(),
            "accuracy": accelerator.reduce(acc.detach().float(), "mean").item(),
            "lr": scheduler.get_last_lr()[0],
        }
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            accelerator.save_state(str(checkpoint_root(recipe) / f"step-{step:06d}"))
        if step >= cfg.max_steps:
            break
    bar.close()
    if not cached:
        encoder.model = accelerator.unwrap_model(model)
    return TrainResult(step, history, pairs.stats, start)


def _maybe_resume(recipe: Recipe, accelerator) -> int:
    """Load the newest checkpoint when ``train.resume`` is set; return its step (or 0)."""
    if not recipe.train.resume:
        return 0
    found = latest_checkpoint(checkpoint_root(recipe))
    if found is None:
        log.warning("train.resume=true but no checkpoint under %s: starting from step 0.",
                    checkpoint_root(recipe))
        return 0
    path, step = found
    accelerator.load_state(str(path), strict=False)  # the checkpoint holds adapter weights only
    accelerator.print(f"Resumed from {path} (step {step}).")
    return step


# ---------------------------------------------------------------------------------------
# The job in three steps: prepare, fit, finish.


def attach_for_training(encoder: Encoder, recipe: Recipe) -> list[str]:
    """Attach the recipe's adapter with its objective's model switches; say what changed.

    What is switched before the adapter goes on (e.g. ``objective.model_dropout: false``)
    leaves the adapter's own settings alone; what is switched after reaches the adapter
    too (the ``dropout`` objective). See :mod:`lastlayer.training.objectives`.
    """
    objective = objective_for(recipe.objective)
    messages = objective.before_attach(encoder.model, recipe.objective)
    attach(encoder, recipe.adapter)
    return messages + objective.after_attach(encoder.model, recipe.objective)


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
        choice = choose_top_k(encoder, recipe, docs, held_out,
                              progress=accelerator.is_local_main_process)
        recipe = resolved(recipe, choice)
        accelerator.print(choice.summary())
    check_top_k(encoder.model, recipe.adapter.top_k)
    base, cache, top_k = None, [], recipe.adapter.top_k
    if held_out is not None and accelerator.is_main_process:
        # keep block L-k's inputs: the adapted pass in finish() reuses them
        vectors, cache = encode_with_cache(encoder, held_out.texts, top_k,
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
        vectors = encode_from_cache(job.encoder, job.held_out.texts, job.eval_cache, top_k,
                                    recipe.eval.batch_size,
                                    f"embed (adapted, top {top_k} layers from cache)")
        adapted = evaluate_knn(vectors, job.held_out, recipe.eval)
        metrics = eval_report(job.base, adapted, job.held_out, recipe)
    signature = routing_signature(job)
    out_dir = save_artifact(job.encoder, recipe, result, job.base_model, metrics,
                            signature=signature, top_k_choice=job.top_k_choice)
    shutil.rmtree(checkpoint_root(recipe), ignore_errors=True)
    print_report(metrics, folder_size(out_dir), out_dir, result.view_stats, job.top_k_choice)
    return RunResult(job.encoder, metrics, out_dir, result)


def routing_signature(job: TrainingJob) -> RoutingSignature | None:
    """The adapter's routing signature, from a seeded sample of ``train.routing_docs``
    training documents (None when that is 0).

    The adapter leaves the blocks below L-k as they are, so their outputs are the base's:
    this is one bottom-only pass over the sample (no top block, no backward), timed and
    printed so its cost can be set against training time.
    """
    recipe = job.recipe
    if not recipe.train.routing_docs:
        return None
    start = time.perf_counter()
    signature = signature_for_texts(
        job.encoder, job.docs, recipe.adapter.top_k, recipe.train.routing_docs, recipe.seed,
        recipe.eval.batch_size, progress=job.accelerator.is_local_main_process,
    )
    job.accelerator.print(
        f"Routing signature: {signature.num_documents} documents, "
        f"{len(signature.centroids)} centroids at block {signature.layer}, "
        f"{time.perf_counter() - start:.1f}s")
    return signature


def run(recipe: Recipe) -> RunResult:
    """Train, evaluate and save the adapter a recipe describes: :func:`prepare`,
    :func:`fit` and :func:`finish` in order.

    Raises:
        ConfigError, DataError, ModelNotFoundError: Bad recipe, data, or model.
    """
    job = prepare(recipe)
    return finish(job, fit(job))


# ---------------------------------------------------------------------------------------
# The artifact.


def artifact_metadata(
    encoder: Encoder, recipe: Recipe, result: TrainResult, base_model,
    top_k_choice: KChoice | None = None,
) -> ArtifactMeta:
    """The content of ``lastlayer.json``: everything needed to rebuild and trust the adapter."""
    r = encoder.resolved
    base = BaseWeights(
        model=r.hub_id, origin=r.origin, fingerprint=encoder.fingerprint, revision=r.revision,
        commit=r.commit, package=r.package, package_version=r.package_version, file=r.file,
        dequantized_gguf=r.gguf_file is not None, dtype=recipe.model.dtype,
        quantization=recipe.model.quantization,
    )
    return ArtifactMeta(
        name=Path(recipe.output_dir).name, base=base,
        embedding=Embedding(encoder.pooling, encoder.normalize, encoder.max_length),
        adapter=asdict(recipe.adapter), objective=asdict(recipe.objective),
        layers=Layers(**layer_summary(base_model, recipe.adapter.top_k)),
        training=Training(data=recipe.data.train, steps=result.steps,
                          final_loss=result.history[-1]["loss"] if result.history else None,
                          view_stats=asdict(result.view_stats)),
        top_k_choice=top_k_choice.to_dict() if top_k_choice is not None else None,
    )


def check_output(recipe: Recipe) -> None:
    """Fail before any model is loaded when the artifact could not be saved at the end."""
    try:
        check_output_dir(recipe.output_dir, recipe.overwrite)
    except ArtifactError as err:
        raise ConfigError(str(err)) from None


def save_artifact(encoder: Encoder, recipe: Recipe, result: TrainResult, base_model,
                  metrics: dict | None, output_dir: str | Path | None = None,
                  overwrite: bool | None = None,
                  signature: RoutingSignature | None = None,
                  top_k_choice: KChoice | None = None) -> Path:
    """Write the artifact (PEFT files + lastlayer.json + recipe.yaml + eval.json + model card
    + train log + routing signature, if given) atomically to ``output_dir`` (default: the
    recipe's); return the folder. ``overwrite`` (default: the recipe's) allows replacing an
    existing artifact there. ``top_k_choice``: the evidence of ``adapter.top_k: auto``,
    saved in ``lastlayer.json`` and as a comment above the recipe."""
    meta = artifact_metadata(encoder, recipe, result, base_model, top_k_choice)
    recipe_yaml = recipe.to_yaml()
    if top_k_choice is not None:  # the saved recipe trains the chosen k; say where it came from
        recipe_yaml = (f"# adapter.top_k was auto: {top_k_choice.summary()}; evidence in "
                       f"{artifact.METADATA} (top_k_choice).\n" + recipe_yaml)
    files = side_files(meta, metrics, recipe_yaml, result.history)
    overwrite = recipe.overwrite if overwrite is None else overwrite
    return save_adapter(encoder.model, output_dir or recipe.output_dir, files,
                        overwrite=overwrite, signature=signature)


def sign_artifact(
    folder: str | Path, encoder: Encoder | None = None, data: str | None = None,
    eval_data: str | None = None, max_docs: int | None = None, progress: bool = True,
) -> RoutingSignature:
    """(Re)compute an existing artifact's routing signature from its training data.

    For artifacts saved without one (trained by an older lastlayer, or with
    ``train.routing_docs: 0``): reads the artifact's ``recipe.yaml``, takes its training
    documents minus the held-out evaluation sample, exactly as training does, and writes
    the signature training would have written (same sample, same seed) as
    ``routing.safetensors``. The adapter's weights and other files are left as they are.

    Args:
        folder: The artifact.
        encoder: Its base model already loaded (to sign several artifacts on one base);
            default: loaded from the artifact's ``lastlayer.json``.
        data: The training corpus, where ``data.train`` of the recipe is not (a path
            relative to another working directory, a moved file).
        eval_data: The same for ``eval.data`` (its documents are left out).
        max_docs: Documents to sample (default: the recipe's ``train.routing_docs``, or
            1000 where that is 0).
        progress: Show a progress bar.

    Raises:
        ArtifactError: ``folder`` is not a valid artifact.
        DataError: The training data cannot be read.
    """
    from lastlayer.config import load_recipe
    from lastlayer.core.adapters import model_config_of
    from lastlayer.core.routing import DEFAULT_MAX_DOCS, write_signature

    meta = artifact.read(folder)
    overrides = [f"data.train={data}"] * bool(data) + [f"eval.data={eval_data}"] * bool(eval_data)
    recipe = load_recipe(Path(folder) / RECIPE, overrides)
    held_out = load_eval_set(recipe.eval, recipe.seed)
    docs = training_documents(recipe, held_out)
    encoder = encoder or load_encoder(model_config_of(folder))
    signature = signature_for_texts(
        encoder, docs, meta.top_k, max_docs or recipe.train.routing_docs or DEFAULT_MAX_DOCS,
        recipe.seed, recipe.eval.batch_size, progress,
    )
    write_signature(folder, signature)
    artifact.read(folder)  # the file just written fits the artifact
    return signature
