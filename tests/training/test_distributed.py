"""Global-batch negatives: 2 CPU processes (torchrun, gloo) match 1 process on the same batch.

``helpers.dist_worker`` runs one InfoNCE step of a tiny bert with a top-2 adapter. Run
under ``torchrun --nproc_per_node 2`` each process embeds half of a fixed global batch of 8
pairs, ``info_nce`` all-gathers embeddings with gradients and DDP averages the parameter
gradients; run as one plain process it embeds all 8 pairs. If the negatives really are
the global batch and the gather's backward is right, the loss and every trainable
gradient are the same in both runs (LoRA and full kinds, plain and symmetric loss).

The ``-cached`` variants train from cached bottom states through a ``TopKHead`` that
Accelerate prepared in the model's place: its gradients must be all-reduced just the
same, and equal those of the normal forward.

The last test runs the real command, ``torchrun --nproc_per_node 2 -m lastlayer train``,
on a tiny bert saved to disk, with fresh and with cached views, against ``lastlayer
train`` in one process with twice the per-process batch (the same global batch): the
saved loss history and adapter weights agree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from helpers.data import ROOT, medical_sample
from helpers.processes import child_env, launcher

pytestmark = pytest.mark.distributed

VARIANTS = ["lora", "lora-sym", "full", "full-sym", "lora-cached", "full-sym-cached"]
TIMEOUT_S = 180
RTOL, ATOL = 1e-4, 1e-6
WORKER = ["-m", "helpers.dist_worker"]


def _distributed_cmd(out: Path) -> list[str]:
    return [*launcher(2), *WORKER, str(out)]


def _wait(name: str, proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{name} run timed out after {TIMEOUT_S} s; output:\n{output}")
    return proc.returncode, output


def _load(name: str, rc: int, output: str, out: Path) -> dict:
    if rc != 0 or not out.is_file():
        pytest.fail(f"{name} run failed (exit {rc}); output:\n{output}")
    return torch.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    """(2-process results, 1-process results), both launched at once."""
    tmp = tmp_path_factory.mktemp("dist")
    popen = {"cwd": ROOT, "env": child_env(), "stdout": subprocess.PIPE,
             "stderr": subprocess.STDOUT, "text": True}
    dist_out, ref_out = tmp / "dist.pt", tmp / "ref.pt"
    ref = subprocess.Popen([*launcher(1), *WORKER, str(ref_out)], **popen)
    try:
        name = "torchrun --nproc_per_node 2"
        rc, output = _wait(name, subprocess.Popen(_distributed_cmd(dist_out), **popen))
        if rc != 0 and "EADDRINUSE" in output:  # the free port was taken meanwhile: once more
            rc, output = _wait(name, subprocess.Popen(_distributed_cmd(dist_out), **popen))
        dist_results = _load(name, rc, output, dist_out)
        ref_results = _load("single-process", *_wait("single-process", ref), ref_out)
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.communicate()
    return dist_results, ref_results


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_match_one_on_the_global_batch(runs, variant):
    dist, ref = runs[0][variant], runs[1][variant]
    assert (dist["world_size"], ref["world_size"]) == (2, 1)
    assert dist["loss"] == pytest.approx(ref["loss"], rel=RTOL, abs=ATOL)
    assert dist["grads"].keys() == ref["grads"].keys()
    assert dist["grads"], "no trainable parameters"
    for name, g_ref in ref["grads"].items():
        g_dist = dist["grads"][name]
        assert g_ref is not None and g_dist is not None, f"{name} got no gradient"
        torch.testing.assert_close(g_dist, g_ref, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, n=name: f"{n}: {m}")
        # Not trivially equal: every gradient is nonzero, except the attention key bias,
        # whose gradient is exactly 0 in theory (softmax ignores a per-query constant).
        if not name.endswith("key.bias"):
            assert g_ref.abs().max() > 1e-6, f"{name}: gradient is (near) zero"


@pytest.mark.parametrize("variant", VARIANTS)
def test_negatives_are_global_not_local(runs, variant):
    dist, ref = runs[0][variant], runs[1][variant]
    # Without gathering, 2 processes see 4 candidates each: the reference's two half-batch
    # losses (mean), matched by the 2-process run's own gather=False loss.
    assert dist["local_loss"] == pytest.approx(ref["local_loss"], rel=RTOL, abs=ATOL)
    # With gathering every row is scored against all 8: a clearly different loss
    # (~log 8 vs ~log 4 for a near-random tiny model).
    assert abs(dist["loss"] - dist["local_loss"]) > 0.1


def test_padding_each_half_separately_changes_nothing(runs):
    ref = runs[1]["lora"]
    whole, halves = ref["pad_widths"]["whole"], ref["pad_widths"]["halves"]
    # halves = [A rows 0-3, A rows 4-7, B rows 0-3, B rows 4-7]; whole = [A, B]
    assert any(h != whole[i // 2] for i, h in enumerate(halves)), "padding never differs"
    assert ref["pad_diff"] < 1e-5


@pytest.mark.parametrize("cached, fresh",
                         [("lora-cached", "lora"), ("full-sym-cached", "full-sym")])
def test_cached_states_train_like_the_full_forward(runs, cached, fresh):
    for results in runs:  # 2 processes, then 1
        assert results[cached]["loss"] == pytest.approx(results[fresh]["loss"], rel=RTOL, abs=ATOL)
        assert results[cached]["grads"].keys() == results[fresh]["grads"].keys()
        for name, grad in results[fresh]["grads"].items():
            torch.testing.assert_close(results[cached]["grads"][name], grad, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------
# The real training command: `torchrun --nproc_per_node 2 -m lastlayer train` against one
# process with the same global batch.

CLI_STEPS, PER_PROCESS = 3, 4
# Both runs see the same pairs in the same global batches and compute the same loss; they
# differ only in rounding: each process pads and multiplies 4 rows instead of 8, and loss
# and gradients are averaged over gloo (sum, then / 2) instead of inside one mean. Measured
# (3 steps, lr 1e-3): losses agree to 7e-7; weights to 5e-7 (fresh views) and 6e-6
# (cached). AdamW divides each gradient entry by its own RMS, so an entry whose gradient is
# near 0 turns rounding into a visible step (at most lr = 1e-3 per step). The tolerances
# keep 10-15x margin; a real difference (other pairs, local negatives: ~log 4 instead of
# ~log 8, a missed gradient all-reduce) moves the losses by more than 1e-2.
CLI_LOSS_ATOL, CLI_WEIGHT_ATOL = 1e-5, 1e-4


def _corpus(folder: Path) -> Path:
    return medical_sample(folder / "medical.jsonl", docs=60)


def _train_cmd(recipe: Path, out: Path, processes: int, *overrides: str) -> list[str]:
    batch = PER_PROCESS * 2 // processes  # the same global batch of 8 pairs
    return [*launcher(processes), "-m", "lastlayer", "train", str(recipe),
            f"train.batch_size={batch}", f"output_dir={out}", *overrides]


@pytest.fixture(scope="module")
def cli_runs(saved_models, tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Artifact folders of ``lastlayer train`` by (views, processes): fresh and cached views,
    on 2 processes and on 1 with twice the batch. Pairs of runs go at once (2 cores)."""
    tmp = tmp_path_factory.mktemp("cli")
    recipe = tmp / "recipe.yaml"
    recipe.write_text("\n".join([
        f"model: {{name_or_path: {saved_models['bert']}, max_length: 48}}",
        "adapter: {kind: lora, top_k: 2}",
        # no dropout: its masks are drawn per process and could never match one process
        "objective: {kind: crop, model_dropout: false}",
        f"data: {{train: {_corpus(tmp)}}}",
        f"train: {{max_steps: {CLI_STEPS}, lr: 1.0e-3, cpu: true}}",
        "eval: {data: null}",
        "seed: 0",
        f"output_dir: {tmp / 'unused'}",
    ]) + "\n", encoding="utf-8")
    popen = {"cwd": ROOT, "env": child_env(), "stdout": subprocess.PIPE,
             "stderr": subprocess.STDOUT, "text": True}
    outs = {}
    for views, cached in (("fresh", "0"), ("cached", str(CLI_STEPS * 2 * PER_PROCESS))):
        procs = {}
        for processes in (2, 1):
            out = tmp / f"{views}-{processes}"
            cmd = _train_cmd(recipe, out, processes, f"train.cached_pairs={cached}")
            procs[processes] = (cmd, subprocess.Popen(cmd, **popen))
        for processes, (cmd, proc) in procs.items():
            name = f"lastlayer train, {views} views, {processes} process(es)"
            rc, output = _wait(name, proc)
            if rc != 0 and "EADDRINUSE" in output:  # the free port was taken meanwhile
                rc, output = _wait(name, subprocess.Popen(cmd, **popen))
            out = tmp / f"{views}-{processes}"
            if rc != 0 or not (out / "adapter_model.safetensors").is_file():
                pytest.fail(f"{name} failed (exit {rc}); output:\n{output}")
            outs[views, processes] = out
    return outs


@pytest.mark.parametrize("views", ["fresh", "cached"])
def test_train_command_on_two_processes_matches_one(cli_runs, views):
    import json

    from safetensors.torch import load_file

    from lastlayer.artifact import read as read_metadata

    two, one = cli_runs[views, 2], cli_runs[views, 1]
    log_two = json.loads((two / "train_log.json").read_text())
    log_one = json.loads((one / "train_log.json").read_text())
    assert len(log_two) == len(log_one) == CLI_STEPS
    for a, b in zip(log_two, log_one, strict=True):
        assert a["step"] == b["step"] and a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], abs=CLI_LOSS_ATOL)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    assert abs(log_one[0]["loss"] - log_one[-1]["loss"]) > 1e-2, "training moved nothing"

    w_two = load_file(two / "adapter_model.safetensors")
    w_one = load_file(one / "adapter_model.safetensors")
    assert w_two.keys() == w_one.keys() and w_one
    for name, tensor in w_one.items():
        torch.testing.assert_close(w_two[name], tensor, rtol=0, atol=CLI_WEIGHT_ATOL,
                                   msg=lambda m, n=name: f"{n}: {m}")
    meta = read_metadata(two)
    assert meta.training.steps == CLI_STEPS
    assert meta.training.view_stats["documents"] > 0
