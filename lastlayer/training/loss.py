"""The InfoNCE loss with in-batch negatives, gathered across processes when distributed.

SimCSE ``cl_forward`` and sentence-transformers' ``MultipleNegativesRankingLoss``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

def info_nce(
    a: Tensor,
    b: Tensor,
    temperature: float = 0.05,
    symmetric: bool = False,
    gather: bool = True,
) -> tuple[Tensor, Tensor]:
    """InfoNCE with in-batch negatives (SimCSE ``cl_forward``, MNRL).

    Row ``i`` of ``a`` (view 1 of document ``i``) must pick out row ``i`` of ``b`` (view 2
    of the same document) among all rows of ``b``; the other documents are the negatives.
    Embeddings are L2-normalised here, so logits are cosine similarities / temperature
    (temperature 0.05 = sentence-transformers' scale 20).

    Distributed: when ``torch.distributed`` is initialised with world size > 1 and
    ``gather`` is true, ``b`` (and ``a``, for the symmetric term) is all-gathered from every
    process *with gradients* (``torch.distributed.nn.functional.all_gather``), so each
    local row is scored against the global batch; its positive sits at column
    ``rank * B + i``. Why the gradient is right: each rank's loss is the mean over its own
    ``B`` rows, ``L_r``. The backward of ``all_gather`` sums, into each rank's local
    embeddings, the gradients that *every* rank's ``L_s`` sends them, so rank ``r`` obtains
    the parameter gradient of ``sum_s L_s`` through its own embeddings. DDP then averages
    parameter gradients over the ``W`` ranks: ``(1/W) * sum_r d(sum_s L_s)/dθ|_r``, i.e. the
    gradient of ``(1/W) sum_s L_s`` = the mean loss over all ``W * B`` rows, exactly what one
    process would compute on the global batch.

    Args:
        a: ``(B, d)`` embeddings of view 1.
        b: ``(B, d)`` embeddings of view 2 of the same ``B`` documents.
        temperature: Softmax temperature (paper, SimCSE: 0.05).
        symmetric: Also score ``b -> a`` and average the two losses.
        gather: Use negatives from all processes when running distributed.

    Returns:
        ``(loss, accuracy)``: the scalar loss, and the top-1 in-batch accuracy of the local
        ``a -> b`` rows (0-dim, detached).

    Raises:
        ValueError: Mismatched shapes, or unequal batch sizes across processes.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (B, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(a, dim=-1)  # (B, d)
    b = F.normalize(b, dim=-1)  # (B, d)
    batch = a.size(0)
    a_all, b_all, offset = a, b, 0  # (N, d) candidates, N = B single-process
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=a.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([batch], dtype=torch.long, device=a.device))
        sizes_list = [int(s.item()) for s in sizes]
        if len(set(sizes_list)) != 1:
            raise ValueError(
                f"info_nce needs the same local batch size on every process, got "
                f"{sizes_list}; drop the last incomplete batch (drop_last=True)."
            )
        # torch 2.13 marks this all_gather deprecated in favour of the private
        # torch.distributed._functional_collectives; it still works (gloo and NCCL), so
        # keep the public API and silence the per-step FutureWarning.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*nn\.functional\.all_gather is deprec")
            b_all = torch.cat(all_gather(b), dim=0)  # (W*B, d), gradients reach every rank
            if symmetric:
                a_all = torch.cat(all_gather(a), dim=0)  # (W*B, d)
        offset = rank * batch
    labels = torch.arange(batch, device=a.device) + offset  # (B,) positive column per row

    logits = a @ b_all.T / temperature  # (B, N) cosine / temperature
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        logits_ba = b @ a_all.T / temperature  # (B, N)
        loss = (loss + F.cross_entropy(logits_ba, labels)) / 2
    with torch.no_grad():
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()  # ()
    return loss, accuracy
