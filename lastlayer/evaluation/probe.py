"""Layer probe: how good is every layer of a model (and of its adapter) in your domain?

For a base model, or a base + adapter artifact, the probe embeds labelled documents once
per model with ``output_hidden_states=True``, pools every hidden layer (the encoder's
pooling, mean by default, with the attention mask; L2-normalised) and measures
leave-one-out kNN accuracy on each layer. For an adapter it also measures the relative
weight change of every block. Base and adapted curves come from one loaded base: the
adapted layers are the base's up to block L−k, then the adapter's private blocks (the
head the inference engine runs, :mod:`lastlayer.core.engine`) one at a time.

Layer numbering follows ``hidden_states``: layer 0 is the embedding output, layer ``l``
(1..L) is the output of block ``l - 1`` (0-based, as in ``lastlayer.json``'s
``trained_layers``). Training the top k blocks changes layers ``L - k + 1 .. L``.

The recommendation rule (a heuristic that the benchmark checks against training) is in
``recommend_top_k`` and is written into every result as ``rule``.

``probe(target, data)`` returns a JSON-ready dict; ``write_probe(result, out_dir)`` writes
``probe.json`` and ``probe.png``; ``format_probe(result)`` is a terminal table.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lastlayer.core.encoder import POOLINGS, Encoder
from lastlayer.core.kinds import kind_named, kind_of
from lastlayer.core.layers import find_layer_stack
from lastlayer.core.split import MiddleRunner, TopKHead
from lastlayer.core.target import Target
from lastlayer.evaluation.metrics import knn_accuracy

MIN_TOP_K = 2
"""The paper's top-2 recovers ~91% of the full fine-tuning gain: never suggest fewer."""

def rule_text(score: str = "kNN accuracy") -> str:
    """The recommendation rule in words, for a per-layer curve of ``score`` (the probe's kNN
    accuracy, or another accuracy-like signal such as ``top_k: auto``'s crop retrieval)."""
    return (
        f"Heuristic, on the base model's curve: p = the first layer whose {score} is within "
        "one binomial standard error (sqrt(a(1-a)/N)) of the best layer's value a, i.e. where "
        "quality stops improving; suggest training the blocks that produce layers p..L, "
        f"k = L - p + 1, clipped to [{MIN_TOP_K}, L] (the paper: the gain sits in the last "
        "layers and top-2 recovers ~91% of it). The layers above p add nothing in this domain "
        "and are the ones to retrain. To be checked against training by the benchmark."
    )


RULE = rule_text()


# ---------------------------------------------------------------------------------------
# Per-layer embeddings.


def layer_embeddings(
    encoder: Encoder, texts: Sequence[str], batch_size: int = 32, progress: bool = True,
    desc: str = "probe",
) -> np.ndarray:
    """Pooled, L2-normalised embeddings of every hidden layer: one forward per batch.

    Pooling is the encoder's (``mean`` by default: the attention-masked mean of the token
    states). Texts are embedded longest first, in eval mode, under ``inference_mode``.

    Args:
        encoder: The model (a base model or a ``PeftModel``) and its tokenizer.
        texts: N documents.
        batch_size: Documents per forward.
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        A float32 array of shape (L + 1, N, d); ``[0]`` is the embedding output, ``[l]`` the
        output of block ``l - 1``, rows in the order of ``texts``. For models with a final
        norm (Llama), transformers reports ``[L]`` after that norm, as ``Encoder.encode`` sees it.
    """
    if not texts:
        raise ValueError("layer_embeddings needs at least one text.")
    pool = POOLINGS[encoder.pooling]

    def every_layer(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = encoder.model(**batch, output_hidden_states=True).hidden_states
        pooled = torch.stack([pool(s, batch["attention_mask"]) for s in states], dim=1)
        return nn.functional.normalize(pooled.float(), dim=-1)  # (B, L+1, d)

    vectors = encoder.encode(texts, batch_size, progress=progress, desc=desc,
                             embed=every_layer)  # (N, L+1, d), eval mode, longest first
    return vectors.transpose(0, 1).numpy()


def adapted_layer_embeddings(
    target: Target, texts: Sequence[str], batch_size: int = 32, progress: bool = True,
    desc: str = "probe adapted",
) -> np.ndarray:
    """:func:`layer_embeddings` of an adapter: the base's layers up to block L−k, then the
    adapter's private blocks (``target.head``) one at a time from block L−k's input.

    Below block L−k a top-k adapter leaves the base as it is, so those layers are the
    base's; each private block runs through a view of the base (its masks, positions, and
    for the last one its final norm), as in the adapted model's own forward.

    Returns:
        A float32 array of shape (L + 1, N, d), as :func:`layer_embeddings`.
    """
    if not texts:
        raise ValueError("layer_embeddings needs at least one text.")
    encoder, head = target.encoder, target.head
    num_layers, k = target.engine.num_layers, head.top_k
    start = num_layers - k
    pieces = [MiddleRunner(encoder.model, start + j, start + j + 1, blocks=[block])
              for j, block in enumerate(head.blocks[:-1])]
    pieces.append(TopKHead(encoder.model, 1, blocks=[head.blocks[-1]]))
    pool = POOLINGS[target.pooling]

    def every_layer(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        states = list(encoder.model(**batch, output_hidden_states=True).hidden_states)
        layers, x = states[: start + 1], states[start]
        for piece in pieces:
            x = piece(x, mask)
            layers.append(x)
        pooled = torch.stack([pool(s, mask) for s in layers], dim=1)
        return nn.functional.normalize(pooled.float(), dim=-1)  # (B, L+1, d)

    vectors = encoder.encode(texts, batch_size, progress=progress, desc=desc,
                             embed=every_layer)
    return vectors.transpose(0, 1).numpy()


# ---------------------------------------------------------------------------------------
# Relative weight change per block.


def weight_change_per_layer(
    peft_model: nn.Module, adapter_name: str | None = None
) -> dict[int, float]:
    """Relative weight change ``||ΔW||_F / ||W||_F`` of every block (0-based block index).

    Both norms run over all of a block's parameters, so the two adapter kinds compare:
    ``lora``: ΔW = B @ A * scaling (PEFT's ``get_delta_weight``) on each wrapped linear
    layer, zero on everything else of the block; ``full`` (PEFT's LN-tuning tuner wrapping
    whole blocks): trained copy minus original, over every parameter. bitsandbytes weights
    are dequantized first. A freshly attached adapter (LoRA's B = 0, an unchanged copy)
    gives 0.0; blocks without adapter give 0.0. The measure is the kind's
    (:mod:`lastlayer.core.kinds`).

    Args:
        peft_model: A ``PeftModel`` (or a base model: all zeros).
        adapter_name: Which adapter; default the active one.
    """
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    stack = find_layer_stack(base)
    blocks = base.get_submodule(stack.prefix)
    if adapter_name is None:
        adapter_name = getattr(peft_model, "active_adapter", "default")
    configs = getattr(peft_model, "peft_config", {})
    if adapter_name not in configs:
        return dict.fromkeys(range(stack.num_layers), 0.0)
    kind = kind_of(configs[adapter_name])
    with torch.no_grad():
        return {i: kind.block_change(blocks[i], adapter_name) for i in range(stack.num_layers)}


def head_weight_change(target: Target) -> dict[int, float]:
    """:func:`weight_change_per_layer` of an adapter on the engine: each private block
    against the base's own (0.0 below block L−k). Needs unmerged LoRA blocks."""
    model, head = target.encoder.model, target.head
    stack = find_layer_stack(model)
    originals = model.get_submodule(stack.prefix)
    kind = kind_named(target.meta.kind)
    start = stack.num_layers - head.top_k
    change = dict.fromkeys(range(stack.num_layers), 0.0)
    with torch.no_grad():
        for i, block in enumerate(head.blocks, start):
            change[i] = kind.private_change(originals[i], block)
    return change


# ---------------------------------------------------------------------------------------
# The recommendation rule.


def recommend_top_k(base_accuracy: Sequence[float], num_documents: int) -> tuple[int, int]:
    """Suggest top-k from the base model's per-layer kNN accuracy (layers 0..L).

    The rule (``RULE``): ``p`` is the first layer whose accuracy is within one binomial
    standard error ``sqrt(a(1-a)/N)`` of the best accuracy ``a`` — the point where quality
    stops improving, with a tolerance so that noise between near-equal layers does not
    move it. The blocks producing layers ``p..L`` (``k = L - p + 1``) are the ones to train;
    at least ``MIN_TOP_K`` (the paper's top-2 recovers ~91% of the full gain), at most L.
    It is a heuristic, stated so the benchmark can check it against training.

    Args:
        base_accuracy: kNN accuracy of layers 0..L of the base model.
        num_documents: N, the documents the accuracies were measured on.

    Returns:
        (k, p): the suggested top-k and the plateau layer.
    """
    acc = np.asarray(base_accuracy, dtype=float)
    num_layers = len(acc) - 1
    if num_layers < 1:
        raise ValueError("recommend_top_k needs the accuracies of layers 0..L with L >= 1.")
    best = float(acc.max())
    tolerance = math.sqrt(best * (1 - best) / max(num_documents, 1))
    plateau = int(np.flatnonzero(acc >= best - tolerance - 1e-12)[0])
    k = min(max(num_layers - plateau + 1, MIN_TOP_K), num_layers)
    return k, plateau


# ---------------------------------------------------------------------------------------
# The probe.


def _sample(data: str | Path, text_field: str, label_field: str, max_docs: int | None,
            k: int, metric: str, seed: int):
    """The same seeded sample that training holds out for its kNN evaluation."""
    from lastlayer.config import EvalConfig
    from lastlayer.evaluation.datasets import load_eval_set

    cfg = EvalConfig(data=str(data), text_field=text_field, label_field=label_field,
                     max_docs=max_docs, k=k, metric=metric)
    return load_eval_set(cfg, seed)


def probe(
    target: str | Path, data: str | Path, *, max_docs: int | None = 1000, k: int = 10,
    metric: str = "euclidean", seed: int = 42, text_field: str = "text",
    label_field: str = "label", batch_size: int = 32, max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """kNN accuracy of every layer of a base model or of a base + adapter artifact.

    The documents are the seeded sample that ``lastlayer train`` holds out with the same
    ``data``, ``max_docs`` and ``seed`` (so with a recipe's eval settings, none of them was
    trained on). For an adapter, the base curve is the base model's own, the adapted one runs
    the adapter's private blocks from block L−k up (the inference engine's head, the base
    never changed), and every block's relative weight change is reported.

    Args:
        target: An adapter artifact folder or Hub id (``ORG/NAME[@REVISION]``), a base
            model's Hub id, or a local model folder.
        data: A labelled corpus (fields ``text_field`` and ``label_field``).
        max_docs: Sample size (None: every document).
        k, metric: kNN settings (leave-one-out).
        seed: Seed of the document sample.
        batch_size: Documents per forward.
        max_length: Override the tokenizer truncation (default: the artifact's, or 128).
        progress: Show progress bars.

    Returns:
        A JSON-ready dict: ``layers`` (one row per layer 0..L: ``block`` (0-based index of
        the block producing it, as in ``trained_layers``; None for layer 0), ``base_knn``,
        ``adapted_knn``, ``weight_change``, ``trained``), ``recommended_top_k``,
        ``plateau_layer``, ``best_layer``, ``rule``, and how it was measured.
    """
    from lastlayer import hub
    from lastlayer.core.target import load_target

    started = time.perf_counter()
    folder = hub.adapter_folder(target)  # a Hub adapter: its cached snapshot
    held_out = _sample(data, text_field, label_field, max_docs, k, metric, seed)
    overrides = {"max_length": max_length} if max_length is not None else {}
    loaded = load_target(folder or target, merge=False, **overrides)  # LoRA: ΔW from B @ A
    encoder, meta = loaded.encoder, loaded.meta

    def curve(layers: np.ndarray) -> list[float]:
        return [knn_accuracy(x, held_out.labels, k, metric).accuracy for x in layers]

    base = curve(layer_embeddings(encoder, held_out.texts, batch_size, progress, "probe base"))
    if meta is not None:
        adapted = curve(adapted_layer_embeddings(loaded, held_out.texts, batch_size, progress))
        change = head_weight_change(loaded)
        trained = list(meta.layers.trained_layers)
    else:
        adapted, change, trained = None, None, []

    num_layers = len(base) - 1
    n = len(held_out.texts)
    top_k, plateau = recommend_top_k(base, n)
    rows = [
        {
            "layer": layer,
            "block": layer - 1 if layer else None,
            "base_knn": base[layer],
            "adapted_knn": adapted[layer] if adapted is not None else None,
            "weight_change": change.get(layer - 1, 0.0) if change is not None and layer else None,
            "trained": layer > 0 and (layer - 1) in trained,
        }
        for layer in range(num_layers + 1)
    ]
    base_model = meta.base.model if meta else None
    if base_model is None:
        base_model = encoder.resolved.hub_id if encoder.resolved else str(target)
    counts = np.unique(np.asarray(held_out.labels), return_counts=True)[1]
    return {
        "target": str(target),
        "base_model": base_model,
        "adapter": str(target) if meta else None,
        "adapter_kind": meta.kind if meta else None,
        "trained_layers": trained,
        "num_layers": num_layers,
        "data": str(data),
        "num_documents": n,
        "num_classes": int(len(counts)),
        "majority_class_rate": float(counts.max() / n),
        "k": k,
        "metric": metric,
        "seed": seed,
        "pooling": encoder.pooling,
        "max_length": encoder.max_length,
        "protocol": (
            f"kNN accuracy, k={k}, {metric}, leave-one-out over {n} labelled documents "
            f"sampled with seed {seed} from {data}, on the {encoder.pooling}-pooled, "
            "L2-normalised hidden states of every layer (0 = embedding output, l = output of "
            "block l-1)."
        ),
        "layers": rows,
        "best_layer": int(np.argmax(base)),
        "plateau_layer": plateau,
        "recommended_top_k": top_k,
        "rule": RULE,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------------------------------
def write_probe(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``probe.json`` and ``probe.png`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "probe.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    from lastlayer.evaluation.plots import plot_probe  # matplotlib: only when drawing

    return json_path, plot_probe(result, out_dir / "probe.png")


def format_probe(result: dict[str, Any]) -> str:
    """A terminal table of the probe: one line per layer, then the suggestion and its rule."""
    adapter = result["adapter"] is not None
    head = f"{'layer':>5}  {'base kNN':>8}"
    if adapter:
        head += f"  {'adapted':>8}  {'delta':>6}  {'ΔW/W':>7}"
    lines = [head]
    for r in result["layers"]:
        line = f"{r['layer']:>5}  {r['base_knn']:>8.3f}"
        if adapter:
            delta = r["adapted_knn"] - r["base_knn"]
            change = f"{r['weight_change']:.4f}" if r["weight_change"] is not None else "-"
            line += f"  {r['adapted_knn']:>8.3f}  {delta:>+6.3f}  {change:>7}"
        if r["layer"] == result["best_layer"]:
            line += "  <- base peak"
        if r["trained"]:
            line += "  (trained)"
        lines.append(line)
    lines.append(
        f"Suggested top-k: {result['recommended_top_k']} (plateau at layer "
        f"{result['plateau_layer']} of {result['num_layers']}). Rule: {result['rule']}"
    )
    return "\n".join(lines)
