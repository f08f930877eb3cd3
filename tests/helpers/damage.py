"""Ways to damage a copy of an artifact, for the bad-input and trust tests: rewrite its
weights' bytes, its safetensors JSON header (names, shapes, offsets) or its lastlayer.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def weights(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        file = folder / "adapter_model.safetensors"
        file.write_bytes(change(file.read_bytes()))
    return apply


def header(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the weights' JSON header (the data bytes stay)."""
    def apply(folder: Path) -> None:
        file = folder / "adapter_model.safetensors"
        raw = file.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        head = json.loads(raw[8:8 + n])
        change(head)
        text = json.dumps(head).encode()
        file.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    return apply


def metadata(change: Callable[[dict], None] | str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        file = folder / "lastlayer.json"
        if isinstance(change, str):
            file.write_text(change)
            return
        data = json.loads(file.read_text())
        change(data)
        file.write_text(json.dumps(data))
    return apply


def first_lora_a(head: dict) -> str:
    return sorted(k for k in head if k.endswith("lora_A.weight"))[0]


def renamed_to_bottom(head: dict) -> None:
    name = first_lora_a(head)
    head[name.replace("encoder.layer.2.", "encoder.layer.0.")] = head.pop(name)


def widened(head: dict) -> None:
    """lora_A of shape [8, 32] claims [4, 64]: the same bytes, a shape the base cannot take."""
    head[first_lora_a(head)]["shape"] = [4, 64]


def huge(head: dict) -> None:
    entry = head[first_lora_a(head)]
    entry["shape"] = [50_000_000, 512]  # 100 GB of float32
    start = entry["data_offsets"][0]
    entry["data_offsets"] = [start, start + 4 * 512 * 50_000_000]
