"""Export an adapter as a sentence-transformers model folder: the way into the ecosystem.

``export_sentence_transformers(adapter, out)`` loads the artifact on the inference engine
exactly as lastlayer embeds with it (``load_target``: its base from the Hub, a packaged
offline copy or GGUF, and its merged head: LoRA ``W + BA`` merged into private copies of
the top-k blocks, or the full kind's trained copies), puts the head's blocks in place of
the base's top-k blocks (the adapter's kind does, :mod:`lastlayer.core.kinds`) and writes a
folder that
``sentence_transformers.SentenceTransformer(out)`` loads, offline, with no lastlayer or
PEFT installed:

- the merged model (``config.json``, ``model.safetensors``) and the tokenizer at the root,
  so ``transformers.AutoModel.from_pretrained(out)`` loads it as well;
- ``modules.json`` (Transformer -> Pooling [-> Normalize]), ``sentence_bert_config.json``
  (``max_seq_length`` = the artifact's ``max_length``), ``1_Pooling/config.json`` (mean,
  cls or lasttoken), ``2_Normalize`` when the artifact normalises, and
  ``config_sentence_transformers.json``, in the layout of the Hub's original
  sentence-transformers models (e.g. all-MiniLM-L6-v2), which newer releases still read;
- a model card ``README.md`` and ``lastlayer_export.json`` (where it came from, how it
  was checked).

The sentence-transformers files and the card are :mod:`lastlayer.inference.st_layout`'s;
this module loads, merges, saves, checks and refuses.

The exported model embeds like lastlayer: the same tokenizer object (decoders pad with EOS
on the right), truncation at ``max_length``, the same pooling over the attention mask and
the same normalisation. When sentence-transformers is installed the export checks it
before the folder is moved into place: it loads the folder with ``SentenceTransformer``
and compares its vectors with lastlayer's own encoding of the artifact on probe texts
(one longer than ``max_length``), and refuses to finish below :data:`MIN_COSINE`.

Refused: an artifact trained on a bitsandbytes 8-bit / 4-bit base (merging into quantized
weights is lossy, and a dequantized copy would not reproduce the vectors the adapter was
trained and evaluated with), and an output folder that is not empty and not an earlier
export. A GGUF base is saved as the dequantized weights lastlayer trained on (the card
says so).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lastlayer import artifact
from lastlayer.artifact import ArtifactError, ArtifactMeta
from lastlayer.config import ConfigError
from lastlayer.core.encoder import Encoder
from lastlayer.core.gguf_cache import drop_gguf_marker
from lastlayer.core.kinds import kind_named
from lastlayer.core.kinds.common import peft_leftovers
from lastlayer.core.target import Target, adapter_target
from lastlayer.inference.st_layout import hidden_size, model_card, sentence_transformers_files

log = logging.getLogger(__name__)

FORMATS = ("sentence-transformers",)
"""The formats ``lastlayer export --format`` writes."""

MARKER = "lastlayer_export.json"
"""The file that marks a folder as a lastlayer export (so ``--overwrite`` may replace it)."""

MIN_COSINE = {"float32": 0.99999, "bfloat16": 0.999, "float16": 0.999}
"""The least per-text cosine accepted between the export and lastlayer, by base dtype.

Half-precision bases round their pooled vectors differently in the two implementations
(sentence-transformers pools in float32 and rounds back to the model dtype; lastlayer
pools in the model dtype and returns float32), hence the looser bound."""

PROBE_TEXTS = (
    "Chest pain radiating to the left arm in a 58-year-old smoker.",
    "The film is slow, but the last twenty minutes are worth it.",
    "Embeddings",
    "Markets fell sharply after the central bank raised interest rates again on Tuesday.",
    "Patients with type 2 diabetes were randomised to metformin or placebo for 12 weeks; "
    "HbA1c, fasting glucose and body weight were measured at baseline and at follow-up.",
)
"""Texts the export is checked on (plus one longer than ``max_length``, built per artifact)."""


class ExportError(ArtifactError):
    """The adapter cannot be exported (or not there); the message says why and what to do."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_sentence_transformers` wrote and how it was checked.

    Attributes:
        path: The exported folder.
        min_cosine: The least cosine between the export's vectors (loaded with
            sentence-transformers) and lastlayer's on the probe texts; None when the check
            was skipped.
        texts: How many probe texts were compared (0 when skipped).
        dequantized_gguf: The base was a GGUF file: the saved weights are its dequantized copy.
    """

    path: Path
    min_cosine: float | None
    texts: int
    dequantized_gguf: bool


# ---------------------------------------------------------------------------------------
# Refusals: checked before any model is loaded.


def check_export_dir(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write an export where it would replace something it should not.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) an
    earlier export (it holds :data:`MARKER`). Never replaced: a file, an artifact, or any
    other folder with files.

    Raises:
        ExportError: The message says why and what to change.
    """
    path, found = Path(path), artifact.occupant(path)
    if found == "file":
        raise ExportError(f"{path} is a file; lastlayer export never replaces it. Choose "
                          "another output folder.")
    if found == "nothing":
        return
    if artifact.is_artifact(path):
        raise ExportError(f"{path} is a lastlayer artifact; export never replaces it, even "
                          "with --overwrite. Choose another output folder.")
    if (path / MARKER).is_file():
        if not overwrite:
            raise ExportError(f"{path} already holds an export; pass --overwrite to replace "
                              "it, or choose another output folder.")
    else:
        raise ExportError(f"{path} is a folder with files but not a lastlayer export (no "
                          f"{MARKER}); export never replaces it, even with --overwrite. "
                          "Choose another output folder.")


def check_exportable(adapter: str | Path) -> ArtifactMeta:
    """The validated metadata of an artifact that can be exported.

    Raises:
        ExportError: ``adapter`` is not an artifact folder, or its base was quantized.
        ArtifactError: The artifact is damaged (the message names the file).
    """
    if not artifact.is_artifact(adapter):
        raise ExportError(
            f"{adapter} is not a lastlayer artifact folder (no {artifact.METADATA}): export "
            "merges an adapter into its base; pass an adapter folder, e.g. "
            "adapters/<domain>/<name>."
        )
    meta = artifact.read(adapter)
    if meta.base.quantization:
        raise ExportError(
            f"{adapter} was trained on a {meta.base.quantization} (bitsandbytes) quantized "
            "base; merging the adapter into quantized weights is lossy, and a dequantized "
            "copy would not give the vectors the adapter was trained and evaluated with. "
            "Use it with lastlayer, or train it on an unquantized base "
            "(model.quantization=null) to export it."
        )
    return meta


# ---------------------------------------------------------------------------------------
# The export.


def export_sentence_transformers(
    adapter: str | Path, out_dir: str | Path, overwrite: bool = False, verify: bool = True,
    base: str | Path | None = None,
) -> ExportResult:
    """Write ``adapter`` merged into its base as a sentence-transformers model folder.

    Args:
        adapter: A lastlayer artifact folder.
        out_dir: The folder to write (see :func:`check_export_dir`); written atomically.
        overwrite: Replace an earlier export at ``out_dir``.
        verify: When sentence-transformers is installed, load the folder with it and
            compare with lastlayer's vectors before moving the folder into place.
        base: Where to load the base from instead of what the artifact names (a local
            folder, e.g. when the artifact was trained on a folder of another machine); it
            must hold the same weights.

    Returns:
        Where it was written and how it was checked.

    Raises:
        ExportError: Not an artifact, a quantized base, an ``out_dir`` that may not be
            replaced, or an export whose vectors differ from lastlayer's.
        ArtifactError: The artifact is damaged.
        ModelNotFoundError: The artifact's base cannot be found.
    """
    meta = check_exportable(adapter)
    check_export_dir(out_dir, overwrite)
    overrides = {"name_or_path": str(base)} if base is not None else {}
    target = adapter_target(adapter, merge=True, device="cpu", **overrides)
    probes = probe_texts(target.max_length)
    # lastlayer's own encoding (the Embedder's merged head), before the blocks move
    reference = target.encode(probes, batch_size=4, progress=False).numpy()
    fingerprint = target.fingerprint
    if fingerprint != meta.base.fingerprint:
        log.warning(
            "The base loaded for %s (weights fingerprint %s) is not the one it was trained on "
            "(%s): the export gives lastlayer's vectors on this base, which may not be what "
            "the adapter was trained and evaluated with.", adapter, fingerprint,
            meta.base.fingerprint,
        )
    held = {"encoder": merge(target)}
    del target
    checked: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        save_folder(tmp, held.pop("encoder"), meta)  # saved: freed before the check loads it
        if verify:
            checked.update(check_folder(tmp, probes, reference, meta.base.dtype))
        marker = export_record(meta, fingerprint, checked or None)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    path = artifact.write_atomically(out_dir, write, overwrite, check=check_export_dir)
    return ExportResult(path, checked.get("min_cosine"), checked.get("texts", 0),
                        meta.base.dequantized_gguf)


def probe_texts(max_length: int) -> list[str]:
    """:data:`PROBE_TEXTS` plus one text of ``2 * max_length`` words (cut by truncation)."""
    words = " ".join(PROBE_TEXTS).split()
    long = " ".join(words[i % len(words)] for i in range(2 * max_length))
    return [*PROBE_TEXTS, long]


def merge(target: Target) -> Encoder:
    """The target's base with its adapter's merged blocks in place: the encoder to save.

    The adapter's kind puts the head's private blocks (merged LoRA, or the full kind's
    trained copies) where the base's top-k blocks were; the target's engine must not be
    used afterwards (its base changed).

    Raises:
        RuntimeError: Adapter weights were left behind (nothing would embed as trained).
    """
    encoder = target.encoder
    model = kind_named(target.meta.kind).merged_model(encoder.model, list(target.head.blocks))
    left = peft_leftovers(model)
    if left:
        raise RuntimeError(f"merging the adapter left PEFT weights in the model: {left[:3]}")
    model.eval()
    try:
        drop_gguf_marker(model)
    except ConfigError as err:  # the GGUF weights kept packed: nothing plain to save
        raise ExportError(str(err)) from None
    return Encoder(model=model, tokenizer=encoder.tokenizer, pooling=target.pooling,
                   normalize=target.normalize, max_length=target.max_length,
                   resolved=encoder.resolved, fingerprint=encoder.fingerprint)


def save_folder(folder: Path, encoder: Encoder, meta: ArtifactMeta) -> None:
    """Write the merged model, its tokenizer and the sentence-transformers files to ``folder``."""
    encoder.model.save_pretrained(folder)
    # Plain transformers users then truncate where lastlayer does (truncation=True).
    encoder.tokenizer.model_max_length = encoder.max_length
    encoder.tokenizer.save_pretrained(folder)
    hidden = hidden_size(encoder)
    for name, data in sentence_transformers_files(meta, hidden).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if meta.embedding.normalize:
        (folder / "2_Normalize").mkdir()  # no files, as sentence-transformers saves it
    (folder / artifact.CARD).write_text(model_card(meta, hidden), encoding="utf-8")
    readable_by_all(folder)


def readable_by_all(folder: Path) -> None:
    """Give every file under ``folder`` the read permissions ``folder`` itself was made with.

    transformers writes ``model.safetensors`` readable by its owner only (600), while an
    export is meant to be served, often by another user (a container, a model server).
    ``folder`` was created under the user's umask, so its read bits are what the user allows.
    """
    read = folder.stat().st_mode & 0o444
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | read)


def export_record(meta: ArtifactMeta, fingerprint: str, checked: dict[str, Any] | None) -> dict:
    """The content of :data:`MARKER`: the source artifact, the base loaded, the check."""
    from lastlayer._version import __version__

    return {
        "format": "sentence-transformers",
        "lastlayer_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "merged": True,
        "base_fingerprint_loaded": fingerprint,
        "verified": checked,
        "artifact": meta.to_dict(),
    }


# ---------------------------------------------------------------------------------------
# The check: the folder as sentence-transformers loads it vs lastlayer's vectors.


def check_folder(folder: Path, texts: list[str], reference, dtype: str) -> dict[str, Any]:
    """Load ``folder`` with sentence-transformers and compare its vectors with ``reference``.

    Returns:
        ``{"min_cosine", "texts", "sentence_transformers"}``, or ``{}`` when
        sentence-transformers is not installed (the check is skipped, with a warning).

    Raises:
        ExportError: A text's cosine is below :data:`MIN_COSINE` for ``dtype``.
    """
    try:
        import sentence_transformers
    except ImportError:
        log.warning("sentence-transformers is not installed: the export was not checked "
                    "(pip install sentence-transformers, then export again to check it).")
        return {}
    model = sentence_transformers.SentenceTransformer(
        str(folder), device="cpu", local_files_only=True
    )
    vectors = model.encode(texts, batch_size=4, convert_to_numpy=True, show_progress_bar=False)
    low = min(cosines(vectors, reference))
    bound = MIN_COSINE.get(dtype, MIN_COSINE["float32"])
    if low < bound:
        raise ExportError(
            f"the exported model does not reproduce lastlayer's vectors (least cosine "
            f"{low:.6f} < {bound} over {len(texts)} probe texts, sentence-transformers "
            f"{sentence_transformers.__version__}); nothing was written. Please report it "
            "with the artifact's lastlayer.json."
        )
    return {"min_cosine": low, "texts": len(texts),
            "sentence_transformers": sentence_transformers.__version__}


def cosines(a, b) -> list[float]:
    """Row-wise cosine similarities of two (N, d) arrays, in float64."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return ((a * b).sum(axis=1) / np.maximum(norms, 1e-30)).tolist()
