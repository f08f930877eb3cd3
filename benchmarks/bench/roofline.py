"""The roofline of a benchmark row: the FLOPs it did per second against the machine's peak.

FLOPs are counted from the model's shapes and the tokens of the actual batch
(:func:`forward_flops`), one multiply-add = 2 FLOPs, per block and sequence of ``T``
real tokens (padding not counted: it is waste, not work):

- attention projections: ``2·T·d·(d_q + 2·d_kv + d_q)`` with ``d_q = heads·head_dim`` and
  ``d_kv = kv_heads·head_dim`` (grouped-query attention: fewer K/V heads);
- attention itself: ``4·T²·d_q`` (``QKᵀ`` and ``AV``, every query against every key);
- MLP: ``2·T·d·I·m`` with ``m = 3`` for gated MLPs (Llama-style gate, up, down) and 2
  otherwise (BERT: up, down).

Norms, activations, embeddings, pooling and softmax are left out (well under 1 %). A
trunk-shared batch runs ``L`` block passes per text whichever adapter it goes to;
``encode_all`` over N adapters of top-k runs ``L − k + N·k`` (``blocks``).

The peak (:func:`theoretical_peak`) is ``cores × clock × FLOPs per cycle and core``, the
last from the CPU's flags in ``/proc/cpuinfo``, assuming two vector FMA units per core
(server Xeons and Zen 4 have two ports; many client parts have one) and the clock
``/proc/cpuinfo`` reports (the base clock in a VM; turbo would be higher):

- fp32: AVX-512: 2 units × 16 lanes × 2 = 64; AVX2+FMA: 32; else 8 (SSE);
- bf16: AMX-BF16: 1024 (a tile multiply: 16×16×32 per 16 cycles); AVX512-BF16: 2 units ×
  32 pairs × 2 = 128; else torch computes bf16 in fp32 (the fp32 peak);
- int8: AMX-INT8: 2048; AVX512-VNNI: 2 × 64 × 2 = 256; AVX-VNNI (256-bit): 128; else
  the fp32 peak.

It is an upper bound no code reaches, so a row also gets the peak measured here
(:func:`measured_peak`): a large square ``torch.matmul`` (``torch._int_mm`` for int8) on
the same threads, the best any torch kernel does on this machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.bench.measure import _cpuinfo, cpu_flags

GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
         "olmo", "olmo2", "granite", "smollm3", "mixtral"}
"""``model_type``s whose MLP is gated (gate, up and down projections)."""

PRECISIONS = ("fp32", "bf16", "int8")


def block_flops(config: Any, length: int) -> float:
    """FLOPs of one transformer block on one sequence of ``length`` tokens."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    d_q, d_kv = heads * head_dim, kv_heads * head_dim
    mlp = 3 if getattr(config, "model_type", "") in GATED else 2
    projections = 2 * length * d * (2 * d_q + 2 * d_kv)
    attention = 4 * length * length * d_q
    return float(projections + attention + 2 * length * d * config.intermediate_size * mlp)


def forward_flops(config: Any, token_counts: Sequence[int], blocks: float | None = None
                  ) -> float:
    """FLOPs of embedding texts of ``token_counts`` tokens each, ``blocks`` block passes per
    text (default: every block once, ``num_hidden_layers``)."""
    blocks = config.num_hidden_layers if blocks is None else blocks
    return blocks * sum(block_flops(config, int(t)) for t in token_counts)


def clock_ghz() -> float:
    """The clock ``/proc/cpuinfo`` reports (``cpu MHz``), else 2.0 GHz (stated as assumed)."""
    mhz = _cpuinfo("cpu MHz")
    return float(mhz) / 1000 if mhz else 2.0


def flops_per_cycle(precision: str, flags: Sequence[str] | None = None) -> int:
    """Peak FLOPs per cycle and core for ``precision`` from the CPU ``flags`` (see the
    module docstring for the table and its assumptions)."""
    have = set(cpu_flags() if flags is None else flags)
    fp32 = 64 if "avx512f" in have else 32 if {"avx2", "fma"} <= have else 8
    if precision == "fp32":
        return fp32
    if precision == "bf16":
        return 1024 if "amx_bf16" in have else 128 if "avx512_bf16" in have else fp32
    if precision == "int8":
        return (2048 if "amx_int8" in have else 256 if "avx512_vnni" in have
                else 128 if "avx_vnni" in have else fp32)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def theoretical_peak(precision: str, cores: int | None = None,
                     flags: Sequence[str] | None = None, ghz: float | None = None) -> float:
    """``cores × clock × FLOPs per cycle``, in GFLOP/s (cores default: all of them)."""
    cores = cores or os.cpu_count() or 1
    return cores * (clock_ghz() if ghz is None else ghz) * flops_per_cycle(precision, flags)


_MEASURED: dict[tuple[str, int], float] = {}


def measured_peak(precision: str, threads: int | None = None, size: int = 2048,
                  seconds: float = 1.0) -> float:
    """The best GFLOP/s of a ``size``² matmul in ``precision`` on ``threads`` torch threads
    (measured once per process and kept)."""
    import torch

    threads = threads or torch.get_num_threads()
    key = (precision, threads)
    if key not in _MEASURED:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _MEASURED[key] = _matmul_gflops(precision, size, seconds)
        finally:
            torch.set_num_threads(before)
    return _MEASURED[key]


def _matmul_gflops(precision: str, size: int, seconds: float) -> float:
    import torch

    if precision == "int8":
        a = torch.randint(-64, 64, (size, size), dtype=torch.int8)
        run = lambda: torch._int_mm(a, a)  # noqa: E731
    else:
        a = torch.randn(size, size, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        run = lambda: torch.matmul(a, a)  # noqa: E731
    with torch.inference_mode():
        run()
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def roofline(model_config: Any, token_counts: Sequence[int], seconds: float, precision: str,
             *, blocks: float | None = None, cores: int | None = None,
             measured: float | None = None) -> dict[str, Any]:
    """A row's achieved GFLOP/s and its fraction of the peak for ``precision``.

    Args:
        model_config: The base's transformers config (hidden, intermediate size, heads,
            layers, ``model_type``).
        token_counts: The real tokens of every text the row embedded (after truncation).
        seconds: The row's wall time.
        precision: ``fp32``, ``bf16`` or ``int8``: the peak it is held against.
        blocks: Block passes per text (default: every block once).
        cores: The cores the row ran on (default: all); the theoretical peak scales.
        measured: A measured peak in GFLOP/s (:func:`measured_peak`) to report beside it.

    Returns:
        ``gflop``, ``gflops`` (achieved), ``peak_gflops`` (theoretical),
        ``fraction_of_peak``, ``precision``, and with ``measured``:
        ``measured_peak_gflops`` and ``fraction_of_measured``.
    """
    gflop = forward_flops(model_config, token_counts, blocks) / 1e9
    achieved = gflop / seconds if seconds > 0 else float("nan")
    peak = theoretical_peak(precision, cores)
    out = {"gflop": gflop, "gflops": achieved, "precision": precision, "peak_gflops": peak,
           "fraction_of_peak": achieved / peak}
    if measured:
        out.update(measured_peak_gflops=measured, fraction_of_measured=achieved / measured)
    return out
