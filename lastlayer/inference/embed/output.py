"""The output file, assembled from the finished shards: ``.npy``, ``.jsonl`` or ``.parquet``.

:func:`assemble` (main process, once every shard is done) writes the output inside the parts
folder, shard by shard (never the whole corpus in memory), moves it to its name in one
rename, and removes the parts folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lastlayer.artifact import atomic_path
from lastlayer.extras import require
from lastlayer.inference.embed.parts import kept_on_failure, shards
from lastlayer.inference.embed.plan import EmbedJob, output_format

log = logging.getLogger(__package__)  # "lastlayer.inference.embed", for the whole job


def assemble(job: EmbedJob) -> None:
    """Write the output from the shards into the parts folder, move it in place, clean up."""
    suffix = output_format(job.output)
    writers: dict[str, Callable[[EmbedJob, Path], None]] = {
        ".npy": _write_npy, ".parquet": _write_parquet, ".jsonl": _write_jsonl}
    with kept_on_failure(job.output, job.parts), \
            atomic_path(job.output, tmp=job.parts / f"assembling{suffix}") as tmp:
        writers[suffix](job, tmp)
    shutil.rmtree(job.parts)
    log.info("Wrote %d vectors to %s", len(job.texts), job.output)


def _write_npy(job: EmbedJob, path: Path) -> None:
    """(N, d) float32, filled shard by shard (never the whole corpus in memory)."""
    out = None
    for rows, vectors, _ in shards(job):
        if out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                            shape=(len(job.texts), vectors.shape[1]))
        out[rows.start:rows.stop] = vectors
    assert out is not None  # a job has at least one text
    out.flush()
    del out


def _write_jsonl(job: EmbedJob, path: Path) -> None:
    """One ``{"id", "adapter", "vector"}`` object per line; floats round-trip to float32."""
    with open(path, "w", encoding="utf-8") as f:
        for rows, vectors, names in shards(job):
            for row, vector, name in zip(rows, vectors, names, strict=True):
                f.write(json.dumps({"id": job.ids[row], "adapter": name,
                                    "vector": vector.tolist()}) + "\n")


def _write_parquet(job: EmbedJob, path: Path) -> None:
    """Columns ``id`` (int64 or string), ``adapter`` (string, null: the base) and ``vector``
    (fixed-size list of float32); one row group per shard."""
    pa = require("pyarrow", "datasets", f"Writing {job.output} (parquet)")
    pq = require("pyarrow.parquet", "datasets", f"Writing {job.output} (parquet)")
    id_type = pa.int64() if job.ids and isinstance(job.ids[0], int) else pa.string()
    writer = None
    try:
        for rows, vectors, names in shards(job):
            dim = vectors.shape[1]
            if writer is None:
                schema = pa.schema([("id", id_type), ("adapter", pa.string()),
                                    ("vector", pa.list_(pa.float32(), dim))])
                writer = pq.ParquetWriter(path, schema)
            table = pa.table({
                "id": pa.array(job.ids[rows.start:rows.stop], type=id_type),
                "adapter": pa.array(names, type=pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32()), dim),
            }, schema=writer.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
