"""Peak memory of top-k LoRA (optionally 8-bit / 4-bit) against full fine-tuning on big models.

Builds large models from a config with random weights (no download), saves each once to a
temporary folder (with the packaged MiniLM's BERT tokenizer), then trains a few steps in
each mode, every mode in its own subprocess so its peak is its own:

- ``full``: every parameter trainable (full fine-tuning), AdamW;
- ``lora-all``: LoRA r=8 on every linear layer of every block;
- ``lora-top2``: lastlayer's LoRA on the top-2 blocks (``lastlayer.core.adapters.attach``);
- ``lora-top2-8bit`` / ``lora-top2-4bit``: the same on a base loaded through bitsandbytes
  (``lastlayer.core.encoder.load_encoder(ModelConfig(..., quantization="8bit" | "4bit"))``).

All modes load the saved folder through ``lastlayer.core.encoder.load_encoder`` and run the same
loop: two crop views of medical abstracts per pair, mean pooling, InfoNCE over the batch,
backward, gradient clipping, AdamW. On CUDA the peak is ``torch.cuda.max_memory_allocated``
(``peak_mb``, from the start of loading); on CPU it is the peak resident set size
(``VmHWM``; ``peak_mb``), with ``loaded_mb`` (after loading) and ``train_increase_mb``
(what training added: the peak is reset after loading through ``/proc/self/clear_refs``).
bitsandbytes on CPU saves neither time nor much memory (docs/speed.md); 8-/4-bit rows matter on
a GPU.

Model presets (``--models``), sized so that the default run fits ~20 GB RAM and about ten
minutes on 2 CPU cores; ``llama-1b`` is for bigger machines (full fine-tuning needs ~16 GB
for weights, gradients and AdamW states alone):

- ``bert-large``: BERT-large shape (hidden 1024, 24 layers, 16 heads, FFN 4096; 335M);
- ``llama-0.5b``: a Llama decoder (hidden 1536, 16 layers, 12 heads, FFN 4096; ~0.5B);
- ``llama-1b``: a TinyLlama-like decoder (hidden 2048, 22 layers, 32 heads / 4 KV heads,
  FFN 5632; ~1.0B with the 30k vocabulary);
- ``llama-3b``: a Llama-3.2-3B-like decoder (hidden 3072, 28 layers, 24 heads / 8 KV heads,
  FFN 8192; ~2.9B with the 30k vocabulary);
- ``llama-7b``: a Llama-2-7B-like decoder (hidden 4096, 32 layers, 32 heads, FFN 11008;
  ~6.6B with the 30k vocabulary).

On a GPU the random models are built on the GPU (seconds, not minutes) and saved in
``--dtype``; ``--dtype bfloat16`` is what one trains big models in there (full fine-tuning
then keeps bf16 weights, gradients and AdamW states: 8 bytes per parameter).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.memory
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.memory --models llama-1b --batch-size 8 \\
        --max-length 128 --out benchmarks/results/memory_gpu.json      # on a GPU
    python -m benchmarks.memory --models bert-large llama-1b llama-3b llama-7b \
        --dtype bfloat16 --batch-size 16 --max-length 128 --steps 3 \
        --out benchmarks/results/memory_gpu.json            # the GPU run of docs/speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import MEDICAL, RESULTS, models, tables
from benchmarks.bench.measure import machine_description, peak_rss_mb, reset_peak_rss, rss_mb
from benchmarks.bench.results import write_json
from benchmarks.bench.workers import reply, run_worker

DEFAULT_DATA = MEDICAL
DEFAULT_OUT = RESULTS / "memory.json"
RESULT_MARK = "@@MEMORY-RESULT@@"
MODES = ("full", "lora-all", "lora-top2", "lora-top2-8bit", "lora-top2-4bit")

PRESETS: dict[str, dict[str, Any]] = {
    "bert-large": {"arch": "bert", "hidden_size": 1024, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "intermediate_size": 4096},
    "llama-0.5b": {"arch": "llama", "hidden_size": 1536, "num_hidden_layers": 16,
                   "num_attention_heads": 12, "num_key_value_heads": 12,
                   "intermediate_size": 4096},
    "llama-1b": {"arch": "llama", "hidden_size": 2048, "num_hidden_layers": 22,
                 "num_attention_heads": 32, "num_key_value_heads": 4,
                 "intermediate_size": 5632},
    "llama-3b": {"arch": "llama", "hidden_size": 3072, "num_hidden_layers": 28,
                 "num_attention_heads": 24, "num_key_value_heads": 8,
                 "intermediate_size": 8192},
    "llama-7b": {"arch": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32,
                 "intermediate_size": 11008},
}
DTYPES = ("float32", "bfloat16", "float16")


def tokenizer_folder() -> str:
    """The packaged all-MiniLM-L6-v2 folder: its BERT WordPiece tokenizer serves every preset."""
    return models.resolve().path


def build_model(preset: str, folder: str, seed: int = 0, dtype: str = "float32",
                tokenizer: str | None = None, cpu: bool = False) -> dict[str, Any]:
    """Build ``preset`` with random weights and save it (safetensors + tokenizer) to ``folder``.

    Built on the GPU when there is one (initialising billions of weights on CPU takes
    minutes), then saved in ``dtype``.
    """
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    settings = dict(PRESETS[preset])
    arch = settings.pop("arch")
    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer or tokenizer_folder())
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **settings}
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    with torch.device(device):
        if arch == "bert":
            model = tf.BertModel(tf.BertConfig(max_position_embeddings=512, **common))
        else:
            model = tf.LlamaModel(tf.LlamaConfig(max_position_embeddings=2048, **common))
    model.to(getattr(torch, dtype)).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {"params": sum(p.numel() for p in model.parameters())}


def _quantization(mode: str) -> str | None:
    return next((q for q in ("8bit", "4bit") if mode.endswith(q)), None)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the saved model in ``spec['mode']``, train ``spec['steps']`` steps, report memory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch.utils.data import DataLoader

    from benchmarks.bench.protocol import crop_pairs
    from lastlayer.config import ModelConfig
    from lastlayer.core.layers import find_layer_stack
    from lastlayer.corpus import read_texts
    from lastlayer.training.loss import info_nce

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    mode, cuda = spec["mode"], torch.cuda.is_available() and not spec.get("cpu")
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    encoder = models.load_base(ModelConfig(
        name_or_path=spec["folder"], max_length=spec["max_length"],
        quantization=_quantization(mode), dtype=spec.get("dtype", "float32")), device=device)
    load_s = time.perf_counter() - started
    num_layers = find_layer_stack(encoder.model).num_layers
    if mode == "full":
        encoder.model.requires_grad_(True).train()
    elif mode == "lora-all":
        models.attach_lora(encoder, num_layers)
    elif mode.startswith(f"lora-top{spec['top_k']}"):
        models.attach_lora(encoder, spec["top_k"])
    else:
        raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    model = encoder.model
    params = [p for p in model.parameters() if p.requires_grad]
    loaded = {
        "loaded_mb": torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb(),
        "load_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb(),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "num_layers": num_layers,
        "load_s": load_s,
    }
    reset = reset_peak_rss() if not cuda else False

    docs = read_texts(spec["data"], max_docs=2000)
    pairs = crop_pairs(docs, spec["steps"] * spec["batch_size"], spec["seed"])
    loader = DataLoader(pairs, batch_size=spec["batch_size"], drop_last=True,
                        collate_fn=lambda b: [encoder.tokenize(s) for s in zip(*b, strict=True)])
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times, losses = [], []
    model.train()
    for a, b in loader:
        start = time.perf_counter()
        loss, _ = info_nce(encoder.embed(a), encoder.embed(b), 0.05)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        train_peak = None
    else:
        train_peak = peak_rss_mb()
        peak = max(loaded["load_peak_mb"], train_peak)
    return {
        **loaded,
        "peak_mb": peak,
        "train_increase_mb": train_peak - loaded["loaded_mb"] if reset else None,
        "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM)",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "step_times_s": times,
        "losses": losses,
        "threads": torch.get_num_threads(),
    }


def _worker(payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """:func:`measure` (or a model build) in a fresh process: its peak RSS is its own."""
    return run_worker(payload, timeout_s, script="memory", mark=RESULT_MARK)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Peak memory per model and mode, against full fine-tuning; failed modes last, with the
    telling line of their error."""
    rows = [r for r in rows if "error" not in r] + [r for r in rows if "error" in r]
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["model"], "", r["mode"], f"failed: {_first_line(r['error'])}",
                          "", "", "", "", ""])
            continue
        full = next((x for x in rows if x["model"] == r["model"] and x["mode"] == "full"
                     and x.get("peak_mb")), None)
        ratio = f"{r['peak_mb'] / full['peak_mb']:.2f}x" if full and r.get("peak_mb") else "—"
        cells.append([r["model"], f"{r.get('total_params', 0) / 1e6:.0f}M", r["mode"],
                      f"{r.get('trainable_params', 0):,}", tables.fmt(r.get("peak_mb"), ".0f"),
                      ratio, tables.fmt(r.get("loaded_mb"), ".0f"),
                      tables.fmt(r.get("train_increase_mb"), ".0f"),
                      tables.fmt(r.get("step_s_median"), ".2f")])
    return tables.markdown(["model", "params", "mode", "trainable", "peak MB", "vs full",
                            "loaded MB", "training adds MB", "step s"], cells,
                           align="lrlrrrrrr")


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    write_json(out, rows, indent=2)


def _first_line(error: str) -> str:
    """The telling line of a worker's error (an out-of-memory error, say), table-safe."""
    lines = [x.strip() for x in error.strip().splitlines() if x.strip()]
    telling = next((x for x in reversed(lines) if "Error" in x), lines[-1] if lines else "")
    return telling.replace("|", "/")[:120]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bert-large", "llama-0.5b"],
                   choices=sorted(PRESETS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per mode (>= 2)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--max-length", type=int, default=64, help="tokens per view")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weights (and compute) dtype; bfloat16 is the usual choice on a GPU")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder for the random models (default: packaged MiniLM's)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--tmp", default=None, help="where to save the random models (default: TMP)")
    p.add_argument("--worker-timeout", type=float, default=1200)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        payload = json.loads(args.worker)
        reply(build_model(**payload["build"]) if "build" in payload else measure(payload),
              RESULT_MARK)
        return []
    if args.top_k != 2:
        args.modes = [m.replace("top2", f"top{args.top_k}") for m in args.modes]
    load_start = os.getloadavg()[0]
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    tmp_root = Path(tempfile.mkdtemp(prefix="lastlayer-memory-", dir=args.tmp))
    try:
        for preset in args.models:
            folder = tmp_root / preset
            print(f"building {preset} (random weights) in {folder} ...", flush=True)
            built = _worker({"build": {"preset": preset, "folder": str(folder),
                                       "dtype": args.dtype, "tokenizer": args.tokenizer,
                                       "cpu": args.cpu}}, args.worker_timeout)
            if "error" in built:
                print(built["error"], file=sys.stderr)
                continue
            for mode in args.modes:
                spec = {"folder": str(folder), "mode": mode, "steps": args.steps,
                        "batch_size": args.batch_size, "max_length": args.max_length,
                        "top_k": args.top_k, "data": args.data, "seed": args.seed,
                        "threads": args.threads, "cpu": args.cpu, "dtype": args.dtype}
                print(f"  {preset} {mode} ...", flush=True)
                result = _worker(spec, args.worker_timeout)
                row = {"model": preset, "config": PRESETS[preset], "mode": mode,
                       "dtype": args.dtype, "batch_size": args.batch_size,
                       "max_length": args.max_length, "steps": args.steps, **result}
                times = result.get("step_times_s") or []
                row["step_s_median"] = statistics.median(times[1:] or times) if times else None
                if "error" in result:
                    print(f"    FAILED: {result['error']}", file=sys.stderr)
                else:
                    print(f"    peak {result['peak_mb']:.0f} MB ({result['memory_kind']}), "
                          f"step {row['step_s_median']:.2f} s", flush=True)
                rows.append(row)
                _write(rows, out)  # after every mode: a killed run keeps what it measured
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    gpu = next((r["device"] for r in rows if r.get("device") not in (None, "cpu")), None)
    machine = machine_description(load_start, os.getloadavg()[0], precision=args.dtype, gpu=gpu)
    for row in rows:
        row["machine"] = machine
    _write(rows, out)
    print(f"\n{machine}\nbatch {args.batch_size} pairs, max_length {args.max_length}, "
          f"{args.steps} steps per mode, {args.dtype}\n")
    print(format_table(rows))
    print(f"\nWrote {out}")
    return rows


if __name__ == "__main__":
    main()
