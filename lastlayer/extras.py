"""Optional extras: import a library only some commands need, or say which extra installs it.

The core install trains and evaluates on jsonl / csv / txt corpora. Four extras add what
only some jobs use:

- ``plot``: matplotlib, for ``probe.png`` (``lastlayer probe``);
- ``datasets``: datasets and pyarrow, for ``.parquet`` files and ``save_to_disk`` folders;
- ``quant``: bitsandbytes, for 8-bit / 4-bit quantized bases (``model.quantization``);
- ``serve``: fastapi, uvicorn and prometheus-client, for ``lastlayer serve``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"plot": ("matplotlib",), "datasets": ("datasets", "pyarrow"), "quant": ("bitsandbytes",),
          "serve": ("fastapi", "uvicorn", "prometheus-client")}
"""Extra name -> the distributions it installs (as in pyproject.toml)."""


class MissingExtraError(ImportError):
    """A library that an optional extra installs is missing (a user error: exit status 2)."""


def require(module: str, extra: str, why: str) -> ModuleType:
    """Import ``module``, or raise an error naming the extra that installs it.

    Args:
        module: Dotted module name, e.g. ``"pyarrow.parquet"``.
        extra: The ``lastlayer[...]`` extra that installs it (a key of :data:`EXTRAS`).
        why: What needs it, the subject of "... needs matplotlib", e.g.
            ``"lastlayer probe (drawing probe.png)"``.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: ``module`` cannot be imported; the message says what to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise MissingExtraError(
            f"{why} needs {package}, which is not installed: pip install 'lastlayer[{extra}]'"
        ) from err
