"""The training loop: ``train.max_steps`` optimizer steps of one readable Accelerate loop.

AdamW on the adapter's parameters with a linear warm-up schedule; each batch is two views
of the same documents (crop / span / dropout), fresh or from cached bottom-layer states
(:mod:`lastlayer.training.pairs`), embedded and scored by InfoNCE over the global batch
(embeddings are gathered with gradients). The same code runs on one CPU, one GPU, or many
processes; ``train.batch_size`` is per process. A NaN or infinite loss or weight stops the
run (:func:`check_finite`, :func:`check_finite_weights`) before it reaches a checkpoint.
Periodic checkpoints and resuming live in :mod:`lastlayer.training.checkpoint`; what
comes before and after the loop (loading, measuring, saving) in
:mod:`lastlayer.training.run`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from lastlayer.config import ConfigError, Recipe
from lastlayer.core.encoder import Encoder
from lastlayer.core.progress import progress
from lastlayer.core.split import TopKHead
from lastlayer.training.checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    maybe_resume,
    save_checkpoint,
)
from lastlayer.training.loss import info_nce
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


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite: the run stops, its last good checkpoint is kept.

    A :class:`~lastlayer.config.ConfigError` (its fix is in the recipe), so ``lastlayer
    train`` reports it in one line with exit status 2.
    """


@dataclass
class TrainResult:
    """What the loop did: per-step history and view statistics."""

    steps: int
    history: list[dict[str, float]]
    view_stats: ViewStats
    resumed_from: int = 0
    mixed_precision: str = "no"  # what the run's accelerator resolved (auto -> bf16 or no)


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
        with accelerator.autocast():  # the bottom pass in the precision fresh views train in
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

    start = maybe_resume(recipe, accelerator, encoder.model, optimizer, scheduler)
    if start:
        loader = accelerator.skip_first_batches(loader, start * cfg.grad_accum_steps)
    step, history = start, []
    bar = progress(total=cfg.max_steps, initial=start, desc="train", unit="step",
                   enabled=accelerator.is_local_main_process)
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
        check_finite(record, recipe)
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            check_finite_weights(params, step, recipe)
            save_checkpoint(recipe, accelerator, step, encoder.model, optimizer, scheduler)
        if step >= cfg.max_steps:
            break
    bar.close()
    if not cached:
        encoder.model = accelerator.unwrap_model(model)
    return TrainResult(step, history, pairs.stats, start, accelerator.mixed_precision)


def check_finite(record: dict[str, float], recipe: Recipe) -> None:
    """Stop the run at the first step whose loss (averaged over processes) is NaN or inf.

    Raises:
        TrainingDiverged: The loss is not finite; the message names the step, the newest
            checkpoint and the likely causes.
    """
    loss = record["loss"]
    if not torch.isfinite(torch.tensor(loss)):
        raise diverged(record["step"], f"the training loss is {loss}", recipe)


def check_finite_weights(params: list[torch.Tensor], step: int, recipe: Recipe) -> None:
    """Before a checkpoint: every trained weight is finite (a finite loss can still be
    followed by an update with inf gradients), so no checkpoint ever holds NaN or inf.

    Raises:
        TrainingDiverged: A weight is not finite.
    """
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise diverged(step, "a trained weight is NaN or inf after the update", recipe)


def diverged(step: int, what: str, recipe: Recipe) -> TrainingDiverged:
    """The error that stops a diverged run: the step, the likely causes, the checkpoint kept."""
    cfg = recipe.train
    found = latest_checkpoint(checkpoint_root(recipe))
    kept = (f"The last good checkpoint, {found[0]}, is kept." if found else
            "No checkpoint was saved before it (see train.checkpoint_every).")
    causes = f"a learning rate too high (train.lr={cfg.lr:g}; try 10x lower)"
    if cfg.mixed_precision != "no":
        causes += (f" or too little precision (train.mixed_precision={cfg.mixed_precision}; "
                   "try no)")
    return TrainingDiverged(f"step {step}: {what}, so training stopped and no artifact was "
                            f"saved. Likely cause: {causes}. {kept}")
