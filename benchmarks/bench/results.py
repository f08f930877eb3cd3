"""Result files: JSON lines that resumable plans append a row to, JSON documents written whole.

A JSON-lines file (``findings.jsonl``, ``budget.jsonl``) gains one line per finished run,
so an interrupted plan keeps everything it measured; a JSON document (``speed.json``,
``choose_k.json``, ...) is rewritten whole, through a temporary file and a rename, so a
crash mid-write never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one line to a JSON-lines file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON document, or ``default`` when the file does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def write_json(path: Path, data: Any, indent: int = 1) -> Path:
    """Write ``data`` (indented, a newline at the end) to ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
