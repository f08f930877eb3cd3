"""Step 2: encode a planned job's shards (resuming, on one or many processes), then the output.

:func:`run_embedding` takes this process' shards (every ``num_processes``-th one under
``torchrun`` / ``accelerate launch``, :func:`process_state`), skips the finished ones,
encodes the others one call each and saves them (:mod:`~lastlayer.inference.embed.parts`);
the main process then assembles the output (:mod:`~lastlayer.inference.embed.output`).
:func:`embed_file` is both steps as ``lastlayer embed`` runs them: plan, load the encoder
on this process' device, run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lastlayer.core.progress import progress as progress_bar
from lastlayer.inference.embed import parts
from lastlayer.inference.embed.output import assemble
from lastlayer.inference.embed.parts import ProcessState
from lastlayer.inference.embed.plan import (
    BATCH_SIZE,
    SHARD_SIZE,
    TEXT_FIELD,
    EmbedError,
    EmbedJob,
    plan_embedding,
)

log = logging.getLogger(__package__)  # "lastlayer.inference.embed", for the whole job

BARRIER_TIMEOUT = timedelta(days=7)
"""How long a process that has finished its shards waits for the others."""
ROUTE = "auto"
"""The adapter that routes each text (``lastlayer.core.engine.AUTO``; this module loads no
torch, so it names it rather than importing the engine)."""


class TextEncoder(Protocol):
    """What :func:`run_embedding` needs from an encoder (``lastlayer.inference.Embedder``)."""

    def encode(self, texts: list[str], adapter: Any = None, batch_size: int = 32,
               progress: bool | None = None) -> Any:
        """``texts`` embedded (``lastlayer.core.engine.Embeddings``): ``.vectors`` (N, d)
        float32 in order and, with ``adapter="auto"`` (each text routed to the adapter that
        suits it, from one pass), ``.routed``: per text, the adapter name (None: the base).
        ``adapter``: None, a name, ``"auto"``, or one name (or None) per text."""
        ...


class _OneProcess:
    """The process state of a plain, single-process run (no process group to set up)."""

    process_index = 0
    num_processes = 1
    is_main_process = True
    device = None

    def wait_for_everyone(self) -> None:
        pass


def process_state(cpu: bool = False) -> ProcessState:
    """This process' place in a ``torchrun`` / ``accelerate launch`` run, or a lone process.

    A launched run gets ``accelerate.PartialState`` (gloo on CPU: ``cpu`` or no GPU, one GPU
    per process otherwise; its ``device`` is this process' device). A plain run sets up
    nothing.

    The processes meet only before and after the whole encoding; the process group's
    default 30-minute timeout would end a long run whose processes finish further apart
    than that, so its timeout is :data:`BARRIER_TIMEOUT`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _OneProcess()
    import torch
    from accelerate import PartialState

    use_cpu = cpu or not torch.cuda.is_available() or (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    return PartialState(cpu=use_cpu, timeout=BARRIER_TIMEOUT)


def run_embedding(job: EmbedJob, encoder: TextEncoder, state: ProcessState | None = None,
                  progress: bool = True) -> Path:
    """Encode the job's shards that are not done yet, then write the output atomically.

    Args:
        job: From :func:`plan_embedding`.
        encoder: See :class:`TextEncoder`.
        state: This process' share (default: :func:`process_state`).
        progress: Show a progress bar (main process only), in texts left to embed.

    Returns:
        The output file (complete on return, in every process).

    Raises:
        EmbedError: The parts folder holds another job's shards (and not ``overwrite``).
    """
    state = state or process_state()
    parts.prepare(job, state)
    mine = range(state.process_index, job.num_shards, state.num_processes)
    total = sum(len(job.rows(i)) for i in mine)
    desc = "embed" if state.num_processes == 1 else (
        f"embed (process 0 of {state.num_processes})")
    done = 0
    with progress_bar(total=total, desc=desc, unit="text",
                      enabled=bool(progress and state.is_main_process)) as bar:
        for shard in mine:
            rows = job.rows(shard)
            if parts.read_shard(job.shard_path(shard), len(rows)) is not None:
                done += 1
                bar.total -= len(rows)  # the bar counts the work left: an honest rate and ETA
                bar.refresh()
                continue
            vectors, names = _encode(job, encoder, [job.texts[i] for i in rows])
            parts.write_shard(job.shard_path(shard), vectors, names)
            bar.update(len(rows))
    if done:
        log.info("Resumed: %d of this process' %d shard(s) were already done.", done, len(mine))
    state.wait_for_everyone()
    if state.is_main_process:
        assemble(job)
    state.wait_for_everyone()
    return job.output


def _encode(job: EmbedJob, encoder: TextEncoder,
            texts: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """One shard's vectors (one encode call: routing and embedding share the bottom pass)
    and the adapter of each row."""
    result = encoder.encode(texts, adapter=ROUTE if job.route else job.adapter,
                            batch_size=job.batch_size, progress=False)
    if job.route:
        names = list(result.routed)
        if len(names) != len(texts):
            raise RuntimeError(f"routing returned {len(names)} names for {len(texts)} texts")
    else:
        names = [job.adapter] * len(texts)
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise RuntimeError(f"encode returned shape {vectors.shape} for {len(texts)} texts")
    return vectors, names


def embed_file(
    input: str | Path, output: str | Path, load: Callable[[Any], TextEncoder], *,
    adapters: Mapping[str, str] | None = None, adapter: str | None = None,
    route: bool = False, text_field: str = TEXT_FIELD, id_field: str | None = None,
    shard_size: int = SHARD_SIZE, batch_size: int = BATCH_SIZE, overwrite: bool = False,
    cpu: bool = False, settings: Mapping[str, Any] | None = None, progress: bool = True,
    field_keys: tuple[str, str] = ("--text-field", "--id-field"),
) -> EmbedJob:
    """Check and read everything, load the encoder, embed (resuming), write the output.

    Args:
        input, output: As :func:`plan_embedding`.
        load: ``load(device)`` -> the encoder with ``adapters`` loaded under their names;
            ``device`` is this process' device in a launched run, else None (the
            encoder's choice).
        adapters: ``{name: path}`` that ``load`` loads, recorded with the shards.
        adapter, route, text_field, id_field, shard_size, batch_size, overwrite, settings,
        field_keys: As :func:`plan_embedding`.
        cpu: Use CPU processes (gloo) in a launched run even where there are GPUs.
        progress: Show a progress bar.

    Returns:
        The job that was run (ids, texts, output).
    """
    adapters = dict(adapters or {})
    job = plan_embedding(
        input, output, text_field=text_field, id_field=id_field, adapter=adapter,
        route=route, adapter_names=list(adapters), shard_size=shard_size,
        batch_size=batch_size, overwrite=overwrite,
        settings={**(settings or {}), "adapters": adapters}, field_keys=field_keys,
    )
    state = process_state(cpu)
    device = getattr(state, "device", None) if state.num_processes > 1 else None
    if cpu and device is None:
        device = "cpu"
    encoder = load(device)
    if route:
        check_routable(encoder)
    run_embedding(job, encoder, state, progress=progress)
    return job


def check_routable(encoder: Any) -> None:
    """Routing can pick the loaded adapters: they hold routing signatures.

    Looks at ``encoder.adapters`` (``{name: info}`` whose ``routable`` says so, as
    :attr:`lastlayer.inference.Embedder.adapters`); an encoder without it is not checked.

    Raises:
        EmbedError: No adapter has a signature (a warning names those without one).
    """
    infos = getattr(encoder, "adapters", None)
    if not isinstance(infos, Mapping):
        return
    unroutable = [name for name, info in infos.items() if not getattr(info, "routable", True)]
    if infos and len(unroutable) == len(infos):
        raise EmbedError(f"--route: none of the adapters ({', '.join(unroutable)}) holds a "
                         "routing signature (artifacts trained with an older lastlayer have "
                         "none). Choose one with --adapter-for-all NAME instead.")
    if unroutable:
        log.warning("--route never picks %s: no routing signature in the artifact.",
                    ", ".join(unroutable))
