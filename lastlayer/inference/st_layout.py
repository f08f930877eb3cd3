"""What a sentence-transformers model folder holds besides the weights and the tokenizer.

:mod:`lastlayer.inference.export` writes the merged model; this module says how the folder
around it must look for ``sentence_transformers.SentenceTransformer(folder)`` to load it as
lastlayer embeds: ``modules.json`` (Transformer -> Pooling [-> Normalize]),
``sentence_bert_config.json``, ``1_Pooling/config.json``,
``config_sentence_transformers.json`` (:func:`sentence_transformers_files`) and the
folder's model card (:func:`model_card`), all from the artifact's typed metadata.
"""

from __future__ import annotations

from typing import Any

from lastlayer.artifact import ArtifactMeta
from lastlayer.core.encoder import Encoder

ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
"""lastlayer pooling -> sentence-transformers pooling mode (both over the attention mask)."""

def hidden_size(encoder: Encoder) -> int:
    """The width of the token states that are pooled."""
    config = encoder.model.config
    size = getattr(config, "hidden_size", None)
    return int(size) if size else int(encoder.model.get_input_embeddings().embedding_dim)


def sentence_transformers_files(meta: ArtifactMeta, hidden: int) -> dict[str, Any]:
    """The sentence-transformers configuration files (path in the folder -> JSON data).

    The module types and pooling keys are the long-standing ones (``sentence_transformers
    .models.*``, ``pooling_mode_*_tokens``) of the Hub's original sentence-transformers
    models, which newer releases still read (checked with 6.2), not a newer release's own
    names that older releases would not know.
    """
    emb = meta.embedding
    names = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if emb.normalize:
        names.append(("2_Normalize", "Normalize"))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{cls}"}
        for i, (path, cls) in enumerate(names)
    ]
    mode = ST_POOLING[emb.pooling]
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": True,
    }
    return {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": emb.max_length, "do_lower_case": False},
        "1_Pooling/config.json": pooling,
        "config_sentence_transformers.json": {
            "__version__": _versions(),
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from lastlayer._version import __version__

    return {"lastlayer": __version__, "transformers": transformers.__version__,
            "pytorch": torch.__version__}


def model_card(meta: ArtifactMeta, hidden: int) -> str:
    """The exported folder's ``README.md``: what it is, how it embeds, how to load it."""
    from huggingface_hub import ModelCardData

    base, emb = meta.base, meta.embedding
    data = ModelCardData(
        model_name=f"{meta.name} (merged)", base_model=base.model,
        library_name="sentence-transformers", pipeline_tag="sentence-similarity",
        tags=["sentence-transformers", "feature-extraction", "sentence-similarity", "lastlayer",
              meta.kind],
    )
    pooling = {"mean": "mean pooling over the attention mask", "cls": "the first token's state",
               "last": "the last non-padding token's state"}[emb.pooling]
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {meta.name} (merged, sentence-transformers)", "",
        f"The lastlayer {meta.kind} adapter `{meta.name}` (top {meta.top_k} of "
        f"{meta.layers.num_layers} layers, `{meta.objective.kind}` objective, trained on "
        f"`{meta.training.data}`) merged into its base, {base.describe()}.", "",
        f"Embeddings: {hidden} dimensions, {pooling}"
        + (", L2-normalised" if emb.normalize else "")
        + f"; inputs truncated to {emb.max_length} tokens.", "",
        "## Use", "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        "model = SentenceTransformer('path/to/this/folder')",
        "vectors = model.encode(['some in-domain text'])",
        "```", "",
        "It gives the vectors lastlayer gives for the adapter (cosine > 0.99999 per text in "
        "float32; `lastlayer_export.json` records the check). The merged model alone loads "
        "with `transformers.AutoModel.from_pretrained('path/to/this/folder')`.",
    ]
    if base.dequantized_gguf:
        lines += ["", f"The base was the GGUF file `{base.file}`, dequantized on load: the "
                  "weights saved here are that dequantized copy (in "
                  f"{base.dtype}), which differs slightly from the original checkpoint of "
                  f"`{base.model}`. The adapter was trained on exactly these weights."]
    return "\n".join(lines) + "\n"
