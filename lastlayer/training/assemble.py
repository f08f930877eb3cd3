"""What a trained adapter is saved as: its routing signature and the artifact's files.

After the loop, :func:`routing_signature` takes one bottom-only pass over a sample of the
training documents (the centroids ``lastlayer serve`` routes by), and :func:`save_artifact`
writes the PEFT files with ``lastlayer.json`` (:func:`artifact_metadata`), the resolved
``recipe.yaml``, ``eval.json``, the model card, the train log and the signature, atomically.
:func:`check_output` refuses, before any model is loaded, a folder that could not be written
at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from lastlayer import artifact
from lastlayer.artifact import (
    ArtifactError,
    ArtifactMeta,
    BaseWeights,
    Embedding,
    Layers,
    Training,
    as_report,
    check_output_dir,
    side_files,
)
from lastlayer.config import ConfigError, Recipe
from lastlayer.core.adapters import layer_summary, save_adapter
from lastlayer.core.encoder import Encoder
from lastlayer.core.routing import RoutingSignature, signature_for_texts
from lastlayer.hub import model_card
from lastlayer.training.choose_k import KChoice
from lastlayer.training.loop import TrainResult


def check_output(recipe: Recipe) -> None:
    """Fail before any model is loaded when the artifact could not be saved at the end.

    Refused: what :func:`lastlayer.artifact.check_output_dir` refuses (a file, a user's
    folder, an artifact without ``overwrite``), a path below a file, and a folder this
    process may not write in.
    """
    try:
        check_output_dir(recipe.output_dir, recipe.overwrite)
    except ArtifactError as err:
        raise ConfigError(str(err)) from None
    out = Path(recipe.output_dir).absolute()
    parent = next(p for p in out.parents if p.exists())  # the nearest existing ancestor
    if not parent.is_dir():
        raise ConfigError(f"output_dir {out}: {parent} is a file, so no folder can be made "
                          "below it. Choose another output_dir.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out}: {parent} is not writable by this user, so the "
                          "artifact could not be saved at the end. Choose another output_dir.")


def routing_signature(encoder: Encoder, docs: list[str], recipe: Recipe,
                      accelerator) -> RoutingSignature | None:
    """The adapter's routing signature, from a seeded sample of ``train.routing_docs``
    training documents (None when that is 0).

    The adapter leaves the blocks below L-k as they are, so their outputs are the base's:
    this is one bottom-only pass over the sample (no top block, no backward), in the run's
    precision (its autocast), timed and printed so its cost can be set against training
    time.

    Args:
        encoder: The encoder with the trained adapter attached.
        docs: The training documents.
        recipe: The resolved recipe (``train.routing_docs``, ``adapter.top_k``, the seed).
        accelerator: The run's accelerator (progress on the local main process, printing).
    """
    if not recipe.train.routing_docs:
        return None
    start = time.perf_counter()
    with accelerator.autocast():  # the bottom pass; pooling and k-means stay float32
        signature = signature_for_texts(
            encoder, docs, recipe.adapter.top_k, recipe.train.routing_docs, recipe.seed,
            recipe.eval.batch_size, progress=accelerator.is_local_main_process,
        )
    accelerator.print(
        f"Routing signature: {signature.num_documents} documents, "
        f"{len(signature.centroids)} centroids at block {signature.layer}, "
        f"{time.perf_counter() - start:.1f}s")
    return signature


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
                          view_stats=asdict(result.view_stats),
                          mixed_precision=result.mixed_precision),
        top_k_choice=top_k_choice.to_dict() if top_k_choice is not None else None,
    )


def save_artifact(encoder: Encoder, recipe: Recipe, result: TrainResult, base_model,
                  metrics: dict | None, output_dir: str | Path | None = None,
                  overwrite: bool | None = None,
                  signature: RoutingSignature | None = None,
                  top_k_choice: KChoice | None = None) -> Path:
    """Write the artifact (PEFT files + lastlayer.json + recipe.yaml + eval.json + model card
    + train log + routing signature, if given) atomically to ``output_dir`` (default: the
    recipe's); return the folder. ``overwrite`` (default: the recipe's) allows replacing an
    existing artifact there. ``top_k_choice``: the evidence of ``adapter.top_k: auto``,
    saved in ``lastlayer.json`` and as a comment above the recipe.

    Raises:
        ArtifactError: ``output_dir`` may not be replaced, or a write failed (a full disk):
            then nothing is left half-written and a previous artifact there is untouched.
    """
    meta = artifact_metadata(encoder, recipe, result, base_model, top_k_choice)
    recipe_yaml = recipe.to_yaml()
    if top_k_choice is not None:  # the saved recipe trains the chosen k; say where it came from
        recipe_yaml = (f"# adapter.top_k was auto: {top_k_choice.summary()}; evidence in "
                       f"{artifact.METADATA} (top_k_choice).\n" + recipe_yaml)
    files = side_files(meta, metrics, recipe_yaml, result.history,
                       model_card(meta, as_report(metrics)))
    overwrite = recipe.overwrite if overwrite is None else overwrite
    out_dir = output_dir or recipe.output_dir
    try:
        return save_adapter(encoder.model, out_dir, files, overwrite=overwrite,
                            signature=signature)
    except OSError as err:
        raise ArtifactError(
            f"could not save the artifact to {out_dir} ({err.strerror or err}); nothing was "
            "left half-written there and any artifact it held is untouched. Free space (or "
            "fix permissions) and rerun; with train.checkpoint_every set, train.resume=true "
            "continues from the last checkpoint."
        ) from err
