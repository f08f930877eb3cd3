"""The kind-independent adapter API: attach for training, save, load, describe.

Every function here delegates what depends on the adapter's kind to its plugin in
:mod:`lastlayer.core.kinds` (``lora``, ``full``); both kinds are real PEFT tuners, so
every artifact loads with ``peft.PeftModel.from_pretrained(base, folder)``.

Training attaches a trainable copy (:func:`attach`) and saves it (:func:`save_adapter`);
everything that *embeds* with a saved adapter goes through the inference engine
(:mod:`lastlayer.core.engine`, :func:`~lastlayer.core.target.load_target`, re-exported here
for the commands that import it from this module).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torch import nn

from lastlayer.artifact import write_atomically
from lastlayer.config import AdapterConfig, ConfigError
from lastlayer.core.encoder import Encoder
from lastlayer.core.kinds import kind_named, kind_of
from lastlayer.core.kinds.common import ignore_block_size_warning
from lastlayer.core.layers import LayerStack, find_layer_stack
from lastlayer.core.routing import RoutingSignature, write_signature
from lastlayer.core.target import load_target

__all__ = [
    "adapter_targets", "attach", "check_top_k", "folder_size", "layer_summary",
    "load_target", "peft_config", "save_adapter", "trainable_parameters",
]


def adapter_targets(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """The explicit module names the adapter wraps: top-k linears (LoRA) or blocks (full)."""
    return kind_named(cfg.kind).targets(model, cfg)


def peft_config(model: nn.Module, cfg: AdapterConfig):
    """The PEFT config of a top-k adapter of kind ``cfg.kind`` for ``model``."""
    return kind_named(cfg.kind).peft_config(model, cfg)


def attach(encoder: Encoder, cfg: AdapterConfig, name: str = "default") -> Encoder:
    """Wrap ``encoder.model`` in a ``PeftModel`` whose only trainable weights are the adapter's.

    Everything below the top-k blocks stays frozen and never receives gradients, so
    autograd skips the backward through the bottom layers by itself.
    """
    from peft import get_peft_model

    config = peft_config(encoder.model, cfg)
    with warnings.catch_warnings():
        ignore_block_size_warning()
        encoder.model = get_peft_model(encoder.model, config, adapter_name=name)
    if encoder.resolved is not None:  # PEFT records the load path; artifacts name the Hub id
        encoder.model.peft_config[name].base_model_name_or_path = encoder.resolved.hub_id
        encoder.model.peft_config[name].revision = encoder.resolved.revision
    encoder.model.train()
    return encoder


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
            kind_of(model.peft_config[adapter_name]).fix_saved(tmp, adapter_name)
        for filename, text in files.items():
            (tmp / filename).write_text(text, encoding="utf-8")
        if signature is not None:
            write_signature(tmp, signature)

    return write_atomically(out_dir, write, overwrite)


def folder_size(path: str | Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
