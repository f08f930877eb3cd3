"""The benchmark harness: what the scripts in ``benchmarks/`` share, one module per job.

===================  =====================================================================
module               job
===================  =====================================================================
``models``           loading bases and adapters: the one place benchmarks touch lastlayer's
                     model-loading API (a run's trainable copy of a shared base included)
``protocol``         the findings' protocol: models, data sets, the held-out split, recipes
``runs``             resumable plans: run keys, groups of runs on one base, pair caches on disk,
                     the loop that skips what the results file already has
``measure``          resident memory, CPU seconds, load, the machine and commit a row records
``steps``            timing optimizer steps (a global hook), profiling one step
``workers``          one measurement in a fresh Python process (its peak memory its own)
``tables``           markdown tables
``results``          result files: JSON lines appended per run, JSON documents written whole
``roofline``         FLOPs from a model's shapes and tokens, the machine's peaks, a row's fraction
``mixes``            Punica's mixed batches (identical, uniform, skewed, distinct) vs single
``random_adapters``  seeded random LoRA / full artifacts on a shipped artifact's base
===================  =====================================================================

Paths here are the repository's: scripts run from its root (``python -m benchmarks.NAME``).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"
# the shipped medical LoRA adapter of each base the inference benchmarks compare on
MEDICAL_ADAPTERS = {
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2",
               ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"),
    "smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct",
                ROOT / "adapters" / "medical" / "smollm2-135m_lora-top4_crop"),
}
# the data sets the project does not ship (--data-root): $LASTLAYER_DATA, else ../shared/data
DATA_ROOT = Path(os.environ.get("LASTLAYER_DATA", ROOT.parent / "shared" / "data"))
