"""Portability: no file of an artifact may name a path of the machine it was made on.

``lastlayer push`` runs :func:`check_portable` before uploading, and the tests run
:func:`machine_paths` on every file the project ships.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lastlayer.artifact.folder import files
from lastlayer.artifact.layout import ArtifactError

MACHINE_PATH = re.compile(r"/home/|/root/|/work/|/tmp/|/Users/|site-packages|dist-packages|"
                          r"[A-Za-z]:\\|\\\\")
"""Text that only a path of some machine holds (home folders, temp, installed packages,
Windows drives and shares)."""


_ABSOLUTE_IN_TEXT = re.compile(r"(?<![\w.:/~-])(?:~|[A-Za-z]:)?(?:/[\w.~-]+){2,}")
"""An absolute or home path of two or more parts inside running text (``see /srv/x/y``);
not the tail of a URL or of a relative path."""


def looks_absolute(value: str) -> bool:
    """Whether a string value starts like an absolute or home path (``/x``, ``~/x``, ``C:/x``)."""
    return bool(re.match(r"(/|~/|[A-Za-z]:[\\/])[\w.~-]", value))


def nested_strings(value: Any) -> Iterator[str]:
    """Every string in parsed JSON or YAML, keys included, depth first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from nested_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from nested_strings(v)
    elif isinstance(value, str):
        yield value


def file_text(path: str | Path) -> str:
    """A file's text as the path check reads it: a ``.safetensors`` file's JSON header
    (where strings could hide), any other file decoded as UTF-8."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raw = path.read_bytes()
        return raw[8:8 + int.from_bytes(raw[:8], "little")].decode("utf-8")
    return path.read_text(encoding="utf-8")


def machine_paths(name: str, text: str) -> list[str]:
    """The paths of a machine that the text of file ``name`` would publish (empty: none).

    Any text is searched for :data:`MACHINE_PATH` and for absolute paths of two or more
    parts; a ``.json``, ``.safetensors`` (header), ``.yaml`` or ``.yml`` file's string values
    must not be absolute or home paths either (relative paths such as ``data/x.jsonl`` are
    portable and allowed).
    """
    import yaml

    found = [m[0] for m in MACHINE_PATH.finditer(text)]
    found += [m[0] for m in _ABSOLUTE_IN_TEXT.finditer(text)]
    if Path(name).suffix in (".json", ".safetensors", ".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)  # YAML reads JSON too
        except yaml.YAMLError:
            data = None
        found += [s for s in nested_strings(data) if looks_absolute(s)]
    return list(dict.fromkeys(found))


def check_portable(folder: str | Path, texts: dict[str, str] | None = None) -> None:
    """Refuse an artifact whose files would publish a path of this machine.

    Args:
        folder: The artifact folder; each of its :data:`~lastlayer.artifact.FILES` is
            checked.
        texts: File texts that replace the folder's own (e.g. a regenerated card).

    Raises:
        ArtifactError: Naming each offending file and what it holds.
    """
    texts = dict(texts or {})
    leaks = {}
    for name in sorted(set(files(folder)) | set(texts)):
        text = texts[name] if name in texts else file_text(Path(folder) / name)
        if found := machine_paths(name, text):
            leaks[name] = found
    if leaks:
        listed = "; ".join(f"{name}: {', '.join(repr(s) for s in found[:3])}"
                           for name, found in leaks.items())
        raise ArtifactError(
            f"{folder} would publish paths of this machine ({listed}). Replace them with "
            "relative paths or Hub ids (e.g. training.data in lastlayer.json, data.train and "
            "eval.data in recipe.yaml, data in eval.json) and try again; the model card is "
            "rendered again from them."
        )
