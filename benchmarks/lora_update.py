"""What the grouped pass's per-row LoRA update costs next to the base linear it wraps.

Usage (offline, a few seconds; timings only meaningful as ratios within one run)::

    .venv/bin/python -m benchmarks.lora_update --out benchmarks/results/lora_update.json

One linear of MiniLM's size (384 -> 384, 128 tokens per text) over ``--rows`` texts whose
rows go to ``--adapters`` rank-8 adapters (sorted by adapter, as the engine orders them),
timed four ways in the same process, interleaved (each round runs every way once, the
order rotating; medians over ``--repeats`` rounds):

- ``base``: the base linear alone (what a single merged adapter costs);
- ``bmm``: the base linear, then each row's update with two ``torch.bmm`` over per-row
  factors, the sum written in place (what ``lastlayer.core.grouped`` runs);
- ``stacked``: every adapter's ``A`` side by side in one 2-D matmul, the other adapters'
  columns masked to zero per row, one 2-D ``addmm_`` against every ``B`` stacked;
- ``segments``: one 2-D matmul pair per adapter over its contiguous rows.

All four give the same output (checked). The update is a few percent of the linear's FLOPs
but reads the input once more and reads and writes the output once more: where the base
matmul runs on bf16 matrix units, those memory passes cost as much as the matmul itself.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812

from benchmarks.bench import measure
from benchmarks.bench.results import write_json

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_update",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--adapters", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=DTYPES)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def variants(rows: int, adapters: int, tokens: int, dim: int, rank: int, dtype: torch.dtype
             ) -> dict[str, Callable[[], torch.Tensor]]:
    """The four ways (module docstring) over one random batch, as closures."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, tokens, dim, generator=gen).to(dtype)
    w = torch.randn(dim, dim, generator=gen).to(dtype) / dim ** 0.5
    a = torch.randn(adapters, dim, rank, generator=gen).to(dtype) / dim ** 0.5
    b = torch.randn(adapters, rank, dim, generator=gen).to(dtype) / rank ** 0.5
    which = torch.arange(rows) % adapters
    which, _ = which.sort()
    a_rows, b_rows = a[which].contiguous(), b[which].contiguous()
    a_all = a.permute(1, 0, 2).reshape(dim, adapters * rank).contiguous()
    b_all = b.reshape(adapters * rank, dim).contiguous()
    mask = torch.zeros(rows, 1, adapters * rank, dtype=dtype)
    for i, g in enumerate(which.tolist()):
        mask[i, 0, g * rank:(g + 1) * rank] = 1
    bounds = [(int((which < g).sum()), int((which <= g).sum())) for g in range(adapters)]

    def bmm() -> torch.Tensor:
        return F.linear(x, w).baddbmm_(torch.bmm(x, a_rows), b_rows)

    def stacked() -> torch.Tensor:
        out = F.linear(x, w)
        low = (x.view(-1, dim) @ a_all).view(rows, tokens, -1) * mask
        out.view(-1, dim).addmm_(low.view(-1, adapters * rank), b_all)
        return out

    def segments() -> torch.Tensor:
        out = F.linear(x, w)
        for g, (start, end) in enumerate(bounds):
            if end > start:
                low = x[start:end].reshape(-1, dim) @ a[g]
                out[start:end].view(-1, dim).addmm_(low, b[g])
        return out

    return {"base": lambda: F.linear(x, w), "bmm": bmm, "stacked": stacked,
            "segments": segments}


def timed(ways: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each way over ``repeats`` interleaved rounds (the order
    rotating), after 3 warm-up calls of each."""
    for call in ways.values():
        for _ in range(3):
            call()
    names = list(ways)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows_out = []
    with torch.inference_mode():
        for precision in args.precision:
            for rows in args.rows:
                for adapters in args.adapters:
                    ways = variants(rows, adapters, args.tokens, args.dim, args.rank,
                                    DTYPES[precision])
                    ref = ways["bmm"]().float()
                    for name in ("stacked", "segments"):
                        got = ways[name]().float()
                        err = float((got - ref).abs().max() / ref.abs().max())
                        assert err < 0.02, f"{name} differs from bmm by {err:.3g}"
                    ms = timed(ways, args.repeats)
                    row = {"precision": precision, "rows": rows, "adapters": adapters,
                           "ms": ms, "update_over_base": ms["bmm"] / ms["base"] - 1}
                    rows_out.append(row)
                    print(f"{precision} {rows} rows / {adapters} adapters: "
                          + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)
    result = {"machine": {"cpu": measure.cpu_description(),
                          "torch_threads": torch.get_num_threads()},
              "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "rows": rows_out}
    if args.out:
        write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
