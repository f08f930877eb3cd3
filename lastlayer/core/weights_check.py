"""An adapter's weights must be the base's top-k blocks' own: checked before PEFT reads them.

An artifact may come from a stranger. Its ``adapter_model.safetensors`` header (already
proven sound by :func:`lastlayer.artifact.safetensors_check.check_safetensors`) is compared
with the base it is about to be loaded onto, before any tensor is read:

- every tensor is named ``base_model.model.<block list>.<i>.…`` with ``i`` one of the top-k
  blocks L−k … L−1: nothing may reach a bottom block, the embeddings, a head, or another
  adapter's weights (LoRA keys carry no adapter name; full-kind keys carry ``default``);
- LoRA: ``<module>.lora_A.weight`` ``(r, in)`` and ``<module>.lora_B.weight`` ``(out, r)``
  of a linear layer of that block, both present, the same ``r``;
- full: ``ln_tuning_layers.default.<name>`` for a parameter or buffer of that block, with
  its shape, and every one of them present.

Anything else is an :class:`~lastlayer.artifact.ArtifactError` naming the file and the
first offending tensor, instead of PEFT's size-mismatch traceback or a silent partial load.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lastlayer.artifact import PEFT_CONFIG, WEIGHTS, ArtifactError, read_json
from lastlayer.artifact.safetensors_check import TensorEntry, check_safetensors
from lastlayer.core.layers import find_layer_stack

PEFT_ROOT = "base_model.model."
FULL_COPY = "ln_tuning_layers.default."


def check_adapter_weights(base: nn.Module, folder: str | Path, top_k: int) -> None:
    """Refuse an artifact whose weights are not exactly an adapter of ``base``'s top-k blocks.

    Args:
        base: The model the adapter is about to be loaded onto (not changed).
        folder: The artifact folder.
        top_k: The adapter's k (``lastlayer.json``); the kind is the PEFT config's type.

    Raises:
        ArtifactError: ``top_k`` does not fit the base, or a tensor's name or shape does not
            fit it, or a tensor the kind needs is missing.
    """
    weights = Path(folder) / WEIGHTS
    stack = find_layer_stack(base)
    if not 1 <= top_k <= stack.num_layers:
        raise ArtifactError(f"{folder}: the adapter trains the top {top_k} blocks, but the base "
                            f"has {stack.num_layers}; it belongs to another base.")
    layers = base.get_submodule(stack.prefix)
    blocks = {i: layers[i] for i in range(stack.num_layers - top_k, stack.num_layers)}
    entries = check_safetensors(weights)
    check = _checker(Path(folder))
    check(weights, f"{PEFT_ROOT}{stack.prefix}.", blocks, entries)


def _checker(folder: Path):
    """The check for the adapter's PEFT type; refuses a config that saves whole modules."""
    config = read_json(folder / PEFT_CONFIG)
    if not isinstance(config, dict) or config.get("peft_type") not in CHECKS:
        raise ArtifactError(f"{folder / PEFT_CONFIG}: PEFT type "
                            f"{config.get('peft_type') if isinstance(config, dict) else None!r} "
                            f"is not a lastlayer adapter kind (known: {', '.join(CHECKS)}).")
    if config.get("modules_to_save"):
        raise ArtifactError(f"{folder / PEFT_CONFIG}: modules_to_save="
                            f"{config['modules_to_save']!r} would replace whole modules of the "
                            "base; a lastlayer adapter has none, so it is refused.")
    return CHECKS[config["peft_type"]]


def _block_of(weights: Path, prefix: str, blocks: dict[int, nn.Module],
              name: str) -> tuple[int, str]:
    """(block index, the rest of the name) of a tensor inside one of the top-k blocks."""
    index, _, rest = name.removeprefix(prefix).partition(".")
    if not name.startswith(prefix) or not index.isdigit() or int(index) not in blocks:
        raise ArtifactError(
            f"{weights}: tensor {name!r} is not in the top-{len(blocks)} blocks of this base "
            f"({prefix}{min(blocks)} … {prefix}{max(blocks)}); a lastlayer adapter changes "
            "nothing else, so this file is refused (another base, or not a lastlayer adapter)."
        )
    return int(index), rest


def _misfit(weights: Path, name: str, shape: tuple[int, ...], expected: object) -> ArtifactError:
    return ArtifactError(f"{weights}: tensor {name!r} has shape {list(shape)} but this base "
                         f"needs {expected}; the adapter was trained on another base.")


def _check_lora(weights: Path, prefix: str, blocks: dict[int, nn.Module],
                entries: dict[str, TensorEntry]) -> None:
    ranks: dict[str, dict[str, int]] = {}
    for name, entry in entries.items():
        index, rest = _block_of(weights, prefix, blocks, name)
        module_name, part = rest.rpartition(".lora_")[::2]
        module = (blocks[index].get_submodule(module_name)
                  if module_name and part in ("A.weight", "B.weight") else None)
        size = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if module is None or None in size:
            raise ArtifactError(f"{weights}: tensor {name!r} is not the LoRA weight of a linear "
                                "layer of this base; the file is refused.")
        shape = entry.shape
        if part == "A.weight" and (len(shape) != 2 or shape[1] != size[0]):
            raise _misfit(weights, name, shape, f"[r, {size[0]}]")
        if part == "B.weight" and (len(shape) != 2 or shape[0] != size[1]):
            raise _misfit(weights, name, shape, f"[{size[1]}, r]")
        rank = shape[0] if part == "A.weight" else shape[1]
        ranks.setdefault(prefix + f"{index}.{module_name}", {})[part[0]] = rank
    for module_name, pair in ranks.items():
        if set(pair) != {"A", "B"} or pair["A"] != pair["B"]:
            raise ArtifactError(f"{weights}: the LoRA weights of {module_name!r} are not a pair "
                                f"of the same rank ({pair}); the file is damaged.")


def _check_full(weights: Path, prefix: str, blocks: dict[int, nn.Module],
                entries: dict[str, TensorEntry]) -> None:
    expected = {f"{prefix}{i}.{FULL_COPY}{n}": tuple(t.shape)
                for i, block in blocks.items() for n, t in block.state_dict().items()}
    for name, entry in entries.items():
        _block_of(weights, prefix, blocks, name)
        if name not in expected:
            raise ArtifactError(f"{weights}: tensor {name!r} is not a weight of the top-"
                                f"{len(blocks)} blocks' trained copies; the file is refused.")
        if entry.shape != expected[name]:
            raise _misfit(weights, name, entry.shape, list(expected[name]))
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise ArtifactError(f"{weights}: {len(missing)} weight(s) of the trained blocks are "
                            f"missing (first: {missing[0]!r}); the file is incomplete.")


CHECKS = {"LORA": _check_lora, "LN_TUNING": _check_full}
"""PEFT type -> the check of its tensors."""
