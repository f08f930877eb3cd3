"""What an artifact folder holds: its file names, and the error every fault in it raises.

An artifact is a flat folder that PEFT loads as it is (``adapter_config.json`` +
``adapter_model.safetensors``) plus lastlayer's side files. :data:`FILES` is all of them:
what is pushed to and pulled from the Hub (safetensors weights only; never checkpoints,
pickles or code).
"""

from __future__ import annotations

METADATA = "lastlayer.json"
PEFT_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
RECIPE = "recipe.yaml"
EVAL = "eval.json"
CARD = "README.md"
TRAIN_LOG = "train_log.json"
ROUTING = "routing.safetensors"
FILES = (METADATA, PEFT_CONFIG, WEIGHTS, ROUTING, RECIPE, EVAL, TRAIN_LOG, CARD)
"""Every file an artifact may hold, all at its top level: what is pushed to and pulled from
the Hub (safetensors weights only; never checkpoints, pickles or code)."""


class ArtifactError(ValueError):
    """An artifact folder is missing, malformed, from a newer lastlayer, or may not be replaced."""
