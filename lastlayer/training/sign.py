"""A repair tool, not a step of training: give an existing artifact its routing signature.

Training writes ``routing.safetensors`` itself (:func:`lastlayer.training.assemble.
routing_signature`); this module is for artifacts saved without one (trained by an older
lastlayer, or with ``train.routing_docs: 0``). It recomputes, from the artifact's own
``recipe.yaml``, the signature training would have written (the same documents, sample and
seed) and adds it to the folder, leaving the adapter's weights and other files as they are.
Nothing in :func:`lastlayer.training.run.run` imports it.
"""

from __future__ import annotations

from pathlib import Path

from lastlayer import artifact
from lastlayer.artifact import RECIPE
from lastlayer.config import load_recipe
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.routing import (
    DEFAULT_MAX_DOCS,
    RoutingSignature,
    signature_for_texts,
    write_signature,
)
from lastlayer.core.target import model_config_of
from lastlayer.evaluation.datasets import load_eval_set
from lastlayer.training.data import training_documents


def sign_artifact(
    folder: str | Path, encoder: Encoder | None = None, data: str | None = None,
    eval_data: str | None = None, max_docs: int | None = None, progress: bool = True,
) -> RoutingSignature:
    """(Re)compute an existing artifact's routing signature from its training data.

    Reads the artifact's ``recipe.yaml``, takes its training documents minus the held-out
    evaluation sample, exactly as training does, and writes the signature training would
    have written (same sample, same seed) as ``routing.safetensors``.

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
