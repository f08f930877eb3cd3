"""Progress bars for terminals, plain lines for logs: the one helper every bar goes through.

On a terminal a bar is tqdm's, redrawn in place. When stderr is not a terminal (CI,
``nohup``, a log file) carriage-return frames would pile up as thousands of lines, so a
bar that was asked for prints a plain line instead: once at the start, then at most one
every :data:`INTERVAL` seconds, and once at the end (``desc: 40% 8/20 [00:05<00:07,
1.6batch/s]``), never a ``\\r``. A bar left to the default (``enabled=None``) is shown on
a terminal only, as tqdm's ``disable=None`` does. The libraries' own bars (transformers'
``Loading weights``) are turned off around model loading off a terminal
(:func:`library_bars_on_terminals_only`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

INTERVAL = 5.0
"""Seconds between two plain progress lines."""


class LineProgress(std_tqdm):
    """A tqdm that writes a whole line at most every :data:`INTERVAL` seconds (and at the
    end) instead of redrawing a bar with carriage returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._printed: tuple[float, int] | None = None  # (when, n) of the last line
        kwargs.setdefault("mininterval", INTERVAL)
        super().__init__(*args, **kwargs)
        self.sp = None  # tqdm's close() then writes no '\r' / '\n' of its own

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the current state as one line, unless one was written too recently."""
        if msg is not None:  # tqdm clearing the line: nothing to clear in a log
            return True
        now = self._time()
        finished = self.total is not None and self.n >= self.total
        if self._printed is not None and (self._printed[1] == self.n or (
                now - self._printed[0] < INTERVAL and not finished)):
            return True
        line = self.format_meter(**{**self.format_dict, "ncols": 0}).strip()
        self.fp.write(line + "\n")
        self.fp.flush()
        self._printed = (now, self.n)
        return True

    def close(self) -> None:
        """The last line (if the count moved since the previous one), then tqdm's cleanup."""
        if not self.disable and self.leave is not False:
            self.display()
        super().close()


def progress(iterable: Iterable | None = None, *, enabled: bool | None = None,
             **kwargs: Any) -> std_tqdm:
    """A progress bar over ``iterable`` (tqdm's keywords: ``desc``, ``unit``, ``total``...).

    Args:
        iterable: What to iterate over (None: call ``update`` yourself).
        enabled: True: always report; False: never; None: only on a terminal.
        kwargs: Passed to tqdm.

    Returns:
        tqdm's bar on a terminal; a :class:`LineProgress` on anything else (when enabled).
    """
    stream = kwargs.get("file") or sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    if enabled is False or (enabled is None and not terminal):
        return tqdm(iterable, disable=True, **kwargs)
    if terminal:
        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)


@contextlib.contextmanager
def library_bars_on_terminals_only() -> Iterator[None]:
    """Within this block, transformers' and huggingface_hub's own bars (``Loading weights``,
    downloads, the GGUF dequantization) are off unless stderr is a terminal; their previous
    state is restored.

    transformers' GGUF loader calls tqdm directly, past its own progress-bar switch, so its
    module's ``tqdm`` is swapped for a disabled one for the duration of the block.
    """
    if sys.stderr.isatty():
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_loader
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    gguf_bar = gguf_loader.tqdm
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    gguf_loader.tqdm = functools.partial(std_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_loader.tqdm = gguf_bar
        if was_on[0]:
            hf_logging.enable_progress_bar()
        if was_on[1]:
            enable_progress_bars()
