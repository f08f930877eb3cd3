"""Timing optimizer steps, and profiling one: where a training step's time and memory go.

A :class:`StepClock` stamps the end of every optimizer step of every optimizer through
torch's global step hook, so the same clock times lastlayer's own Accelerate loop and a
baseline's plain loop alike: a step is the wall time between two stamps (data,
tokenization, forward, loss, backward, clipping, step, scheduler, logging). :func:`profiled`
runs a timed training run under ``torch.profiler`` and records exactly one step, counting
the tensors autograd saves for its backward (the activations) by shape.

torch is imported inside the functions: an orchestrating process imports this module
without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

_PROFILER = None  # a torch.profiler.profile advanced at every optimizer step (--profile)
_SAVED = None  # a SavedActivations counter, reset at every optimizer step (--profile)


class SavedActivations:
    """Bytes of the distinct tensor storages autograd saves for the backward, per step."""

    def __init__(self) -> None:
        self.per_step: list[dict[tuple, int]] = []
        self._seen: set[int] = set()
        self._shapes: dict[tuple, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            key = (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            self._shapes[key] = self._shapes.get(key, 0) + storage.nbytes()
        return tensor

    def step(self) -> None:
        self.per_step.append(self._shapes)
        self._seen, self._shapes = set(), {}


class StepClock:
    """Stamps the end of every optimizer step of every optimizer (a global torch hook)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._handle = None

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.start = time.perf_counter()
        self._handle = register_optimizer_step_post_hook(self._stamp)
        return self

    def _stamp(self, optimizer, args, kwargs) -> None:
        _sync()
        self.stamps.append(time.perf_counter())
        if _PROFILER is not None:
            _PROFILER.step()
        if _SAVED is not None:
            _SAVED.step()

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def step_times(self) -> list[float]:
        """Wall time of each step: from the end of the previous step (or the start)."""
        ends = [self.start, *self.stamps]
        return [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profiled(run: Callable[[], dict[str, Any]], warmup: int) -> dict[str, Any]:
    """``run()`` (a training run timed by a :class:`StepClock`) under torch.profiler,
    recording exactly the first step after ``warmup``, and counting the activations every
    step saves for its backward; its result with the profile added."""
    global _PROFILER, _SAVED
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    # Steps are counted by the optimizer hook: record step number ``warmup + 1``.
    saved = SavedActivations()
    with profile(activities=[ProfilerActivity.CPU],
                 schedule=schedule(wait=warmup, warmup=0, active=1, repeat=1)) as prof, \
            torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        _PROFILER, _SAVED = prof, saved
        try:
            measured = run()
        finally:
            _PROFILER, _SAVED = None, None
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    measured["profile_table"] = events.table(sort_by="self_cpu_time_total", row_limit=15)
    measured["profile_share"] = {
        e.key: e.self_cpu_time_total / total
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    }
    shapes = saved.per_step[warmup] if len(saved.per_step) > warmup else {}
    measured["saved_activations_mb"] = sum(shapes.values()) / 2**20
    measured["saved_activations_table"] = "\n".join(
        f"  {str(list(shape)):>24} {dtype:>9} {nbytes / 2**20:8.1f} MB"
        for (shape, dtype), nbytes in sorted(shapes.items(), key=lambda kv: -kv[1])[:12])
    return measured
