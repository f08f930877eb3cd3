"""Data sets on the Hugging Face Hub, named ``hf://ORG/NAME[@REVISION][?split=..][&config=..]``.

:func:`parse_hub_dataset` reads such an id into a :class:`HubDataset` (no network);
:func:`load_hub_dataset` opens it through ``datasets`` (extra ``datasets``) and its local
cache, offline too. ``datasets`` is imported only when a data set is opened.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lastlayer.corpus.errors import DataError
from lastlayer.extras import require
from lastlayer.offline import hub_available

logger = logging.getLogger(__package__)  # "lastlayer.corpus", for every corpus reader

HUB_PREFIX = "hf://"
HUB_SYNTAX = "hf://ORG/NAME[@REVISION][?split=SPLIT][&config=CONFIG]"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_REVISION = re.compile(r"[\w./-]+")
_CONFIG = re.compile(r"[^\s&=?]+")
_SPLIT_PART = r"[\w.-]+(\[[\w%:-]*\])?"  # a split name, optionally sliced: train[:10%]
_SPLIT = re.compile(rf"{_SPLIT_PART}(\+{_SPLIT_PART})*")


@dataclass(frozen=True)
class HubDataset:
    """A data set on the Hugging Face Hub, as named by ``hf://ORG/NAME[@REV][?split=..]``.

    Attributes:
        repo_id: ``ORG/NAME`` (or a bare ``NAME`` for the few un-namespaced data sets).
        revision: A branch, tag or commit; None: the default branch.
        split: What ``datasets.load_dataset`` reads, e.g. ``train``, ``test``,
            ``train+validation`` or ``train[:50%]`` (default ``train``).
        config: The data set's configuration (subset); None: its default one.
    """

    repo_id: str
    revision: str | None = None
    split: str = "train"
    config: str | None = None

    def __str__(self) -> str:
        text = HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")
        query = [f"split={self.split}"] * (self.split != "train") + \
            [f"config={self.config}"] * bool(self.config)
        return text + ("?" + "&".join(query) if query else "")


def is_hub_dataset(source: str | Path | HubDataset) -> bool:
    """Whether ``source`` names a Hub data set (``hf://...``) rather than a local path."""
    return isinstance(source, HubDataset) or str(source).startswith(HUB_PREFIX)


def parse_hub_dataset(text: str) -> HubDataset:
    """Read ``hf://ORG/NAME[@REVISION][?split=SPLIT][&config=CONFIG]``.

    The query keys are ``split`` (default ``train``; ``datasets`` split syntax such as
    ``train+validation`` or ``train[:50%]``, written as is, no URL escaping) and
    ``config`` (the data set's subset; default: its default one).

    Raises:
        DataError: ``text`` is not of that form; the message shows the form.
    """
    if not text.startswith(HUB_PREFIX):
        raise DataError(f"{text!r} is not a Hub data set id; expected {HUB_SYNTAX}.")
    body, _, query = text[len(HUB_PREFIX):].partition("?")
    repo_id, at, revision = body.partition("@")
    repo_id = repo_id.rstrip("/")
    if repo_id.startswith("datasets/") and repo_id.count("/") == 2:  # huggingface_hub's form
        repo_id = repo_id[len("datasets/"):]
    if not _REPO_ID.fullmatch(repo_id) or (at and not _REVISION.fullmatch(revision)):
        raise DataError(f"{text!r}: not a Hub data set id; expected {HUB_SYNTAX}, e.g. "
                        "hf://cornell-movie-review-data/rotten_tomatoes?split=test.")
    settings: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in ("split", "config") or not eq or not value or key in settings:
            raise DataError(f"{text!r}: {item!r} is not split=SPLIT or config=CONFIG (each at "
                            f"most once); expected {HUB_SYNTAX}.")
        settings[key] = value
    if "split" in settings and not _SPLIT.fullmatch(settings["split"]):
        raise DataError(f"{text!r}: split {settings['split']!r} is not a split name (train, "
                        "test, train+validation, train[:50%], ...).")
    if "config" in settings and not _CONFIG.fullmatch(settings["config"]):
        raise DataError(f"{text!r}: config {settings['config']!r} is not a configuration name.")
    return HubDataset(repo_id, revision or None, settings.get("split", "train"),
                      settings.get("config"))


@functools.lru_cache(maxsize=8)
def load_hub_dataset(ref: HubDataset) -> Any:
    """The ``datasets.Dataset`` that ``ref`` names, from the local cache or the Hub.

    Goes through ``datasets.load_dataset`` and its cache (``HF_DATASETS_CACHE``): what was
    read once online is read again offline. ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
    are honoured; an unreachable Hub is found out in seconds
    (:func:`lastlayer.offline.hub_available`) and the cache used. No remote code runs
    (``datasets`` no longer runs loading scripts).

    Raises:
        DataError: Not cached while offline, no such data set, split or config; one line.
    """
    datasets = require("datasets", "datasets", f"Reading {ref} (a Hub data set)")
    online = hub_available(datasets=True)
    quiet = logging.getLogger("datasets")  # its "using the cached version" notices, twice
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        ds = datasets.load_dataset(ref.repo_id, ref.config, split=ref.split,
                                   revision=ref.revision)
    except (ConnectionError, OSError, ValueError) as err:
        raise DataError(_hub_error(ref, err, online)) from err
    finally:
        quiet.setLevel(level)
    if not isinstance(ds, datasets.Dataset):  # pragma: no cover - split is always given
        raise DataError(f"{ref}: expected one split, got {type(ds).__name__}.")
    logger.info("%s: %d records (%s)", ref, len(ds),
                "from the Hub or its cache" if online else "offline, from the local cache")
    return ds


def _hub_error(ref: HubDataset, err: Exception, online: bool) -> str:
    """One line saying why ``ref`` could not be read, and what to do."""
    detail = " ".join(str(err).split())  # datasets' messages span lines
    if not online and isinstance(err, ConnectionError):
        import datasets

        return (f"{ref}: not in the local datasets cache ({datasets.config.HF_DATASETS_CACHE}) "
                "and the Hub is offline or unreachable. Run once with network access to cache "
                "it (then it works offline), or point the recipe at a local file.")
    if "split" in detail.lower():
        return f"{ref}: no such split ({detail}). Set split= in the id, e.g. ?split=test."
    if "config" in detail.lower():
        return f"{ref}: no such configuration ({detail}). Set config= in the id."
    return f"{ref}: cannot load this Hub data set ({type(err).__name__}: {detail})."
