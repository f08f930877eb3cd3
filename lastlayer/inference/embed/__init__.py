"""Embed a corpus file into ``.npy``, ``.parquet`` or ``.jsonl``: resumable, on many processes.

``lastlayer embed`` is built from two steps, so that every mistake a user can make is found
before a model is loaded:

1. :func:`plan_embedding` reads the corpus (ids and texts, with the readers of
   :mod:`lastlayer.corpus`) and checks the output (suffix, existing file, extras).
2. :func:`run_embedding` encodes the texts in shards of ``shard_size`` consecutive
   records, each saved to ``OUTPUT.parts/`` as soon as it is done, then assembles the
   output atomically and removes the parts.

Interrupted runs resume: a rerun keeps every shard that loads and holds the right number of
vectors, and encodes only the others. ``OUTPUT.parts/job.json`` records what the shards
were made from (the corpus' digest, the shard size, the model settings); parts of another
job are refused rather than mixed in.

Under ``torchrun`` or ``accelerate launch`` every process takes every ``num_processes``-th
shard and the main process assembles the output (the parts folder must be on a file system
all processes see). A shard is always encoded in one call, whichever process runs it, so
its batches, and hence its vectors, do not depend on the number of processes.

The encoder is anything with ``encode(texts, adapter=..., batch_size=..., progress=...)``
returning vectors and (with ``adapter="auto"``) the routed names, as
:class:`lastlayer.inference.Embedder` has.

The modules, in the order a job uses them: ``plan`` (the job and step 1: everything checked
before a model loads), ``run`` (step 2: processes, encoding the shards; and
:func:`embed_file`, both steps as the command runs them), ``parts`` (the ``OUTPUT.parts/``
folder: the job file, the shards, resuming), ``output`` (the shards assembled into the
output file).
"""

from lastlayer.inference.embed.parts import JOB_FILE, ProcessState
from lastlayer.inference.embed.plan import (
    BATCH_SIZE,
    FORMATS,
    PARTS_SUFFIX,
    SHARD_SIZE,
    TEXT_FIELD,
    EmbedError,
    EmbedJob,
    check_adapter_choice,
    check_unique_ids,
    output_format,
    parse_adapters,
    plan_embedding,
)
from lastlayer.inference.embed.run import (
    BARRIER_TIMEOUT,
    ROUTE,
    TextEncoder,
    check_routable,
    embed_file,
    process_state,
    run_embedding,
)

__all__ = ["BARRIER_TIMEOUT", "BATCH_SIZE", "FORMATS", "JOB_FILE", "PARTS_SUFFIX", "ROUTE",
           "SHARD_SIZE", "TEXT_FIELD", "EmbedError", "EmbedJob", "ProcessState", "TextEncoder",
           "check_adapter_choice", "check_routable", "check_unique_ids", "embed_file",
           "output_format", "parse_adapters", "plan_embedding", "process_state",
           "run_embedding"]
