"""Logging for the commands that run long jobs (``train``, ``embed``): every library's
warnings, lastlayer's progress at INFO, each line printed once."""

from __future__ import annotations

import logging


class NotPrintedYet(logging.Filter):
    """Drop a record that a library's own handler has printed already.

    ``huggingface_hub`` and ``datasets`` attach a stderr handler to their loggers when they
    are imported, and still pass every record on to the root logger: with the root handler
    of :func:`setup_logging` each of their warnings would be printed twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False  # printed by the library's handler on the way up
            if not logger.propagate:
                break
            logger = logger.parent  # type: ignore[assignment]
        return True


def setup_logging() -> None:
    """Warnings of every library, lastlayer's progress (INFO), each line printed once.

    Only a handler made here is filtered: a host that set up logging (pytest, an
    application calling :func:`lastlayer.cli.main`) keeps its own handlers as they are.
    """
    fresh = not logging.root.handlers
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lastlayer").setLevel(logging.INFO)
    if fresh:
        for handler in logging.root.handlers:
            handler.addFilter(NotPrintedYet())
