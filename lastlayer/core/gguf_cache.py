"""A GGUF file dequantized once into a cached safetensors folder, loaded from there.

transformers refuses to quantize a model it loads from a GGUF file ("You cannot combine
Quantization and loading a model from a GGUF file"): its GGUF loader dequantizes the blocks
itself, and bitsandbytes wants plain weights. So a GGUF base asked for 8-bit or 4-bit is
dequantized once (float32, the weights an unquantized load of the file gives) into a folder
``from_pretrained`` reads (``config.json``, ``model.safetensors``, the tokenizer files),
and that folder is then loaded quantized.

An unquantized load of a small GGUF file goes through the same folder: transformers
dequantizes and converts the tokenizer at every load (12.5 s for the packaged
SmolLM2-135M), where the folder loads the bit-identical float32 weights in 0.1 s. Files up
to :data:`CACHE_UNQUANTIZED_MAX_BYTES` qualify, so that the float32 copy stays a few GB at
most (a 4-bit file grows 8× in float32); a larger file is dequantized at each load as
before, rather than written out whole without being asked.

The folder is keyed by the sha256 of the GGUF file's bytes, so a changed file is never
mistaken for the old one. Hashing a multi-GB file takes seconds, so a small index maps
(absolute path, size, mtime) to the hash; a file whose size or mtime changed is hashed
again, and the folder its old hash named is removed when no other file uses it. Each
folder holds ``source.json`` (the hash it was made from), checked before the folder is used,
and is written with :func:`lastlayer.artifact.atomic.replace_folder`: a run killed while
dequantizing leaves no half folder under the final name.

Where: ``$HF_HOME/lastlayer/gguf`` (``HF_HOME`` defaults to ``$XDG_CACHE_HOME/huggingface``,
itself ``~/.cache/huggingface``), beside the Hugging Face caches a user already manages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from lastlayer.artifact.atomic import replace_folder, write_text
from lastlayer.config import ConfigError

log = logging.getLogger(__name__)

CACHE_UNQUANTIZED_MAX_BYTES = 256 * 2**20
"""The largest GGUF file an unquantized load reads through the cache (float32 copy ≤ 2 GB)."""

INDEX = "index.json"
SOURCE = "source.json"
_CHUNK = 1 << 20


def cache_root() -> Path:
    """``$HF_HOME/lastlayer/gguf``, with Hugging Face's defaults for ``HF_HOME``.

    Read from the environment at each call (not at import), so a changed ``HF_HOME`` holds.
    """
    hf_home = os.environ.get("HF_HOME")
    if not hf_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        hf_home = os.path.join(xdg, "huggingface")
    return Path(hf_home).expanduser() / "lastlayer" / "gguf"


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of ``path``'s bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_index(root: Path) -> dict[str, dict]:
    """The index (path -> size, mtime_ns, sha256); empty if missing or unreadable."""
    try:
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def cached_sha256(gguf: Path, root: Path) -> str:
    """The file's sha256, from the index when its size and mtime are unchanged.

    A changed (or new) file is hashed and the index updated; the folder the file's previous
    hash named is removed once no other indexed file has that hash.
    """
    key, stat = str(gguf.resolve()), gguf.stat()
    index = _read_index(root)
    entry = index.get(key)
    if (isinstance(entry, dict) and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns and entry.get("sha256")):
        return str(entry["sha256"])
    sha = file_sha256(gguf)
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
    old = entry.get("sha256") if isinstance(entry, dict) else None
    if old and old != sha and all(e.get("sha256") != old for e in index.values()):
        shutil.rmtree(root / old, ignore_errors=True)
    return sha


def _complete(folder: Path, sha: str) -> bool:
    """``folder`` is a finished dequantized copy of the file with hash ``sha``."""
    try:
        source = json.loads((folder / SOURCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(source, dict) and source.get("sha256") == sha
            and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file())


def cached_for_unquantized(gguf: str | os.PathLike) -> bool:
    """Whether an unquantized load of ``gguf`` reads it through the cache (small files)."""
    return Path(gguf).stat().st_size <= CACHE_UNQUANTIZED_MAX_BYTES


def dequantized_folder(gguf: str | os.PathLike, root: Path | None = None) -> Path:
    """A folder holding ``gguf``'s dequantized weights and tokenizer, made on first use.

    Args:
        gguf: The GGUF file.
        root: The cache folder (default :func:`cache_root`).

    Returns:
        ``<root>/<sha256 of the file>``: ``config.json``, ``model.safetensors`` (float32)
        and the tokenizer files, loadable with ``from_pretrained``.

    Raises:
        ConfigError: The file's weights cannot be saved as plain weights (see
            :func:`drop_gguf_marker`).
    """
    gguf = Path(gguf)
    root = root or cache_root()
    sha = cached_sha256(gguf, root)
    folder = root / sha
    if _complete(folder, sha):
        return folder
    log.info("Dequantizing %s once into %s (later loads read it from there).", gguf.name,
             folder)
    return replace_folder(folder, lambda tmp: _write_dequantized(gguf, sha, tmp))


def _write_dequantized(gguf: Path, sha: str, out: Path) -> None:
    """Load ``gguf`` in float32 and save model, tokenizer and ``source.json`` into ``out``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lastlayer.core.progress import library_bars_on_terminals_only

    with library_bars_on_terminals_only():
        model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        drop_gguf_marker(model)
        model.save_pretrained(out, safe_serialization=True)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    source = {"sha256": sha, "file": gguf.name, "size": gguf.stat().st_size}
    (out / SOURCE).write_text(json.dumps(source, indent=1) + "\n", encoding="utf-8")


def drop_gguf_marker(model) -> None:
    """Let a model loaded from a GGUF file be saved as the plain weights it holds.

    transformers marks such a model as quantized and refuses to save it, even when every
    weight was dequantized on load.

    Raises:
        ConfigError: transformers kept the weights packed in GGUF blocks (it does so when
            the ``kernels`` package is installed): there are no plain weights to save.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or getattr(method, "value", method) != "gguf":
        return
    if getattr(quantizer, "packed_modules", None):
        raise ConfigError(
            "the GGUF base was loaded with its weights kept in GGUF blocks (transformers does "
            "so when the `kernels` package is installed), so there are no plain weights to "
            "quantize or save: use an environment without `kernels` (pip uninstall kernels)."
        )
    quantizer.remove_quantization_config(model)
