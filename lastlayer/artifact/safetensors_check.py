"""Check a ``.safetensors`` file from its header alone, before any tensor is read.

An adapter may come from a stranger (the Hub), so its weights file is parsed here by hand
(the 8-byte little-endian header length, then the JSON header) and checked against the
file itself: the header fits in the file and is a JSON object of tensor entries; each
entry has a known dtype, a shape of non-negative integers and ``data_offsets`` whose byte
range is exactly ``dtype size x prod(shape)``, lies within the file's data area, and
overlaps no other tensor's. A file that claims a 100 GB tensor, points past its end or
lets two tensors share bytes is refused with an :class:`ArtifactError` naming it; nothing
is allocated from its claims. Torch-free (bytes and JSON only).

What the header's tensors must *be* (names and shapes of the base's top-k blocks) is the
core's business: :func:`lastlayer.core.weights_check.check_adapter_weights`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lastlayer.artifact.layout import ArtifactError

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
"""Bytes per element of each safetensors dtype."""

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The safetensors library's own limit on the JSON header (100 MB)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it (checked against the file)."""

    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offset in the data area
    end: int


def check_safetensors(path: str | Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file holds, by name, once its header is proven sound.

    Reads the header only (at most :data:`MAX_HEADER_BYTES`), never the tensor data.

    Raises:
        ArtifactError: The file is missing, truncated, or its header is not JSON, names an
            unknown dtype, a bad shape, or byte ranges that do not match the shapes, lie
            outside the file or overlap.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _damaged(path, f"{size} bytes, too short for a safetensors header")
            length = int.from_bytes(head, "little")
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise _damaged(path, f"its header claims {length} bytes but the file has "
                                    f"{size}")
            raw = f.read(length)
    except OSError as err:
        raise ArtifactError(f"{path}: cannot be read ({err.strerror or err}).") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    entries = {name: _entry(path, name, value) for name, value in header.items()
               if name != "__metadata__"}
    _check_layout(path, entries, size - 8 - length)
    return entries


def _entry(path: Path, name: str, value: object) -> TensorEntry:
    """One header entry, checked on its own (dtype, shape, offsets, size)."""
    where = f"tensor {name!r}"
    if not isinstance(value, dict):
        raise _damaged(path, f"{where}: its header entry is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _damaged(path, f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(n) for n in shape):
        raise _damaged(path, f"{where}: shape {shape!r} is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_natural, offsets))
            or offsets[0] > offsets[1]):
        raise _damaged(path, f"{where}: data_offsets {offsets!r} are not a byte range")
    claimed = DTYPE_BYTES[dtype] * math.prod(shape)
    if offsets[1] - offsets[0] != claimed:
        raise _damaged(path, f"{where}: shape {shape} of {dtype} needs {claimed} bytes, but its "
                            f"byte range holds {offsets[1] - offsets[0]}")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _check_layout(path: Path, entries: dict[str, TensorEntry], data_bytes: int) -> None:
    """Every byte range inside the data area, none overlapping another."""
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.end > data_bytes:
            raise _damaged(path, f"tensor {name!r} ends at byte {entry.end} of a data "
                                f"area of {data_bytes}")
        if entry.start < end:
            raise _damaged(path, f"tensor {name!r} overlaps the bytes of another tensor")
        end = max(end, entry.end)


def _damaged(path: Path, detail: str) -> ArtifactError:
    """The error for a damaged file (its wording is the artifact reader's, as before)."""
    return ArtifactError(f"{path}: truncated or corrupt safetensors file ({detail}); copy it "
                         "again or train the adapter again.")


def _natural(value: object) -> bool:
    """A non-negative int (JSON ``true`` is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
