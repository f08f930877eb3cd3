"""Hugging Face Hub side of an artifact: the model card (``README.md``) it ships with.

The card's YAML header is rendered by ``huggingface_hub.ModelCardData`` so the Hub reads
it (base model, library, tags); the body says what was trained, how, how well, and how to
load it.
"""

from __future__ import annotations

from typing import Any


def model_card(meta: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """Render an artifact's ``README.md`` from its ``lastlayer.json`` and ``eval.json``."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        model_name=meta["name"],
        eval_results=_eval_results(metrics),
        base_model=meta["base_model"],
        library_name="peft",
        license=meta.get("license"),
        tags=["lastlayer", "sentence-embeddings", "feature-extraction", meta["adapter"]["kind"],
              f"{meta['objective']['kind']}-contrastive"],
        pipeline_tag="feature-extraction",
    )
    adapter, objective = meta["adapter"], meta["objective"]
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {meta['name']}", "",
        f"A lastlayer {adapter['kind']} adapter on the top {adapter['top_k']} of "
        f"{meta['layers']['num_layers']} layers of `{meta['base_model']}`, trained "
        f"self-supervised with the `{objective['kind']}` objective on `{meta['train_data']}` "
        f"({meta['train_steps']} steps).",
        "",
        f"Base weights: {meta['base_source']} (fingerprint `{meta['base_fingerprint']}`).",
        "",
    ]
    if metrics:
        lines += _metrics_table(metrics)
    lines += [
        "## Use", "",
        "```python",
        "from lastlayer.core.encoder import load_encoder",
        "from lastlayer.core.adapters import load_adapter",
        "from lastlayer.config import ModelConfig",
        f"encoder = load_encoder(ModelConfig(name_or_path={meta['base_model']!r}, "
        f"pooling={meta['pooling']!r}, max_length={meta['max_length']}))",
        "encoder = load_adapter(encoder, 'path/to/this/folder')",
        "vectors = encoder.encode(['some in-domain text'])",
        "```", "",
        "Plain PEFT works too:",
        "`PeftModel.from_pretrained(AutoModel.from_pretrained(base), folder)`, then "
        f"{meta['pooling']} pooling" + (" and L2 normalisation." if meta["normalize"] else "."),
        "",
    ]
    return "\n".join(lines)


def _eval_results(metrics: dict[str, Any] | None) -> list | None:
    """The adapted model's metrics as Hub ``model-index`` entries."""
    if not metrics:
        return None
    from huggingface_hub import EvalResult

    return [
        EvalResult(task_type="feature-extraction", dataset_type="lastlayer-eval",
                   dataset_name=str(metrics["data"]), metric_type=name, metric_value=value,
                   metric_name=f"{name} (adapted; base {metrics['base'][name]:.4f})")
        for name, value in metrics["adapted"].items()
    ]


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    base, adapted = metrics["base"], metrics["adapted"]
    rows = ["## Evaluation", "", f"{metrics['protocol']}", "",
            "| metric | base | adapted |", "|---|---|---|"]
    for name in base:
        rows.append(f"| {name} | {base[name]:.4f} | {adapted[name]:.4f} |")
    return rows + [""]
