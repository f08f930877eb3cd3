"""Load an artifact the plain PEFT way: the reference lastlayer's engine is compared with.

lastlayer embeds through its engine (``lastlayer.core.target.load_target``,
``lastlayer.inference.Embedder``), which never changes its base. The tests check it
against what PEFT itself gives: :func:`load_adapter` wraps ``encoder.model`` in a
``PeftModel`` (``PeftModel.from_pretrained``), exactly as a user of PEFT alone would.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lastlayer import artifact
from lastlayer.core.encoder import Encoder
from lastlayer.core.kinds import kind_of
from lastlayer.core.kinds.common import ignore_block_size_warning


def load_adapter(encoder: Encoder, path: str | Path, name: str = "default") -> Encoder:
    """Load an artifact onto ``encoder``'s model the plain PEFT way (eval mode, frozen).

    The first call wraps the model in a ``PeftModel``; later calls add adapters under new
    names. This changes ``encoder`` (its ``model`` is reassigned).

    Raises:
        ArtifactError: A damaged artifact folder.
        ValueError: ``path`` is of another kind than the adapters the model holds.
    """
    from peft import PeftConfig, PeftModel

    if Path(path).is_dir():  # a damaged folder fails here, naming the file, not inside PEFT
        artifact.check_peft_files(path)
    config = PeftConfig.from_pretrained(str(path))
    kind = kind_of(config)
    if isinstance(encoder.model, PeftModel):
        _check_same_kind(encoder.model, kind.NAME, path)
    with warnings.catch_warnings():
        ignore_block_size_warning()
        if kind.expects_missing_keys(name):  # expected: kind.load_named loads them
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
        if isinstance(encoder.model, PeftModel):
            encoder.model.load_adapter(str(path), adapter_name=name)
        else:
            encoder.model = PeftModel.from_pretrained(encoder.model, str(path), adapter_name=name)
    kind.load_named(encoder.model, path, name)
    encoder.model.eval()
    return encoder


def _check_same_kind(model, kind: str, path: str | Path) -> None:
    """PEFT holds one adapter type per model: say so before it fails deep inside."""
    held = {name: kind_of(c).NAME for name, c in model.peft_config.items()}
    if set(held.values()) - {kind}:
        raise ValueError(
            f"{path} is a {kind!r} artifact, but this model already holds "
            f"{', '.join(f'{n!r} ({k})' for n, k in held.items())}: PEFT keeps adapters of one "
            f"kind per model. Load it onto a separate encoder (load_encoder again)."
        )
