"""lastlayer's benchmarks: scripts, not tests, run from the repository root.

Every script is a module of this package, run as ``python -m benchmarks.NAME`` (for
instance ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.speed --quick``); what they
share (loading models, resumable runs, measuring memory, CPU and time, markdown tables,
result files) is the harness in :mod:`benchmarks.bench`. Results live in
``benchmarks/results/``; ``benchmarks/README.md`` says what each script measures.
"""
