"""Attach top-k adapters (LoRA or full unfreeze), save them as PEFT artifacts, load them back.

Both kinds are real PEFT tuners, so every artifact loads with
``peft.PeftModel.from_pretrained(base, folder)``:

- ``lora``: ``LoraConfig`` whose ``target_modules`` are the explicit names of the linear
  layers inside the top-k blocks (PEFT's ``layers_to_transform`` silently matches no
  layer, or the wrong ones, on some naming schemes, so lastlayer names the modules itself).
- ``full``: PEFT's layer-selection tuner (``LNTuningConfig``) pointed at whole top-k blocks:
  it keeps a trainable copy of each block and saves it, which is exactly "unfreeze the
  top-k blocks" in PEFT's format, with adapter switching for free.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from lastlayer import artifact
from lastlayer.artifact import ArtifactError, write_atomically
from lastlayer.config import AdapterConfig, ConfigError, ModelConfig, from_dict
from lastlayer.core.encoder import Encoder, ModelNotFoundError, load_encoder
from lastlayer.core.layers import (
    LayerStack,
    find_layer_stack,
    top_k_linear_names,
    top_k_module_names,
)
from lastlayer.core.routing import RoutingSignature, write_signature


def adapter_targets(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """The explicit module names the adapter wraps: top-k linears (LoRA) or blocks (full)."""
    if cfg.kind == "full":
        return top_k_module_names(model, cfg.top_k)
    return top_k_linear_names(model, cfg.top_k, cfg.target_modules)


def peft_config(model: nn.Module, cfg: AdapterConfig):
    """The PEFT config of a top-k adapter of kind ``cfg.kind`` for ``model``."""
    from peft import LNTuningConfig, LoraConfig

    targets = adapter_targets(model, cfg)
    if cfg.kind == "full":
        return LNTuningConfig(target_modules=targets)
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        bias="none",
    )


def attach(encoder: Encoder, cfg: AdapterConfig, name: str = "default") -> Encoder:
    """Wrap ``encoder.model`` in a ``PeftModel`` whose only trainable weights are the adapter's.

    Everything below the top-k blocks stays frozen and never receives gradients, so
    autograd skips the backward through the bottom layers by itself.
    """
    from peft import get_peft_model

    config = peft_config(encoder.model, cfg)
    with warnings.catch_warnings():
        _ignore_block_size_warning()
        encoder.model = get_peft_model(encoder.model, config, adapter_name=name)
    if encoder.resolved is not None:  # PEFT records the load path; artifacts name the Hub id
        encoder.model.peft_config[name].base_model_name_or_path = encoder.resolved.hub_id
        encoder.model.peft_config[name].revision = encoder.resolved.revision
    encoder.model.train()
    return encoder


def _ignore_block_size_warning() -> None:
    """The full kind wraps whole blocks; PEFT wants their in/out sizes only for display."""
    warnings.filterwarnings("ignore", message="Unsupported layer type")


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def check_top_k(model: nn.Module, top_k: int) -> LayerStack:
    """The model's block stack, once ``adapter.top_k`` is known to fit it.

    Raises:
        ConfigError: ``top_k`` exceeds the number of blocks (before any work is done on it).
    """
    stack = find_layer_stack(model)
    if top_k > stack.num_layers:
        raise ConfigError(
            f"adapter.top_k={top_k} but {type(model).__name__} has only {stack.num_layers} "
            f"layers; set adapter.top_k to 1..{stack.num_layers} (adapter.top_k="
            f"{stack.num_layers} trains every layer)."
        )
    return stack


def layer_summary(model: nn.Module, top_k: int) -> dict[str, object]:
    """Where the adapter sits: layer-stack prefix, number of layers, trained layer indices."""
    stack = find_layer_stack(model)
    return {
        "layer_prefix": stack.prefix,
        "num_layers": stack.num_layers,
        "trained_layers": list(range(stack.num_layers - top_k, stack.num_layers)),
    }


def save_adapter(
    model: nn.Module, out_dir: str | Path, files: dict[str, str], adapter_name: str = "default",
    overwrite: bool = False, signature: RoutingSignature | None = None,
) -> Path:
    """Save a PEFT model's adapter plus lastlayer's side files, atomically, safetensors only.

    Args:
        model: The (unwrapped) ``PeftModel``.
        out_dir: The artifact folder, e.g. ``adapters/medical/<name>``.
        files: Extra text files to write next to the PEFT files (``lastlayer.json``,
            ``recipe.yaml``, ``eval.json``, ``README.md``; see
            :func:`lastlayer.artifact.side_files`).
        adapter_name: Which adapter of ``model`` to save.
        overwrite: Replace an existing artifact at ``out_dir``.
        signature: The adapter's routing signature, saved as ``routing.safetensors``.

    Raises:
        ArtifactError: ``out_dir`` is a file or a non-artifact folder, or an artifact and
            ``overwrite`` is false.
    """

    def write(tmp: Path) -> None:
        model.save_pretrained(
            tmp, selected_adapters=[adapter_name], safe_serialization=True,
            save_embedding_layers=False,  # top-k adapters never touch embeddings
        )
        if adapter_name != "default":  # PEFT nests non-default adapters in a subfolder
            for item in (tmp / adapter_name).iterdir():
                os.replace(item, tmp / item.name)
            (tmp / adapter_name).rmdir()
            if _is_full(model.peft_config[adapter_name]):
                weights = tmp / WEIGHTS_NAME
                state = _rename_full_keys(load_file(weights), adapter_name, "default")
                save_file(state, weights, metadata={"format": "pt"})
        for filename, text in files.items():
            (tmp / filename).write_text(text, encoding="utf-8")
        if signature is not None:
            write_signature(tmp, signature)

    return write_atomically(out_dir, write, overwrite)


def folder_size(path: str | Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def load_adapter(encoder: Encoder, path: str | Path, name: str = "default") -> Encoder:
    """Load an artifact onto ``encoder``'s base model (eval mode, frozen).

    The first call wraps the base in a ``PeftModel``; later calls add adapters under new
    names so several domains share one base in memory.
    """
    from peft import PeftConfig, PeftModel

    if Path(path).is_dir():  # a damaged folder fails here, naming the file, not inside PEFT
        artifact.check_peft_files(path)
    config = PeftConfig.from_pretrained(str(path))
    if isinstance(encoder.model, PeftModel):
        _check_same_kind(encoder.model, config, path)
    full_renamed = name != "default" and _is_full(config)
    with warnings.catch_warnings():
        _ignore_block_size_warning()
        if full_renamed:  # expected: PEFT cannot match the keys, _load_full_weights does
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
        if isinstance(encoder.model, PeftModel):
            encoder.model.load_adapter(str(path), adapter_name=name)
        else:
            encoder.model = PeftModel.from_pretrained(encoder.model, str(path), adapter_name=name)
    if full_renamed:
        _load_full_weights(encoder.model, path, name)
    encoder.model.eval()
    return encoder


def _check_same_kind(model, config, path: str | Path) -> None:
    """PEFT holds one adapter type per model: say so before it fails deep inside."""
    def kind_of(peft_config) -> str:
        return "full" if _is_full(peft_config) else "lora"

    kind = kind_of(config)
    held = {name: kind_of(c) for name, c in model.peft_config.items()}
    if set(held.values()) - {kind}:
        raise ValueError(
            f"{path} is a {kind!r} artifact, but this model already holds "
            f"{', '.join(f'{n!r} ({k})' for n, k in held.items())}: PEFT keeps adapters of one "
            f"kind per model. Load it onto a separate encoder (load_encoder again)."
        )


# ---------------------------------------------------------------------------------------
# The full kind under adapter names other than "default".
#
# PEFT strips the adapter name from saved keys only when it is the second-to-last key
# component (``q_proj.lora_A.default.weight``). A full-kind adapter wraps whole blocks, so
# its keys keep the name in the middle (``layer.3.ln_tuning_layers.default.output.dense
# .weight``) and PEFT silently loads nothing under any other name. Artifacts therefore
# always store the name "default" (what ``PeftModel.from_pretrained`` uses), and
# ``load_adapter`` renames the keys itself when loading under another name.

WEIGHTS_NAME = artifact.WEIGHTS


def _is_full(config) -> bool:
    return getattr(config, "peft_type", None) == "LN_TUNING"  # PeftType is a str enum


def _rename_full_keys(state: dict, old: str, new: str) -> dict:
    """Swap the adapter name inside full-kind (LN tuning) state-dict keys."""
    return {
        k.replace(f".ln_tuning_layers.{old}.", f".ln_tuning_layers.{new}."): v
        for k, v in state.items()
    }


def _load_full_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load a full-kind artifact's weights (stored as "default") into adapter ``name``."""
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():  # a Hub id rather than a folder
        from huggingface_hub import hf_hub_download

        weights = Path(hf_hub_download(str(path), WEIGHTS_NAME))
    state = _rename_full_keys(load_file(weights), "default", name)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if f".ln_tuning_layers.{name}." in k]
    if result.unexpected_keys or missing or not state:
        raise RuntimeError(
            f"{path}: the full-kind adapter weights do not fit this base model "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing[:3]})."
        )


def model_config_of(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` an artifact was trained with (base id, pooling, max_length, ...).

    A Hub base is pinned to the commit it was trained on when that is known.
    """
    meta = artifact.read(path)
    base, emb = meta.base, meta.embedding
    gguf = base.file if base.dequantized_gguf and base.origin != "package" else None
    settings = {
        "name_or_path": base.model, "revision": base.revision or base.commit,
        "gguf_file": gguf, "pooling": emb.pooling, "normalize": emb.normalize,
        "max_length": emb.max_length, "dtype": base.dtype, "quantization": base.quantization,
    }
    try:
        return from_dict(ModelConfig, settings)
    except ConfigError as err:
        raise ArtifactError(f"{Path(path) / artifact.METADATA}: {err}") from None


def load_target(target: str | Path, **model_overrides) -> Encoder:
    """An adapter (it has ``lastlayer.json``) -> its base + adapter; else a base model.

    Args:
        target: An artifact folder, a Hub adapter ``ORG/NAME[@REVISION]``
            (:func:`lastlayer.hub.adapter_folder`), a base model's Hub id
            (``@REVISION`` pins it too), or a local model folder.
        model_overrides: ``ModelConfig`` fields to change (e.g. ``max_length=256``).

    Raises:
        ArtifactError: ``target`` is a damaged artifact, or a PEFT adapter (folder or Hub
            repo) without ``lastlayer.json`` (nothing says how to pool it).
    """
    from dataclasses import replace

    from lastlayer import hub

    if not artifact.is_artifact(target) and (Path(target) / artifact.PEFT_CONFIG).is_file():
        raise ArtifactError(
            f"{target} holds a PEFT adapter but no {artifact.METADATA}, so it is not a "
            "lastlayer artifact: load its base with load_encoder and the adapter with "
            "load_adapter."
        )
    folder = hub.adapter_folder(target)
    if folder is None:
        local = Path(target).expanduser().exists()
        name, revision = (str(target), None) if local else hub.split_revision(str(target))
        config = ModelConfig(name_or_path=name, revision=revision)
        try:
            return load_encoder(replace(config, **model_overrides))
        except ModelNotFoundError as err:
            if local or hub.parse_ref(str(target)) is None:
                raise
            raise ModelNotFoundError(f"{target} is neither a lastlayer adapter in the Hugging "
                                     f"Face cache nor a loadable base model: {err}") from None
    encoder = load_encoder(replace(model_config_of(folder), **model_overrides))
    return load_adapter(encoder, folder)
