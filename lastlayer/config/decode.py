"""THE typed decoder: dataclasses from untyped data, with errors that name the key.

Recipes (YAML and ``dotted.key=value`` overrides) and ``lastlayer.json`` are both decoded
here, by :func:`decode`, under one set of rules:

- **Unknown keys are refused**, naming the key and the valid ones. A recipe key no field
  reads is a typo; a ``lastlayer.json`` key this lastlayer does not know may change what
  the adapter's vectors mean, so dropping it silently could give wrong embeddings. Any
  change to the artifact schema therefore bumps its ``schema_version``, and a newer
  artifact is refused with "upgrade lastlayer" before it reaches the decoder.
- **Missing keys** take the field's default; a field without one is "missing key".
- **Bools are only bools**: ``true`` is never an int or a float, and ``1`` is never a bool.
- **Numbers**: an int is accepted where a float is expected (``lr: 1``), and so is a string
  that reads as a number, because YAML 1.1 reads ``1e-4`` (no dot) as a string.
- **Closed menus** (``Literal``) accept only their members; ``X | None`` accepts None; a
  union of several types (``int | Literal["auto"]``) is left to the dataclass's
  ``__post_init__``, which knows the message that helps (``adapter.top_k``).
- Lists and dicts are checked item by item; nested dataclasses are decoded recursively.

Errors are raised as the caller's error type (:class:`Source`), so a recipe fails with a
``ConfigError`` and an artifact with an ``ArtifactError`` naming its file; a cross-field
check that fails in ``__post_init__`` is re-raised the same way.

This module imports nothing of lastlayer: ``config`` and ``artifact`` both build on it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """What is being decoded, for the error messages.

    Attributes:
        error: The exception type raised (its message says which key and why).
        where: Put before every message (e.g. ``"path/lastlayer.json: "``), or empty.
        root: What the top level is called (``the recipe``, ``the file``).
        mapping: How the format calls a mapping (``a mapping of keys to values`` in YAML,
            ``an object`` in JSON).
    """

    error: type[Exception]
    where: str = ""
    root: str = "the data"
    mapping: str = "a mapping of keys to values"

    def fail(self, message: str) -> Exception:
        """The error to raise for ``message``."""
        return self.error(f"{self.where}{message}")


def decode(cls: type[T], data: Any, source: Source, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping under the rules of this module.

    Args:
        cls: A dataclass type.
        data: The mapping (parsed YAML or JSON).
        source: What is decoded: the error type and the words of the messages.
        prefix: Dotted path of ``data`` inside the whole, e.g. ``"adapter."``.

    Raises:
        source.error: On an unknown or missing key, a wrong type, or a failed cross-field
            check.
    """
    name = prefix.rstrip(".") or source.root
    if not isinstance(data, dict):
        raise source.fail(f"{name} must be {source.mapping}, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise source.fail(f"unknown key {prefix}{unknown[0]!s} in {name}; "
                          f"valid keys: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, f in fields.items():
        if key in data:
            kwargs[key] = check(hints[key], data[key], source, f"{prefix}{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise source.fail(f"missing key {prefix}{key}.")
    try:
        return cls(**kwargs)
    except ValueError as err:  # a cross-field check of __post_init__
        if isinstance(err, source.error):
            raise
        raise source.fail(str(err)) from None


def check(hint: Any, value: Any, source: Source, key: str) -> Any:
    """``value`` checked against type ``hint`` (int -> float, number strings -> float)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return decode(hint, value, source, key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check(inner[0], value, source, key) if len(inner) == 1 else value
    if origin is Literal:
        choices = typing.get_args(hint)
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            return "no"
        if value not in choices or isinstance(value, bool):  # True == 1: never a menu item
            raise source.fail(f"{key} must be one of {', '.join(map(str, choices))}; "
                              f"got {value!r}.")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise source.fail(f"{key} must be a list, got {value!r}.")
        return [check(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise source.fail(f"{key} must be {source.mapping}, got {value!r}.")
        args = typing.get_args(hint)
        if not args:
            return value
        return {check(args[0], k, source, key): check(args[1], v, source, f"{key}.{k}")
                for k, v in value.items()}
    return _scalar(hint, value, source, key)


def _scalar(hint: Any, value: Any, source: Source, key: str) -> Any:
    if hint is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))
    ):
        raise source.fail(f"{key} must be {hint.__name__}, got {value!r}.")
    return value
