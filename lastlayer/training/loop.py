"""Train a top-k adapter from a recipe: one readable Accelerate loop, then the artifact.

``run(recipe)`` is the whole job, top to bottom:
load the encoder -> hold out labelled documents -> kNN of the base -> attach the top-k
adapter -> train (crop / span / dropout views, InfoNCE over the global batch) -> kNN of
the adapted model -> save the artifact (PEFT files + lastlayer.json + recipe.yaml +
eval.json + README.md) atomically -> print a before/after table.

The same code runs on one CPU, one GPU, or many processes: launch it with
``accelerate launch -m lastlayer train RECIPE`` or ``torchrun --nproc_per_node N -m
lastlayer train RECIPE``. ``train.batch_size`` is per process; the negatives of the
InfoNCE loss are the global batch (embeddings are gathered with gradients).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import lastlayer
from lastlayer.artifact import model_card
from lastlayer.config import ConfigError, EvalConfig, Recipe
from lastlayer.core.adapters import (
    attach,
    folder_size,
    layer_summary,
    save_adapter,
    trainable_parameters,
)
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.split import encode_from_cache, encode_with_cache
from lastlayer.corpus import DataError, read_texts
from lastlayer.evaluation.datasets import EvalSet, load_eval_set
from lastlayer.evaluation.metrics import KnnResult, knn_accuracy, paired_delta
from lastlayer.training.loss import info_nce
from lastlayer.training.objectives import disable_dropout, enable_dropout
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
from lastlayer.training.views import ViewStats

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Data: which documents are trained on; the held-out kNN sample is
# lastlayer.evaluation.datasets.load_eval_set (probe and eval draw the same one).


def training_documents(recipe: Recipe, held_out: EvalSet | None) -> list[str]:
    """The training corpus, minus any document that is held out for evaluation."""
    docs = read_texts(recipe.data.train, recipe.data.text_field)
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
    model, optimizer, loader = accelerator.prepare(encoder.model, optimizer, loader)
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
            a = embed_view(encoder, model, batch["a"], blocks)  # (B, d) view 1
            b = embed_view(encoder, model, batch["b"], blocks)  # (B, d) view 2
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
# Evaluation, artifact and report.


def evaluate_knn(vectors: torch.Tensor, held_out: EvalSet, cfg: EvalConfig) -> KnnResult:
    """Leave-one-out kNN accuracy of embeddings of the held-out documents."""
    return knn_accuracy(vectors.numpy(), held_out.labels, cfg.k, cfg.metric)


def eval_report(base: KnnResult, adapted: KnnResult, held_out: EvalSet, recipe: Recipe) -> dict:
    """The content of ``eval.json``: base and adapted side by side, and how they were measured."""
    cfg = recipe.eval
    return {
        "base": {"knn_accuracy": base.accuracy},
        "adapted": {"knn_accuracy": adapted.accuracy},
        "delta": paired_delta(base.correct, adapted.correct, seed=recipe.seed),
        "data": held_out.source,
        "num_documents": len(held_out.texts),
        "protocol": (
            f"kNN accuracy, k={cfg.k}, {cfg.metric}, leave-one-out over {len(held_out.texts)} "
            f"labelled documents sampled with seed {recipe.seed} from {held_out.source} and "
            "held out of training; delta CI: paired bootstrap over documents."
        ),
    }


def artifact_metadata(encoder: Encoder, recipe: Recipe, result: TrainResult, base_model) -> dict:
    """The content of ``lastlayer.json``: everything needed to rebuild and trust the adapter."""
    resolved = encoder.resolved
    weights = f"GGUF file {resolved.gguf_file}, dequantized" if resolved.gguf_file else "original"
    return {
        "name": Path(recipe.output_dir).name,
        "lastlayer_version": lastlayer.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": resolved.hub_id,
        "base_revision": recipe.model.revision,
        "base_fingerprint": encoder.fingerprint,
        "base_source": f"{resolved.source}; weights: {weights}",
        "base_weights": weights,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "max_length": encoder.max_length,
        "dtype": recipe.model.dtype,
        "quantization": recipe.model.quantization,
        "adapter": asdict(recipe.adapter),
        "layers": layer_summary(base_model, recipe.adapter.top_k),
        "objective": asdict(recipe.objective),
        "train_data": recipe.data.train,
        "train_steps": result.steps,
        "view_stats": asdict(result.view_stats),
        "final_loss": result.history[-1]["loss"] if result.history else None,
    }


def print_report(metrics: dict | None, size: int, out_dir: Path, stats: ViewStats) -> None:
    """The before/after table, saying plainly when the adapter is worse than its base."""
    print(f"\nSaved {out_dir} ({size / 1024:.0f} KB)")
    print(f"Views (main process): {stats.sentence_crops} sentence crops, "
          f"{stats.token_span_fallbacks} short "
          f"documents fell back to word-span crops, {stats.dropped_empty} empty dropped.")
    if metrics is None:
        print("No eval.data in the recipe: nothing measured.")
        return
    base, adapted = metrics["base"]["knn_accuracy"], metrics["adapted"]["knn_accuracy"]
    d = metrics["delta"]
    print(f"\n{metrics['protocol']}\n")
    print(f"  {'model':<10}{'kNN accuracy':>14}")
    print(f"  {'base':<10}{base:>14.4f}")
    print(f"  {'adapted':<10}{adapted:>14.4f}")
    ci = f"95% CI [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}]"
    print(f"  {'delta':<10}{d['delta']:>+14.4f}   {ci}")
    if d["ci95_high"] < 0:
        print("\nWARNING: the adapter is WORSE than its base on held-out documents. "
              "Do not use it; see the README on when self-supervised training helps.")
    elif d["ci95_low"] <= 0:
        print("\nNote: the difference is within noise (the 95% CI includes 0).")
    else:
        print("\nThe adapter is better than its base beyond noise.")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX), per oneDNN.

    Without it (e.g. AVX2-only CPUs) torch runs bf16 matmuls in a slow fallback. A torch
    build without oneDNN cannot tell: then this answers True (no warning on a guess).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def make_accelerator(recipe: Recipe):
    """An ``Accelerator`` for the recipe.

    Refuses fp16 on CPU, where it silently runs fp32, and warns about bf16 on a CPU without
    native bf16 matmuls, where a step is many times slower than in fp32.
    """
    from accelerate import Accelerator

    cfg = recipe.train
    on_cpu = cfg.cpu or not torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and on_cpu:
        raise ConfigError(
            "train.mixed_precision=fp16 on CPU silently runs in fp32; use no (or bf16 on a "
            "CPU with AVX512-BF16 or AMX)."
        )
    if cfg.mixed_precision == "bf16" and on_cpu and not cpu_has_fast_bf16():
        log.warning(
            "train.mixed_precision=bf16 on a CPU without native bf16 matmuls (no AVX512-BF16 "
            "or AMX): torch falls back to slow kernels and a training step can be 10-20x "
            "slower than fp32 (docs/speed.md). Set train.mixed_precision=no here."
        )
    return Accelerator(
        cpu=cfg.cpu, mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
    )


def attach_for_training(encoder: Encoder, recipe: Recipe) -> list[str]:
    """Attach the recipe's adapter with the dropout its objective wants; say what changed.

    ``objective.model_dropout: false`` switches the model's own dropout off *before* the
    adapter is attached (so ``adapter.dropout`` is kept); the ``dropout`` objective switches
    dropout on where the model has none, adapter included.
    """
    messages = []
    if not recipe.objective.model_dropout:
        changed = disable_dropout(encoder.model)
        messages.append(f"objective.model_dropout=false: switched dropout off in {changed} "
                        "places.")
    attach(encoder, recipe.adapter)
    if recipe.objective.kind == "dropout":
        changed = enable_dropout(encoder.model, recipe.objective.dropout)
        messages.append(f"Dropout objective: switched dropout on in {changed} places.")
    return messages


def run(recipe: Recipe) -> dict[str, Any]:
    """Train, evaluate and save the adapter a recipe describes; return ``eval.json``'s content.

    Raises:
        ConfigError, DataError, ModelNotFoundError: Bad recipe, data, or model.
    """
    from accelerate.utils import set_seed

    accelerator = make_accelerator(recipe)
    set_seed(recipe.seed, device_specific=True)
    accelerator.print(f"Resolved recipe:\n---\n{recipe.to_yaml()}---")
    held_out = load_eval_set(recipe.eval, recipe.seed)
    docs = training_documents(recipe, held_out)
    accelerator.print(f"Training on {len(docs)} documents from {recipe.data.train}"
                      + (f"; {len(held_out.texts)} held out for kNN" if held_out else ""))

    encoder = load_encoder(recipe.model, device=accelerator.device)
    accelerator.print(f"Base model: {encoder.resolved.hub_id} from {encoder.resolved.source}")
    main = accelerator.is_main_process
    base, cache, top_k = None, [], recipe.adapter.top_k
    if held_out is not None and main:  # keep block L-k's inputs: the adapted pass reuses them
        vectors, cache = encode_with_cache(encoder, held_out.texts, top_k,
                                           recipe.eval.batch_size, "embed (base)")
        base = evaluate_knn(vectors, held_out, recipe.eval)

    base_model = encoder.model
    for message in attach_for_training(encoder, recipe):
        accelerator.print(message)
    trainable, total = trainable_parameters(encoder.model)
    accelerator.print(f"Trainable parameters: {trainable:,} of {total:,} "
                      f"({recipe.adapter.kind}, top {recipe.adapter.top_k} layers)")

    result = train_adapter(encoder, docs, recipe, accelerator)
    accelerator.wait_for_everyone()
    if not main:
        return {}
    metrics = None
    if held_out is not None:
        vectors = encode_from_cache(encoder, held_out.texts, cache, top_k, recipe.eval.batch_size,
                                    f"embed (adapted, top {top_k} layers from cache)")
        adapted = evaluate_knn(vectors, held_out, recipe.eval)
        metrics = eval_report(base, adapted, held_out, recipe)
    out_dir = save_artifact(encoder, recipe, result, base_model, metrics)
    shutil.rmtree(checkpoint_root(recipe), ignore_errors=True)
    print_report(metrics, folder_size(out_dir), out_dir, result.view_stats)
    return metrics or {}


def save_artifact(encoder: Encoder, recipe: Recipe, result: TrainResult, base_model,
                  metrics: dict | None, output_dir: str | Path | None = None) -> Path:
    """Write the artifact (PEFT files + lastlayer.json + recipe.yaml + eval.json + model card
    + train log) atomically to ``output_dir`` (default: the recipe's); return the folder."""
    meta = artifact_metadata(encoder, recipe, result, base_model)
    files = {
        "lastlayer.json": json.dumps(meta, indent=2) + "\n",
        "recipe.yaml": recipe.to_yaml(),
        "eval.json": json.dumps(metrics, indent=2) + "\n",
        "README.md": model_card(meta, metrics),
        "train_log.json": json.dumps(result.history) + "\n",
    }
    return save_adapter(encoder.model, output_dir or recipe.output_dir, files)
