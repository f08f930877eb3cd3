"""What a training run measured, as ``eval.json`` holds it and as the terminal shows it.

``eval.json`` is an :class:`lastlayer.artifact.EvalReport`; :func:`eval_report` builds one
and hands out its plain data (what ``run(recipe).metrics`` is and the file holds).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lastlayer.artifact import Delta, EvalReport, as_report
from lastlayer.config import EvalConfig, Recipe
from lastlayer.evaluation.datasets import EvalSet
from lastlayer.evaluation.metrics import KnnResult, knn_accuracy, paired_delta
from lastlayer.training.views import ViewStats

if TYPE_CHECKING:
    import torch

    from lastlayer.training.choose_k import KChoice


def evaluate_knn(vectors: torch.Tensor, held_out: EvalSet, cfg: EvalConfig) -> KnnResult:
    """Leave-one-out kNN accuracy of embeddings of the held-out documents."""
    return knn_accuracy(vectors.numpy(), held_out.labels, cfg.k, cfg.metric)


def eval_report(base: KnnResult, adapted: KnnResult, held_out: EvalSet, recipe: Recipe) -> dict:
    """The content of ``eval.json``: base and adapted side by side, and how they were measured."""
    cfg = recipe.eval
    report = EvalReport(
        base={"knn_accuracy": base.accuracy},
        adapted={"knn_accuracy": adapted.accuracy},
        delta=Delta(**paired_delta(base.correct, adapted.correct, seed=recipe.seed)),
        data=held_out.source,
        num_documents=len(held_out.texts),
        protocol=(
            f"kNN accuracy, k={cfg.k}, {cfg.metric}, leave-one-out over {len(held_out.texts)} "
            f"labelled documents sampled with seed {recipe.seed} from {held_out.source} and "
            "held out of training; delta CI: paired bootstrap over documents."
        ),
    )
    return report.to_dict()


def print_report(metrics: EvalReport | dict | None, size: int, out_dir: Path, stats: ViewStats,
                 top_k_choice: KChoice | None = None) -> None:
    """The before/after table, saying plainly when the adapter is worse than its base, and
    how ``top_k: auto`` chose k when it did."""
    print(f"\nSaved {out_dir} ({size / 1024:.0f} KB)")
    if top_k_choice is not None:
        print(format_choice(top_k_choice))
    print(f"Views (main process): {stats.sentence_crops} sentence crops, "
          f"{stats.token_span_fallbacks} short "
          f"documents fell back to word-span crops, {stats.dropped_empty} empty dropped.")
    report = as_report(metrics)
    if report is None:
        print("No eval.data in the recipe: nothing measured.")
        return
    base, adapted = report.base["knn_accuracy"], report.adapted["knn_accuracy"]
    d = report.delta
    print(f"\n{report.protocol}\n")
    print(f"  {'model':<10}{'kNN accuracy':>14}")
    print(f"  {'base':<10}{base:>14.4f}")
    print(f"  {'adapted':<10}{adapted:>14.4f}")
    ci = f"95% CI [{d.ci95_low:+.4f}, {d.ci95_high:+.4f}]"
    print(f"  {'delta':<10}{d.delta:>+14.4f}   {ci}")
    if d.ci95_high < 0:
        print("\nWARNING: the adapter is WORSE than its base on held-out documents. "
              "Do not use it; see the README on when self-supervised training helps.")
    elif d.ci95_low <= 0:
        print("\nNote: the difference is within noise (the 95% CI includes 0).")
    else:
        print("\nThe adapter is better than its base beyond noise.")


def format_choice(choice: KChoice) -> str:
    """How ``top_k: auto`` chose: the per-layer curve (a bar per layer, the plateau and the
    trained layers marked), the choice and its rule."""
    low, high = min(choice.curve), max(choice.curve)
    span = (high - low) or 1.0
    lines = [f"\nChoosing top_k: {choice.measure}, on {choice.num_documents} documents "
             f"({choice.seconds:.1f}s)", f"  {'layer':>5}  {'score':>6}"]
    first = choice.num_layers - choice.top_k + 1  # first layer the trained blocks change
    for layer, score in enumerate(choice.curve):
        bar = "#" * (1 + round(20 * (score - low) / span))
        mark = ("  <- plateau" if layer == choice.plateau_layer else "") + \
            ("  (trained)" if layer >= first else "")
        lines.append(f"  {layer:>5}  {score:>6.3f}  {bar}{mark}")
    lines.append(f"{choice.summary()}\nRule: {choice.rule}")
    return "\n".join(lines)
