"""Adapter kinds as plugins of one shape, registered in :data:`KINDS` (``lora``, ``full``).

Every lastlayer adapter changes blocks L−k … L−1 of its base and nothing else; the kinds
differ only in *how*. As PEFT keeps one folder per tuner (``tuners/<kind>/``: config,
layer, model), each kind here is one module that answers the same questions:

- ``peft_config(model, cfg)``: the PEFT config that attaches it for training, aimed at the
  explicit module names ``targets(model, cfg)`` of the top-k blocks;
- ``fix_saved(folder, adapter_name)``: make a saved artifact load as PEFT's "default";
- ``load_named(model, path, name)``: finish loading it under another adapter name;
- ``private_blocks(base, folder, top_k, merge)``: the adapter applied to private copies of
  the base's top-k blocks (what the inference engine runs; the base is never touched);
- ``private_blocks_from_model(model, top_k)``: the trained blocks of a model the adapter
  is attached to for training (what training measures, through the same head type);
- ``merged_model(base, blocks)``: the base with those blocks in place (what export saves);
- ``block_change(block, adapter_name)`` / ``private_change(original, private)``: how far
  a block moved (the probe's ``ΔW/W``), on a training copy or on private blocks;
- ``always_merged``: whether its private blocks are plain blocks whatever ``merge`` says.

Only these modules touch PEFT internals (``ln_tuning_layers``, ``merged_adapters``,
``LoraLayer``); adding a kind means adding a module and a line to :data:`KINDS`.
"""

from __future__ import annotations

from types import ModuleType

from lastlayer.core.kinds import full, lora

KINDS: dict[str, ModuleType] = {"lora": lora, "full": full}
"""``adapter.kind`` -> the module implementing it."""


def kind_named(name: str) -> ModuleType:
    """The kind module for ``adapter.kind`` (``lora`` or ``full``).

    Raises:
        ValueError: An unknown kind.
    """
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown adapter kind {name!r}; known: {', '.join(KINDS)}.") from None


def kind_of(peft_config) -> ModuleType:
    """The kind a PEFT config (``LoraConfig``, ``LNTuningConfig``) belongs to."""
    peft_type = getattr(peft_config, "peft_type", None)  # PeftType is a str enum
    for kind in KINDS.values():
        if peft_type == kind.PEFT_TYPE:
            return kind
    raise ValueError(f"no lastlayer adapter kind uses PEFT type {peft_type!r}.")
