"""The model card (``README.md``) of an artifact: its data from the typed artifact, its prose
in ``model_card_template.md`` (as sentence-transformers keeps its card template).

:func:`card_metadata` is the card's YAML header (``huggingface_hub.ModelCardData``: base
model, datasets, tags, ``model-index`` from ``eval.json``), which the Hub reads;
:func:`model_card` the whole card: what was trained, on what, with which command, how
well, what gain to expect, and how to load it. Renaming a command or a flag means editing
the template, not the artifact layer.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from lastlayer.artifact import ArtifactMeta, EvalReport
from lastlayer.artifact.schema import as_report
from lastlayer.corpus import DataError, HubDataset, parse_hub_dataset

TEMPLATE = "model_card_template.md"
_BLOCK = re.compile(r"^%% (\w+)\n", re.MULTILINE)

_KIND_NAMES = {"lora": "LoRA", "full": "full-unfreeze"}
_METRIC_LABELS = {"knn_accuracy": "kNN accuracy", "ndcg@10": "nDCG@10",
                  "recall@100": "Recall@100", "v_measure": "V-measure", "ari": "ARI"}


@cache
def _blocks() -> dict[str, str]:
    """The template's blocks by name (fragments without their final line break)."""
    text = resources.files("lastlayer.hub").joinpath(TEMPLATE).read_text(encoding="utf-8")
    parts = _BLOCK.split(text)[1:]  # drop the comment before the first block
    return {name: body.rstrip("\n") if name.startswith("fragment_") else body
            for name, body in zip(parts[::2], parts[1::2], strict=True)}


def _fill(block: str, **values: Any) -> str:
    return Template(_blocks()[block]).substitute(values)


def _hub_dataset(data: str | None) -> HubDataset | None:
    """The Hub data set a corpus source names (``hf://ORG/NAME[@REV][?split=..]``, the
    syntax of ``data.train`` / ``eval.data``), or None for a local path."""
    try:
        return parse_hub_dataset(str(data or ""))
    except DataError:
        return None


def hub_dataset_id(data: str | None) -> str | None:
    """The Hub dataset id (``ORG/NAME``) a corpus source names, or None for a local path.

    Corpora on the Hub are written ``hf://ORG/NAME[@REVISION][?split=..][&config=..]``;
    anything else (``data/x.jsonl.gz``, ``../x``, a folder) is local.
    """
    hub = _hub_dataset(data)
    return hub.repo_id if hub else None


def _metric_label(name: str) -> str:
    return _METRIC_LABELS.get(name, name)


def _metric_type(name: str) -> str:
    """A model-index metric type: lowercase letters, digits and underscores
    (``ndcg@10`` -> ``ndcg_at_10``, as MTEB's cards write it)."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower().replace("@", "_at_"))


def card_metadata(meta: ArtifactMeta, metrics: EvalReport | dict | None):
    """The model card's YAML metadata as a ``huggingface_hub.ModelCardData``.

    ``base_model`` is the base's Hub id (for a packaged or GGUF offline copy too: the
    artifact records the id it stands for); a base loaded from a local folder has no Hub id,
    so the card names none. ``datasets`` lists the training corpus when it is a Hub dataset.
    ``model-index`` holds, per metric of ``eval.json``, the adapted value and the base's, on
    the eval data (a Hub dataset with its split, config and revision, or a local path).
    """
    from huggingface_hub import ModelCardData

    base = meta.base
    hub_base = base.model if base.origin in ("hub", "package") else None
    objective = meta.objective.kind
    tags = ["lastlayer", "sentence-embeddings", "feature-extraction", meta.kind, objective,
            f"{objective}-contrastive"]
    extra: dict[str, Any] = {}
    if hub_base:
        tags.append(f"base_model:adapter:{hub_base}")
        extra["base_model_relation"] = "adapter"
    dataset = hub_dataset_id(meta.training.data)
    return ModelCardData(
        model_name=meta.name,
        eval_results=_eval_results(as_report(metrics)),
        base_model=hub_base,
        datasets=[dataset] if dataset else None,
        library_name="peft",
        tags=tags,
        pipeline_tag="feature-extraction",
        **extra,
    )


def _eval_results(report: EvalReport | None) -> list | None:
    """``eval.json`` as Hub ``model-index`` entries: per metric, the adapted value (type
    e.g. ``knn_accuracy``) and the base's (type ``knn_accuracy_base``), on the eval data
    (its Hub dataset id when it is one)."""
    if report is None:
        return None
    from huggingface_hub import EvalResult

    hub = _hub_dataset(report.data)
    common = {"task_type": "feature-extraction", "task_name": "In-domain embedding quality",
              "dataset_type": hub.repo_id if hub else "lastlayer-eval",
              "dataset_name": hub.repo_id if hub else report.data}
    if hub:
        common.update(dataset_split=hub.split, dataset_config=hub.config,
                      dataset_revision=hub.revision)
    results = []
    for name, value in report.adapted.items():
        label = _metric_label(name)
        results.append(EvalResult(**common, metric_type=_metric_type(name),
                                  metric_value=value, metric_name=f"{label} (adapted)"))
        if name in report.base:
            results.append(EvalResult(**common, metric_type=f"{_metric_type(name)}_base",
                                      metric_value=report.base[name],
                                      metric_name=f"{label} (base model, before training)"))
    return results


def model_card(meta: ArtifactMeta, metrics: EvalReport | dict | None,
               repo_id: str | None = None) -> str:
    """Render an artifact's ``README.md`` from its metadata and ``eval.json``.

    Args:
        meta: The artifact's metadata.
        metrics: Its ``eval.json`` (None: not evaluated; a dict is decoded).
        repo_id: The Hub repo the card is for (``lastlayer push``): the loading examples
            name it; without one they name the folder.
    """
    report = as_report(metrics)
    blocks = [_head(meta, report)]
    if report is not None:
        blocks.append(_evaluation(report))
    blocks.append(_gain(report))
    blocks += _usage(meta, repo_id)
    return "".join(blocks).removesuffix("\n")


def _head(meta: ArtifactMeta, report: EvalReport | None) -> str:
    base, training = meta.base, meta.training
    dataset = hub_dataset_id(training.data)
    on = _fill("fragment_on_hub", dataset=dataset) if dataset \
        else _fill("fragment_on_local", data=training.data)
    loss = _fill("fragment_loss", final_loss=f"{training.final_loss:.3f}") \
        if training.final_loss is not None else ""
    return _fill(
        "head", metadata=card_metadata(meta, report).to_yaml(), name=meta.name,
        kind=_KIND_NAMES[meta.kind], top_k=meta.top_k, num_layers=meta.layers.num_layers,
        base_model=base.model, blocks=", ".join(map(str, meta.layers.trained_layers)),
        objective=meta.objective.kind, on=on, steps=training.steps, loss=loss,
        base_weights=base.describe(), fingerprint=base.fingerprint,
        version=meta.lastlayer_version, date=meta.created[:10],
    )


def _evaluation(report: EvalReport) -> str:
    rows = [_fill("fragment_metric_row", label=_metric_label(name), base=f"{value:.4f}",
                  adapted=f"{report.adapted[name]:.4f}")
            for name, value in report.base.items()]
    return _fill("evaluation", protocol=report.protocol, rows="\n".join(rows))


def _gain(report: EvalReport | None) -> str:
    delta = report.delta if report is not None else None
    text = ""
    if delta:
        text = _fill("gain_delta", delta=f"{delta.delta:+.3f}", low=f"{delta.ci95_low:+.3f}",
                     high=f"{delta.ci95_high:+.3f}",
                     no_gain=_fill("fragment_no_gain") if delta.ci95_low <= 0 else "")
    return _fill("gain", delta=text)


def _usage(meta: ArtifactMeta, repo_id: str | None) -> list[str]:
    base, emb = meta.base, meta.embedding
    where = repo_id or "path/to/this/folder"
    pooling = _fill("fragment_pooling", pooling=emb.pooling,
                    normalized=_fill("fragment_normalized") if emb.normalize else "")
    load = f"AutoModel.from_pretrained({base.model!r}"
    if base.file and base.dequantized_gguf and base.origin != "package":
        load += f", gguf_file={base.file!r}"
    load += ")"
    blocks = [_fill("use", model=base.model, model_repr=repr(base.model), where=where,
                    where_repr=repr(where), pooling=pooling, max_length=emb.max_length,
                    load=load)]
    if base.quantization and base.dequantized_gguf:  # transformers alone cannot load it so
        blocks.append(_fill("use_quantized_gguf", quantization=base.quantization,
                            file=base.file, model_repr=repr(base.model)))
    elif base.quantization:
        blocks.append(_fill("use_quantized", quantization=base.quantization))
    else:
        blocks.append(_fill("use_sentence_transformers", where=where, name=meta.name))
    if base.origin == "package":
        pin = f"=={base.package_version}" if base.package_version else ""
        blocks.append(_fill("use_package", package=base.package, pin=pin))
    if base.dequantized_gguf:
        blocks.append(_fill("use_gguf", fingerprint=base.fingerprint))
    return blocks
