"""One InfoNCE step on a fixed global batch, single-process or under torchrun (gloo, CPU).

Used by ``tests/training/test_distributed.py`` (``helpers.processes.child_env``'s
``PYTHONPATH``, from the checkout):

- ``torchrun --nproc_per_node 2 -m helpers.dist_worker OUT``: rank ``r`` embeds rows
  ``[r*4:(r+1)*4]`` of the global batch of 8 pairs, ``info_nce`` gathers the embeddings
  across processes with gradients, DDP averages the parameter gradients.
- ``python -m helpers.dist_worker OUT``: one plain process on the whole global batch of 8.

Variants ending in ``-cached`` train from cached bottom states instead: every process
caches block L-2's inputs of the whole global batch, pads its own rows, and runs a
``TopKHead`` that Accelerate prepared (DDP-wrapped) in place of the model.

For each variant (``--variants``; adapter kind x symmetric loss x cached) rank 0 writes, in one
``torch.save``'d dict ``{variant: {...}}``:

- ``loss``: the loss averaged over processes (``accelerator.reduce(loss, "mean")``);
- ``local_loss``: the same, with ``gather=False`` (negatives = the 4 local rows only). In
  the single process it is the mean of the two half-batch losses, which is what a
  2-process run without gathering would report;
- ``grads``: every trainable parameter's gradient (after DDP averaging), by name;
- ``pad_diff`` and ``pad_widths`` (single process only): the largest difference between
  embeddings of the whole batch padded together and of each half padded on its own, and
  the padded lengths of both (so a test can see that the padding really differs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random

import torch
from accelerate import Accelerator

from helpers.data import MEDICAL
from helpers.tiny import tiny_model, tiny_tokenizer
from lastlayer.config import AdapterConfig
from lastlayer.core.adapters import attach
from lastlayer.core.encoder import Encoder
from lastlayer.core.split import TopKHead
from lastlayer.training.cache import cache_views, embed_top_k, pad_cached
from lastlayer.training.loss import info_nce
from lastlayer.training.objectives import make_views

GLOBAL_BATCH = 8
TOP_K = 2
TEMPERATURE = 0.05
VARIANTS = {  # name -> (adapter kind, symmetric, from cached bottom states)
    "lora": ("lora", False, False),
    "lora-sym": ("lora", True, False),
    "full": ("full", False, False),
    "full-sym": ("full", True, False),
    "lora-cached": ("lora", False, True),
    "full-sym-cached": ("full", True, True),
}


def global_batch() -> tuple[list[str], list[str]]:
    """Views A and B of the first 8 medical abstracts: fixed, different lengths."""
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for _, line in zip(range(GLOBAL_BATCH), f, strict=False)]
    views_a, views_b, _ = make_views("crop", docs, random.Random(0), sentences_per_crop=1)
    assert len(views_a) == GLOBAL_BATCH, "expected 8 non-empty abstracts"
    return views_a, views_b


def build_encoder(kind: str) -> Encoder:
    """The tiny 4-layer bert (seed 0) with a top-2 adapter, nonzero LoRA B, eval mode."""
    encoder = Encoder(tiny_model("bert", num_layers=4, seed=0), tiny_tokenizer(), pooling="mean")
    attach(encoder, AdapterConfig(kind=kind, top_k=TOP_K))
    torch.manual_seed(1)
    for name, p in encoder.model.named_parameters():
        if "lora_B" in name:  # initialised to 0, which would zero the lora_A gradients
            p.data.normal_(0, 0.02)
    encoder.model.eval()  # no dropout: both runs are deterministic
    return encoder


def run_variant(accelerator: Accelerator, kind: str, symmetric: bool, cached: bool) -> dict:
    encoder = build_encoder(kind)
    world, rank = accelerator.num_processes, accelerator.process_index
    views_a, views_b = global_batch()
    local = GLOBAL_BATCH // world
    rows = slice(rank * local, (rank + 1) * local)

    if cached:  # DDP over the head, whose parameters are the model's
        model = accelerator.prepare(TopKHead(encoder.model, TOP_K))
        pad = encoder.tokenizer.pad_token_id
        own = list(range(GLOBAL_BATCH))[rows]
        a, b = (embed_top_k(encoder, model, pad_cached(cache_views(encoder, v, TOP_K), own, pad))
                for v in (views_a, views_b))
    else:
        model = accelerator.prepare(encoder.model)  # DDP over gloo with 2 processes
        a_tok, b_tok = encoder.tokenize(views_a[rows]), encoder.tokenize(views_b[rows])
        a = encoder.embed(a_tok, model)  # (local, d); each process pads its own rows
        b = encoder.embed(b_tok, model)  # (local, d)
    loss, _ = info_nce(a, b, temperature=TEMPERATURE, symmetric=symmetric)
    accelerator.backward(loss)

    out: dict = {"world_size": world}
    with torch.no_grad():
        out["loss"] = accelerator.reduce(loss.detach(), "mean").item()
        if world == 1:  # what each of 2 processes would see without gathering, averaged
            halves = [info_nce(a[i : i + 4], b[i : i + 4], TEMPERATURE, symmetric, gather=False)[0]
                      for i in (0, 4)]
            local_loss = torch.stack(halves).mean()
        else:
            local_loss, _ = info_nce(a, b, TEMPERATURE, symmetric, gather=False)
        out["local_loss"] = accelerator.reduce(local_loss.detach(), "mean").item()
        if world == 1 and not cached:
            out["pad_widths"] = {  # sequence length: whole batch padded together, halves
                "whole": [a_tok["input_ids"].shape[1], b_tok["input_ids"].shape[1]],
                "halves": [encoder.tokenize(views[i : i + 4])["input_ids"].shape[1]
                           for views in (views_a, views_b) for i in (0, 4)],
            }
            out["pad_diff"] = max(
                (encoder.embed(encoder.tokenize(views[i : i + 4]), model) - full[i : i + 4])
                .abs().max().item()
                for views, full in ((views_a, a), (views_b, b)) for i in (0, 4)
            )
    out["grads"] = {  # by the model's names, whichever module was prepared
        name: p.grad.detach().clone() if p.grad is not None else None
        for name, p in encoder.model.named_parameters() if p.requires_grad
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where rank 0 writes the torch.save'd results")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {list(VARIANTS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)

    accelerator = Accelerator(cpu=True)
    results = {}
    for name in args.variants.split(","):
        results[name] = run_variant(accelerator, *VARIANTS[name])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(results, args.out)
    accelerator.end_training()  # destroys the process group cleanly


if __name__ == "__main__":
    main()
