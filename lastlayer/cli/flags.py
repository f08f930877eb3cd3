"""Command-line flags generated from an options dataclass (``lastlayer.config.commands``).

:func:`add_options` turns each field into one argparse argument (the rules are in the
docstring of :mod:`lastlayer.config.commands`), in field order, so ``--help`` lists them as
the dataclass does; :func:`to_options` turns the parsed namespace back into the dataclass.
A small generator over ``dataclasses.fields`` rather than ``HfArgumentParser`` or ``tyro``:
it imports nothing heavy (``--help`` stays instant) and the help text stays plain argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Union

_OWN_KEYS = ("flags", "positional", "group")  # metadata that is not an argparse keyword


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per field of dataclass ``cls`` to ``parser``.

    Raises:
        TypeError: A field whose type or default the generator cannot express as a flag.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}  # group name -> its argparse mutually exclusive group
    for item in dataclasses.fields(cls):
        meta = dict(item.metadata)
        flags, positional, group = (meta.pop(key, None) for key in _OWN_KEYS)
        kwargs = {**_from_type(hints[item.name], item, bool(positional)), **meta}
        where: Any = parser
        if group:
            if group not in groups:
                groups[group] = parser.add_mutually_exclusive_group()
            where = groups[group]
        if positional:
            where.add_argument(item.name, **kwargs)
        else:
            names = flags or ("--" + item.name.replace("_", "-"),)
            where.add_argument(*names, dest=item.name, **kwargs)


def to_options(cls: type, namespace: argparse.Namespace) -> Any:
    """The dataclass ``cls`` holding the values parsed into ``namespace``."""
    names = {item.name for item in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in vars(namespace).items() if name in names})


def _from_type(hint: Any, item: dataclasses.Field, positional: bool) -> dict[str, Any]:
    """argparse keywords implied by a field's type and default."""
    kwargs: dict[str, Any] = {}
    if item.default is not dataclasses.MISSING:
        kwargs["default"] = item.default
    elif item.default_factory is not dataclasses.MISSING:
        kwargs["default"] = item.default_factory()
    elif not positional:
        kwargs["required"] = True
    hint = _strip_none(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        if kwargs.get("default") is not False:
            raise TypeError(f"{item.name}: a bool flag must default to False.")
        kwargs.update(action="store_true")
        kwargs.pop("default")
        return kwargs
    if origin is list:
        (hint,) = typing.get_args(hint)
        if not positional:
            kwargs["action"] = "append"
    if typing.get_origin(hint) is Literal:
        kwargs["choices"] = list(typing.get_args(hint))
    elif hint in (int, float):
        kwargs["type"] = hint
    elif hint is not str:
        raise TypeError(f"{item.name}: no flag for type {hint!r}.")
    return kwargs


def _strip_none(hint: Any) -> Any:
    """``X | None`` -> ``X`` (None is the default, meaning "not given")."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint
