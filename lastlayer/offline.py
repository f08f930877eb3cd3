"""Reaching the Hugging Face Hub: one quick probe per process, then offline if it fails.

Without it, a machine that cannot reach the Hub (no network, a firewall, a DNS failure)
makes ``huggingface_hub`` retry every request with backoff (about 30 s per file, with two
warning lines per retry) before the local cache or a packaged copy is used. Before the
first Hub lookup of a run, :func:`hub_available` asks the Hub once with a short timeout;
when that fails it logs one line and switches the whole process to offline mode (what
``HF_HUB_OFFLINE=1`` does), so that models and data sets come from the local cache at once.

``HF_HUB_OFFLINE=1`` (and ``HF_DATASETS_OFFLINE=1`` for data sets) skip the probe. Neither
``huggingface_hub`` nor ``httpx`` is imported until a probe runs.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0  # a reachable Hub answers in well under a second (HF_HUB_ETAG_TIMEOUT wins)
_TRUE = {"1", "ON", "YES", "TRUE"}
_probed: dict[str, str | None] = {}  # "reason" -> None (reachable) or why it is not


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def offline_requested(datasets: bool = False) -> bool:
    """Whether the user (or an earlier probe) put the Hub in offline mode.

    Args:
        datasets: Also count ``HF_DATASETS_OFFLINE`` (it only concerns data sets).
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    if datasets and _env_true("HF_DATASETS_OFFLINE"):
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(hub is not None and getattr(hub, "HF_HUB_OFFLINE", False))


def hub_available(datasets: bool = False, timeout: float | None = None) -> bool:
    """True when the Hub may be asked; else the process is (now) in offline mode.

    The first call in a process that is not already offline sends one HEAD request to the
    Hub endpoint (``HF_ENDPOINT``, proxies from the environment). Any HTTP answer counts
    as reachable; a connection error or a timeout switches to offline mode for the rest
    of the process, with one warning line. Later calls reuse the answer.

    Args:
        datasets: The caller loads a data set (``HF_DATASETS_OFFLINE`` counts too).
        timeout: Seconds to wait for the Hub's answer (default: ``HF_HUB_ETAG_TIMEOUT`` if
            set, for slow links, else 3).
    """
    if offline_requested(datasets):
        return False
    if timeout is None:
        try:
            timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT_S)
        except ValueError:
            timeout = PROBE_TIMEOUT_S
    if "reason" not in _probed:
        _probed["reason"] = _probe(timeout)
        if _probed["reason"] is not None:
            log.warning(
                "The Hugging Face Hub is unreachable (%s): working offline from the local "
                "cache for this run (set HF_HUB_OFFLINE=1 to skip this check).",
                _probed["reason"],
            )
            go_offline()
    return _probed["reason"] is None


def _probe(timeout: float) -> str | None:
    """None when the Hub endpoint answers, else a short reason."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException:
        return f"no answer from {constants.ENDPOINT} within {timeout:g} s"
    except httpx.HTTPError as err:  # connection refused, DNS failure, proxy error, ...
        return f"{constants.ENDPOINT}: {err}"
    return None


def go_offline() -> None:
    """Put ``huggingface_hub``, ``transformers`` and ``datasets`` in offline mode.

    They read the setting at import time: the environment covers later imports, the
    module constants the libraries already imported.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    ds = sys.modules.get("datasets.config")
    if ds is not None:
        ds.HF_HUB_OFFLINE = True
        ds.HF_DATASETS_OFFLINE = True
