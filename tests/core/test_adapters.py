"""The core guarantees of lastlayer.core.adapters, on tiny real models (helpers/tiny.py).

For both adapter kinds (LoRA, full unfreeze) and an encoder (BERT) and a decoder (Llama),
4 layers, top_k=2:

- only the top-k blocks hold trainable weights, and only they change in a training step;
- autograd never enters the blocks below the top k;
- the saved artifact is a plain PEFT adapter (safetensors, Hub id as base) that
  ``peft.PeftModel.from_pretrained`` and ``plain_peft.load_adapter`` (the plain PEFT way)
  load back to the very same embeddings;
- training measures through the engine's head type: the trained blocks picked out of the
  attached copy embed as the model itself and as the head built from the saved artifact;
- artifact writes are atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.plain_peft import load_adapter
from helpers.tiny import tiny_model, tiny_tokenizer
from torch import nn

import lastlayer.artifact.atomic as atomic
from lastlayer.artifact import ArtifactError, write_atomically
from lastlayer.config import AdapterConfig, ConfigError, ModelConfig
from lastlayer.core.adapters import (
    adapter_targets,
    attach,
    check_top_k,
    layer_summary,
    save_adapter,
    trainable_parameters,
)
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.layers import LayerStackError, find_layer_stack, layer_index_of
from lastlayer.training.loss import info_nce

NUM_LAYERS, TOP_K = 4, 2
TOP = set(range(NUM_LAYERS - TOP_K, NUM_LAYERS))  # {2, 3}
POOLING = {"bert": "mean", "llama": "last"}
KINDS = ["lora", "full"]
ARCHS = ["bert", "llama"]

VIEW_A = [
    "Obstructive sleep apnea in loud snorers.",
    "Asthma in children.",
    "The patient had a dry cough for two weeks.",
    "Chronic kidney disease.",
]
VIEW_B = [
    "Snoring and apnea during sleep.",
    "Wheezing and asthma attacks in young patients.",
    "A persistent cough.",
    "Kidney failure progresses slowly.",
]
PROBE = [
    "Heart failure with preserved ejection fraction.",
    "Fever",
    "A randomized trial of a new drug for migraine headaches in adults.",
    "Type 2 diabetes.",
]




def _load(saved_models: dict[str, Path], arch: str, **model_kwargs) -> Encoder:
    """A fresh encoder through the real resolver + loader (eval mode, frozen)."""
    cfg = ModelConfig(name_or_path=str(saved_models[arch]), pooling=POOLING[arch], **model_kwargs)
    return load_encoder(cfg, device="cpu")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(enc: Encoder, steps: int = 1, lr: float = 1e-2, seed: int = 0, flip: bool = False):
    """``steps`` InfoNCE steps (forward, backward, AdamW over *every* parameter).

    Handing AdamW all parameters means a frozen one could only stay bit-identical if no
    gradient ever reached it. Returns the losses and the optimizer.
    """
    torch.manual_seed(seed)
    enc.model.train()
    opt = torch.optim.AdamW(enc.model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        first, second = (VIEW_B, VIEW_A) if flip else (VIEW_A, VIEW_B)
        a = enc.embed(enc.tokenize(first))
        b = enc.embed(enc.tokenize(second))
        loss, _ = info_nce(a, b)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, opt


def _block_index(model: nn.Module, name: str) -> int | None:
    return layer_index_of(name, find_layer_stack(model))


# ---------------------------------------------------------------------------------------
# Where the trainable weights are, and what a training step touches


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_attach_trains_only_top_k_blocks(saved_models, arch: str, kind: str) -> None:
    enc = _load(saved_models, arch)
    attach(enc, AdapterConfig(kind=kind, top_k=TOP_K))
    model = enc.model
    assert model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert {_block_index(model, n) for n in trainable} == TOP  # both top blocks, nothing else
    marker = "lora_" if kind == "lora" else "ln_tuning_layers"
    assert all(marker in n for n in trainable)
    n_trainable, n_total = trainable_parameters(model)
    assert 0 < n_trainable < n_total
    summary = layer_summary(model, TOP_K)
    assert summary["num_layers"] == NUM_LAYERS and summary["trained_layers"] == sorted(TOP)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_training_step_leaves_everything_below_top_k_untouched(
    saved_models, arch: str, kind: str
) -> None:
    enc = _load(saved_models, arch)
    attach(enc, AdapterConfig(kind=kind, top_k=TOP_K))
    before = _snapshot(enc.model)
    (loss,), _ = _train(enc, steps=1)
    assert torch.isfinite(torch.tensor(loss))

    changed = []
    for name, param in enc.model.named_parameters():
        if param.requires_grad:
            assert _block_index(enc.model, name) in TOP, name
            assert param.grad is not None, name
            if not torch.equal(param, before[name]):
                changed.append(name)
        else:
            assert param.grad is None, name
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    assert changed, "no adapter weight changed"
    assert all(_block_index(enc.model, n) in TOP for n in changed)
    if kind == "lora":  # lora_B starts at zero, so the first step must move it
        assert any("lora_B" in n for n in changed)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_autograd_never_enters_bottom_blocks(saved_models, arch: str, kind: str) -> None:
    enc = _load(saved_models, arch)
    attach(enc, AdapterConfig(kind=kind, top_k=TOP_K))
    stack = find_layer_stack(enc.model)
    needs_grad: dict[int, bool] = {}

    def record(index: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            needs_grad[index] = hidden.requires_grad

        return hook

    below, first_top = NUM_LAYERS - TOP_K - 1, NUM_LAYERS - TOP_K
    handles = [
        enc.model.get_submodule(stack.block_name(i)).register_forward_hook(record(i))
        for i in (below, first_top)
    ]
    try:
        enc.model.train()
        emb = enc.embed(enc.tokenize(VIEW_A))
    finally:
        for handle in handles:
            handle.remove()
    assert needs_grad[below] is False  # the graph starts at block L-k
    assert needs_grad[first_top] is True  # positive control: the top blocks are in it
    assert emb.requires_grad


# ---------------------------------------------------------------------------------------
# Saving and loading artifacts


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_save_and_reload_gives_same_embeddings(
    saved_models, tmp_path: Path, arch: str, kind: str
) -> None:
    from peft import PeftModel

    cfg = AdapterConfig(kind=kind, top_k=TOP_K)
    base = _load(saved_models, arch)
    base_emb = base.encode(PROBE, progress=False)

    trained = attach(_load(saved_models, arch), cfg)
    _train(trained, steps=2, lr=2e-2)
    emb = trained.encode(PROBE, progress=False)
    assert (emb - base_emb).abs().max() > 1e-4, "training did not change the embeddings"
    assert trained.model.training  # encode restored train mode

    folder = save_adapter(trained.model, tmp_path / "a", files={"lastlayer.json": "{}"})
    assert folder == tmp_path / "a"
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", "lastlayer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert (folder / "lastlayer.json").read_text(encoding="utf-8") == "{}"
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == trained.resolved.hub_id == f"tiny-{arch}"
    assert config["peft_type"] == ("LORA" if kind == "lora" else "LN_TUNING")
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no temporary folders left behind

    # Plain PEFT, on a freshly loaded base.
    fresh = _load(saved_models, arch)
    fresh.model = PeftModel.from_pretrained(fresh.model, str(folder))
    fresh.model.eval()
    torch.testing.assert_close(fresh.encode(PROBE, progress=False), emb, atol=1e-5, rtol=0)

    # lastlayer's loader: frozen, eval mode, same embeddings.
    loaded = load_adapter(_load(saved_models, arch), folder, name="a")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    torch.testing.assert_close(loaded.encode(PROBE, progress=False), emb, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_training_measures_through_the_head_the_embedder_builds(saved_models, tmp_path: Path,
                                                                kind: str) -> None:
    from helpers.artifacts import artifact_meta

    from lastlayer.core.heads import (
        build_head,
        embed_from_inputs,
        embed_keeping_inputs,
        model_head,
        trained_head,
    )

    trained = attach(_load(saved_models, "bert"), AdapterConfig(kind=kind, top_k=TOP_K))
    _train(trained, steps=2, lr=2e-2)
    own = trained.encode(PROBE, batch_size=2, progress=False)
    base = _load(saved_models, "bert")
    before = _snapshot(base.model)
    _, inputs = embed_keeping_inputs(base, PROBE, model_head(base, TOP_K), batch_size=2)
    head = trained_head(trained, kind, TOP_K)
    assert head.top_k == TOP_K and head.merged == (kind == "full")
    measured = embed_from_inputs(trained, PROBE, inputs, head, batch_size=2)
    torch.testing.assert_close(measured, own, atol=1e-6, rtol=0)

    folder = save_adapter(trained.model, tmp_path / "a", files={"lastlayer.json": "{}"})
    saved = build_head(base.model, folder, artifact_meta(kind=kind, top_k=TOP_K), merge=False)
    loaded = embed_from_inputs(base, PROBE, inputs, saved, batch_size=2)
    torch.testing.assert_close(loaded, measured, atol=1e-6, rtol=0)
    assert all(torch.equal(p, before[n]) for n, p in base.model.named_parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_blocks_take_the_saved_tensors_without_peft(saved_models, tmp_path: Path,
                                                         dtype, monkeypatch) -> None:
    from lastlayer.core.kinds import full

    trained = attach(_load(saved_models, "llama"), AdapterConfig(kind="full", top_k=TOP_K))
    _train(trained, steps=2, lr=2e-2)
    folder = save_adapter(trained.model, tmp_path / "a", files={"lastlayer.json": "{}"})
    base = _load(saved_models, "llama").model.to(dtype)
    before = _snapshot(base)
    monkeypatch.setattr(full, "_assigned_blocks", lambda *a: None)  # PEFT's way
    peft_blocks = full.private_blocks(base, folder, TOP_K)
    monkeypatch.undo()
    monkeypatch.setattr(full, "load_onto_copies", lambda *a, **k: pytest.fail("PEFT used"))
    blocks = full.private_blocks(base, folder, TOP_K)
    for own, peft in zip(blocks, peft_blocks, strict=True):
        assert type(own) is type(peft) and not own.training
        theirs = dict(peft.state_dict())
        for name, tensor in own.state_dict().items():  # the same tensors, bit for bit
            assert tensor.dtype == dtype and torch.equal(tensor, theirs[name]), name
        assert not any(p.requires_grad for p in own.parameters())
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_load_second_adapter_and_switch(saved_models, tmp_path: Path, kind: str) -> None:
    cfg = AdapterConfig(kind=kind, top_k=TOP_K)
    embs = {}
    for name, flip in (("a", False), ("b", True)):
        enc = attach(_load(saved_models, "bert"), cfg)
        _train(enc, steps=2, lr=2e-2, seed=1 if flip else 0, flip=flip)
        embs[name] = enc.encode(PROBE, progress=False)
        save_adapter(enc.model, tmp_path / name, files={"lastlayer.json": "{}"})
    assert (embs["a"] - embs["b"]).abs().max() > 1e-4

    enc = load_adapter(_load(saved_models, "bert"), tmp_path / "a", name="a")
    model = enc.model
    load_adapter(enc, tmp_path / "b", name="b")
    assert enc.model is model  # the second adapter joins the same PeftModel
    assert set(enc.model.peft_config) == {"a", "b"}
    assert not enc.model.training
    torch.testing.assert_close(enc.encode(PROBE, progress=False), embs["a"], atol=1e-5, rtol=0)
    enc.model.set_adapter("b")
    torch.testing.assert_close(enc.encode(PROBE, progress=False), embs["b"], atol=1e-5, rtol=0)
    enc.model.set_adapter("a")
    torch.testing.assert_close(enc.encode(PROBE, progress=False), embs["a"], atol=1e-5, rtol=0)


def test_loading_another_kind_onto_the_same_base_is_refused_clearly(saved_models, tmp_path):
    for kind in KINDS:
        enc = attach(_load(saved_models, "bert"), AdapterConfig(kind=kind, top_k=TOP_K))
        save_adapter(enc.model, tmp_path / kind, files={"lastlayer.json": "{}"})
    enc = load_adapter(_load(saved_models, "bert"), tmp_path / "lora", name="news")
    with pytest.raises(ValueError, match=r"'full' artifact.*'news' \(lora\).*one kind"):
        load_adapter(enc, tmp_path / "full", name="medical")
    assert set(enc.model.peft_config) == {"news"}  # nothing half-loaded


@pytest.mark.parametrize("kind", KINDS)
def test_save_named_adapter_loads_as_plain_peft(saved_models, tmp_path: Path, kind: str) -> None:
    """An adapter attached under a name other than "default" saves a flat, loadable folder."""
    from peft import PeftModel

    cfg = AdapterConfig(kind=kind, top_k=TOP_K)
    enc = attach(_load(saved_models, "bert"), cfg, name="medical")
    _train(enc, steps=1)
    emb = enc.encode(PROBE, progress=False)
    folder = save_adapter(
        enc.model, tmp_path / "med", files={"lastlayer.json": "{}"}, adapter_name="medical"
    )
    assert sorted(p.name for p in folder.iterdir() if p.name != "README.md") == [
        "adapter_config.json", "adapter_model.safetensors", "lastlayer.json"
    ]
    fresh = _load(saved_models, "bert")
    fresh.model = PeftModel.from_pretrained(fresh.model, str(folder)).eval()
    torch.testing.assert_close(fresh.encode(PROBE, progress=False), emb, atol=1e-5, rtol=0)


def test_direct_encoder_attach_and_save(tmp_path: Path) -> None:
    """An Encoder built by hand (no resolver) still trains and saves a loadable adapter."""
    from peft import PeftModel

    enc = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer())
    attach(enc, AdapterConfig(top_k=TOP_K))
    _train(enc, steps=1)
    emb = enc.encode(PROBE, progress=False)
    folder = save_adapter(enc.model, tmp_path / "x", files={})
    fresh = PeftModel.from_pretrained(tiny_model("bert"), str(folder)).eval()
    out = Encoder(model=fresh, tokenizer=tiny_tokenizer()).encode(PROBE, progress=False)
    torch.testing.assert_close(out, emb, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------
# write_atomically


def _artifact(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def _version(text: str):
    """A writer of a minimal artifact (lastlayer.json marks the folder as one)."""
    def write(tmp: Path) -> None:
        (tmp / "lastlayer.json").write_text("{}")
        (tmp / "weights").write_text(text)
    return write


def test_write_atomically_failure_keeps_previous_artifact(tmp_path: Path) -> None:
    out = tmp_path / "adapters" / "med"
    write_atomically(out, _version("v1"))
    assert _artifact(out) == {"lastlayer.json": "{}", "weights": "v1"}

    def broken(tmp: Path) -> None:
        (tmp / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(out, broken, overwrite=True)
    assert _artifact(out) == {"lastlayer.json": "{}", "weights": "v1"}
    assert os.listdir(out.parent) == ["med"]  # no .tmp / .old folders remain

    def other(tmp: Path) -> None:
        (tmp / "lastlayer.json").write_text("{}")
        (tmp / "other").write_text("v2")

    write_atomically(out, other, overwrite=True)
    assert _artifact(out) == {"lastlayer.json": "{}", "other": "v2"}  # replaced, not merged
    assert os.listdir(out.parent) == ["med"]


def test_write_atomically_failure_on_first_write(tmp_path: Path) -> None:
    out = tmp_path / "new"

    def broken(tmp: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(out, broken)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_write_atomically_failed_swap_restores_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the final rename fails, the previous artifact must not be lost (the two-rename
    swap of systems without an atomic exchange)."""
    out = tmp_path / "med"
    write_atomically(out, _version("v1"))
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".med.tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        patch.setattr(atomic, "_exchange", lambda a, b: False)
        with pytest.raises(OSError, match="rename failed"):
            write_atomically(out, _version("v2"), overwrite=True)
    assert _artifact(out) == {"lastlayer.json": "{}", "weights": "v1"}
    assert os.listdir(tmp_path) == ["med"]


def test_write_atomically_swaps_in_one_exchange(tmp_path: Path) -> None:
    """Where the system can exchange two paths, the final name never goes missing."""
    out = tmp_path / "med"
    write_atomically(out, _version("v1"))
    assert atomic._exchange(tmp_path / "med", tmp_path / "med") in (True, False)
    write_atomically(out, _version("v2"), overwrite=True)
    assert _artifact(out) == {"lastlayer.json": "{}", "weights": "v2"}
    assert os.listdir(tmp_path) == ["med"]


def test_a_swap_killed_between_two_renames_is_undone_by_the_next_write(tmp_path: Path) -> None:
    """A process killed between the two renames leaves the old folder aside and stale
    temporaries: the next write puts the old one back (and refuses to overwrite it)."""
    out = tmp_path / "med"
    write_atomically(out, _version("v1"))
    os.replace(out, tmp_path / ".med.old-deadbeef")
    (tmp_path / ".med.tmp-cafebabe").mkdir()
    with pytest.raises(ArtifactError, match="already holds an artifact"):
        write_atomically(out, _version("v2"))
    assert _artifact(out) == {"lastlayer.json": "{}", "weights": "v1"}
    assert os.listdir(tmp_path) == ["med"]


# ---------------------------------------------------------------------------------------
# Target selection and errors


def test_lora_target_modules_suffix_filter() -> None:
    enc = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer())
    cfg = AdapterConfig(kind="lora", top_k=TOP_K, target_modules=["query", "value"])
    assert adapter_targets(enc.model, cfg) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in sorted(TOP) for m in ("query", "value")
    ]
    attach(enc, cfg)
    wrapped = sorted(
        n.removeprefix("base_model.model.")
        for n, m in enc.model.named_modules()
        if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and m.lora_A
    )
    assert wrapped == sorted(adapter_targets(tiny_model("bert"), cfg))
    trainable = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable and all(
        (".query.lora_" in n or ".value.lora_" in n) and _block_index(enc.model, n) in TOP
        for n in trainable
    )


def test_llama_target_modules_suffix_filter() -> None:
    model = tiny_model("llama")
    cfg = AdapterConfig(kind="lora", top_k=1, target_modules=["self_attn.q_proj"])
    assert adapter_targets(model, cfg) == ["layers.3.self_attn.q_proj"]


def test_full_kind_rejects_target_modules() -> None:
    with pytest.raises(ConfigError, match="target_modules only applies to adapter.kind=lora"):
        AdapterConfig(kind="full", target_modules=["query"])


def test_full_kind_targets_whole_blocks() -> None:
    model = tiny_model("llama")
    assert adapter_targets(model, AdapterConfig(kind="full", top_k=TOP_K)) == [
        "layers.2", "layers.3"
    ]


def test_unknown_suffix_raises() -> None:
    enc = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer())
    with pytest.raises(LayerStackError, match="q_proj"):
        attach(enc, AdapterConfig(kind="lora", top_k=TOP_K, target_modules=["q_proj"]))
    assert not hasattr(enc.model, "peft_config")  # the model was left unwrapped


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_larger_than_layer_count_raises(kind: str) -> None:
    enc = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer())
    with pytest.raises(LayerStackError, match="top_k=5 but the model has 4 layers"):
        attach(enc, AdapterConfig(kind=kind, top_k=NUM_LAYERS + 1))


def test_check_top_k_names_the_recipe_key_and_the_layer_count() -> None:
    from lastlayer.core.split import BottomRunner, TopKHead

    model = tiny_model("bert")
    assert check_top_k(model, NUM_LAYERS).num_layers == NUM_LAYERS
    with pytest.raises(ConfigError, match=r"adapter\.top_k=40 but BertModel has only 4 layers; "
                       r"set adapter\.top_k to 1\.\.4"):
        check_top_k(model, 40)
    # The split forward fails loudly too, instead of slicing from the end.
    for part in (BottomRunner, TopKHead):
        with pytest.raises(LayerStackError, match="top_k=40 but the model has 4 layers"):
            part(model, 40)


# ---------------------------------------------------------------------------------------
# bitsandbytes (CPU)


@pytest.mark.bnb
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_lora_trains_after_eval_forward(saved_models, quantization: str) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    enc = _load(saved_models, "bert", quantization=quantization)
    layer_type = bnb.nn.Linear8bitLt if quantization == "8bit" else bnb.nn.Linear4bit
    block_linears = [
        m for n, m in enc.model.named_modules()
        if isinstance(m, nn.Linear) and _block_index(enc.model, n) is not None
    ]
    assert block_linears and all(isinstance(m, layer_type) for m in block_linears)
    if quantization == "4bit":  # the CPU repacking fast path is off (disable_cpu_4bit_repacking)
        assert all(m.support_avx512bf16_for_cpu is False for m in block_linears)

    # The 4-bit trap: an eval / no-grad forward FIRST, then training.
    emb = enc.encode(PROBE, progress=False)
    assert emb.shape == (len(PROBE), 32) and torch.isfinite(emb).all()
    if quantization == "4bit":
        assert not any(
            getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in block_linears
        )

    attach(enc, AdapterConfig(kind="lora", top_k=TOP_K))
    lora = {n: p.detach().clone() for n, p in enc.model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    losses, _ = _train(enc, steps=2, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(x)) for x in losses)
    params = dict(enc.model.named_parameters())
    assert any(not torch.equal(params[n], before) for n, before in lora.items())
    assert all(p.grad is None for n, p in params.items() if n not in lora)
    assert torch.isfinite(enc.encode(PROBE, progress=False)).all()


def test_every_kind_is_a_plugin_of_one_shape():
    """``lora`` and ``full`` answer the same questions (lastlayer.core.kinds), and a PEFT
    config names its kind."""
    from lastlayer.core.kinds import KINDS, kind_named, kind_of

    shape = {"NAME", "PEFT_TYPE", "always_merged", "targets", "peft_config", "fix_saved",
             "load_named", "expects_missing_keys", "private_blocks", "private_blocks_from_model",
             "merged_model", "block_change", "private_change"}
    assert sorted(KINDS) == ["full", "lora"]
    for name, kind in KINDS.items():
        assert shape <= set(vars(kind)), name
        assert kind.NAME == name and kind_named(name) is kind
    model = tiny_model("bert")
    for name in KINDS:
        config = KINDS[name].peft_config(model, AdapterConfig(kind=name, top_k=TOP_K))
        assert kind_of(config) is KINDS[name]
    with pytest.raises(ValueError, match="unknown adapter kind 'prefix'; known: lora, full"):
        kind_named("prefix")
