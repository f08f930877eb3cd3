"""The checkout's paths, its shipped medical abstracts, and small writers of test corpora."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
TESTS = ROOT / "tests"
MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"

# What the Embedder and the server are checked on: long and very short texts (one word, two)
# from three domains (medicine, news, film reviews).
TEXTS = [
    "The patient was admitted with chest pain and shortness of breath after a long walk "
    "in the cold, and was given aspirin and oxygen on arrival.",
    "Aspirin",
    "Chronic kidney disease in elderly patients with diabetes mellitus.",
    "A short one.",
    "Markets fell sharply on Monday as investors weighed new tariffs on steel imports.",
    "great film",
    "Randomised trial of two doses of a new antibiotic in children with pneumonia.",
]


def medical_sample(path: Path, docs: int = 120) -> Path:
    """Write the first ``docs`` shipped medical abstracts (text + label) to a jsonl file."""
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as src:
        lines = [next(src) for _ in range(docs)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records as JSON lines (gzipped when the name ends in .gz); return the path."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
