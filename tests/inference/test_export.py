"""lastlayer export: a sentence-transformers folder that gives lastlayer's own vectors.

Tiny artifacts are trained by the real pipeline, then their adapter weights are pushed far
from where 2 training steps leave them, so that a merge that dropped or garbled the
adapter could not pass for the base.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import MEDICAL, ROOT, medical_sample
from helpers.tiny import tiny_model, tiny_tokenizer
from safetensors.torch import load_file, save_file

import lastlayer.inference.export as export_module
from lastlayer.cli import main
from lastlayer.config import ModelConfig, load_recipe
from lastlayer.core.adapters import load_target
from lastlayer.core.encoder import load_encoder
from lastlayer.inference.export import (
    MARKER,
    ExportError,
    cosines,
    export_sentence_transformers,
)
from lastlayer.training.run import run

sentence_transformers = pytest.importorskip("sentence_transformers")

MAX_LENGTH = 16
TEXTS = [
    "Chest pain in a smoker.",
    "embeddings",
    "The trial randomised 120 patients with asthma to inhaled steroids or placebo.",
    # Far longer than MAX_LENGTH tokens: both sides must cut it at the same place.
    " ".join(["Renal function declined steadily in the treated group over two years."] * 8),
    "Short.",
    "Markets fell after the rate rise.",
    "A second, slightly longer sentence about the same kidney patients and their outcomes.",
]
# (arch, kind, pooling, normalize): both kinds on an encoder and a decoder, every pooling.
CASES = [
    ("bert", "lora", "mean", True),
    ("bert", "full", "cls", False),
    ("llama", "lora", "last", True),
    ("llama", "full", "mean", True),
]


def case_id(case: tuple) -> str:
    arch, kind, pooling, normalize = case
    return f"{arch}-{kind}-{pooling}" + ("" if normalize else "-unnormalized")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return medical_sample(tmp_path_factory.mktemp("data") / "medical.jsonl", docs=48)


def train_artifact(model: Path, corpus: Path, out: Path, kind: str, pooling: str,
                   normalize: bool) -> Path:
    """A 2-step artifact of the real pipeline, its adapter weights then perturbed (seeded)."""
    run(load_recipe(None, [
        f"model.name_or_path={model}", f"model.max_length={MAX_LENGTH}",
        f"model.pooling={pooling}", f"model.normalize={str(normalize).lower()}",
        f"data.train={corpus}", "eval.data=null", f"adapter.kind={kind}", "adapter.top_k=2",
        "train.max_steps=2", "train.batch_size=8", "train.cpu=true", "seed=0",
        f"output_dir={out}",
    ]))
    weights = out / "adapter_model.safetensors"
    generator = torch.Generator().manual_seed(1)
    state = {name: t + 0.05 * torch.randn(t.shape, generator=generator)
             for name, t in load_file(weights).items()}
    save_file(state, weights, metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def artifacts(saved_models, corpus, tmp_path_factory) -> dict[tuple, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {case: train_artifact(saved_models[case[0]], corpus, root / case_id(case), *case[1:])
            for case in CASES}


@pytest.fixture(autouse=True)
def models_dir(saved_models, monkeypatch) -> None:
    """Artifacts name their local base by folder name (tiny-bert): resolve it from here."""
    monkeypatch.chdir(saved_models["bert"].parent)


def st_model(folder: Path):
    return sentence_transformers.SentenceTransformer(str(folder), device="cpu",
                                                     local_files_only=True)


def lastlayer_vectors(target: Path) -> np.ndarray:
    return load_target(target).encode(TEXTS, batch_size=3, progress=False).numpy()


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sentence_transformers_gives_lastlayers_vectors(artifacts, saved_models, tmp_path,
                                                        case):
    arch, kind, pooling, normalize = case
    adapter = artifacts[case]
    result = export_sentence_transformers(adapter, tmp_path / "st")
    assert result.path == tmp_path / "st" and result.texts == 6
    assert result.min_cosine > 0.99999

    expected = lastlayer_vectors(adapter)
    vectors = st_model(result.path).encode(TEXTS, batch_size=3, convert_to_numpy=True)
    assert vectors.shape == expected.shape == (len(TEXTS), 32)
    assert min(cosines(vectors, expected)) > 0.99999
    if not normalize:  # the same vectors, not only the same directions
        np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    # The merge matters: the base alone is off by 100 times the tolerance, or more.
    base = load_encoder(ModelConfig(str(saved_models[arch]), pooling=pooling,
                                    normalize=normalize, max_length=MAX_LENGTH))
    plain = base.encode(TEXTS, batch_size=3, progress=False).numpy()
    assert max(cosines(vectors, plain)) < 0.999


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_folder_says_how_to_embed(artifacts, tmp_path, case):
    arch, kind, pooling, normalize = case
    out = export_sentence_transformers(artifacts[case], tmp_path / "st", verify=False).path
    modules = read_json(out / "modules.json")
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == (
        ["Transformer", "Pooling", "Normalize"] if normalize else ["Transformer", "Pooling"])
    assert modules[0]["path"] == ""  # the merged model sits at the root: AutoModel loads it
    assert (out / "2_Normalize").is_dir() == normalize
    assert read_json(out / "sentence_bert_config.json") == {"max_seq_length": MAX_LENGTH,
                                                            "do_lower_case": False}
    mode = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
            "last": "pooling_mode_lasttoken"}[pooling]
    pooling_config = read_json(out / "1_Pooling" / "config.json")
    assert [k for k, v in pooling_config.items() if v is True] == [mode, "include_prompt"]
    assert pooling_config["word_embedding_dimension"] == 32

    keys = load_file(out / "model.safetensors").keys()
    assert not [k for k in keys if "lora" in k or "ln_tuning" in k or "base_layer" in k]
    assert not list(out.glob("*.bin"))
    marker = read_json(out / MARKER)
    assert marker["artifact"]["name"] == case_id(case) and marker["verified"] is None
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "library_name: sentence-transformers" in card and case_id(case) in card
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in out.rglob("*") if p.is_file())


def test_decoder_tokenization_matches_lastlayers(artifacts, tmp_path):
    # Same ids (special tokens included), right padding with EOS, truncation at max_length.
    adapter = artifacts[("llama", "lora", "last", True)]
    out = export_sentence_transformers(adapter, tmp_path / "st", verify=False).path
    model = st_model(out)
    encoder = load_target(adapter).encoder  # the base, with the artifact's settings
    assert model.max_seq_length == MAX_LENGTH
    assert model.tokenizer.padding_side == "right"
    assert model.tokenizer.pad_token == encoder.tokenizer.pad_token
    ours = encoder.tokenize(TEXTS)
    theirs = model.preprocess(TEXTS)
    assert ours["input_ids"].shape == (len(TEXTS), MAX_LENGTH)
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    assert torch.equal(theirs["attention_mask"], ours["attention_mask"])


def test_full_kind_exports_the_trained_blocks(artifacts, saved_models, tmp_path):
    adapter = artifacts[("bert", "full", "cls", False)]
    out = export_sentence_transformers(adapter, tmp_path / "st", verify=False).path
    exported = load_file(out / "model.safetensors")
    trained = load_file(adapter / "adapter_model.safetensors")
    base = load_file(saved_models["bert"] / "model.safetensors")
    top = "encoder.layer.3.output.dense.weight"
    trained_top = trained["base_model.model.encoder.layer.3.ln_tuning_layers.default"
                          ".output.dense.weight"]
    assert torch.equal(exported[top], trained_top)
    assert not torch.equal(exported[top], base[top])
    bottom = "encoder.layer.1.output.dense.weight"  # below the top 2: the base's
    assert torch.equal(exported[bottom], base[bottom])


def test_lora_exports_w_plus_scaled_ba(artifacts, saved_models, tmp_path):
    adapter = artifacts[("llama", "lora", "last", True)]
    out = export_sentence_transformers(adapter, tmp_path / "st", verify=False).path
    exported = load_file(out / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    base = load_file(saved_models["llama"] / "model.safetensors")
    config = read_json(adapter / "adapter_config.json")
    scale = config["lora_alpha"] / config["r"]
    name = "layers.3.self_attn.q_proj"
    a = lora[f"base_model.model.{name}.lora_A.weight"]
    b = lora[f"base_model.model.{name}.lora_B.weight"]
    torch.testing.assert_close(exported[f"{name}.weight"],
                               base[f"{name}.weight"] + scale * b @ a)
    bottom = "layers.1.self_attn.q_proj.weight"
    assert torch.equal(exported[bottom], base[bottom])


# ---------------------------------------------------------------------------------------
# The command.


def test_cli_exports_checks_and_refuses_to_replace(artifacts, tmp_path, capsys):
    adapter = str(artifacts[("bert", "lora", "mean", True)])
    out = tmp_path / "exported" / "minilm"
    assert main(["export", adapter, "--format", "sentence-transformers", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out}" in printed
    assert float(re.search(r"least cosine (\S+) over 6 texts", printed)[1]) > 0.99999
    assert read_json(out / MARKER)["verified"]["texts"] == 6

    assert main(["export", adapter, str(out)]) == 2
    assert "already holds an export; pass --overwrite" in capsys.readouterr().err
    assert main(["export", adapter, str(out), "--overwrite", "--no-verify"]) == 0
    assert "not checked" in capsys.readouterr().out
    assert read_json(out / MARKER)["verified"] is None  # replaced
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_base_option_loads_the_base_from_a_folder(artifacts, saved_models, tmp_path,
                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # "tiny-llama" no longer resolves from here
    adapter = str(artifacts[("llama", "full", "mean", True)])
    assert main(["export", adapter, str(tmp_path / "a")]) == 2
    assert "cannot load model 'tiny-llama'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["export", adapter, str(tmp_path / "a"), "--base",
                 str(saved_models["llama"])]) == 0


def test_another_base_is_exported_with_a_warning(artifacts, tmp_path, caplog):
    # Other weights than the adapter was trained on: the export still gives lastlayer's
    # vectors on that base, but says the base differs (weights fingerprint).
    adapter = artifacts[("bert", "lora", "mean", True)]
    export_sentence_transformers(adapter, tmp_path / "same", verify=False)
    assert "is not the one it was trained on" not in caplog.text
    other = tmp_path / "tiny-bert-seed1"
    tiny_model("bert", num_layers=4, seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    result = export_sentence_transformers(adapter, tmp_path / "other", base=other)
    assert result.min_cosine > 0.99999
    assert "is not the one it was trained on" in caplog.text


def test_unknown_format_is_refused_by_the_parser(artifacts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(artifacts[CASES[0]]), str(tmp_path / "x"), "--format", "onnx"])
    assert exit_.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


@pytest.fixture
def no_model_loading(monkeypatch):
    """Refusals come before minutes of loading: loading a model fails the test."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(export_module, "adapter_target", fail)


@pytest.mark.parametrize("existing", ["file", "other folder", "artifact"])
def test_outputs_that_are_never_replaced(artifacts, tmp_path, capsys, no_model_loading,
                                         existing):
    adapter = artifacts[CASES[0]]
    out = tmp_path / "out"
    if existing == "file":
        out.write_text("mine", encoding="utf-8")
    elif existing == "other folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine", encoding="utf-8")
    else:
        shutil.copytree(adapter, out)
    before = sorted(p.name for p in ([out] if out.is_file() else out.iterdir()))
    assert main(["export", str(adapter), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "never replaces it" in err and "Choose another output folder" in err
    assert sorted(p.name for p in ([out] if out.is_file() else out.iterdir())) == before


def test_an_empty_output_folder_is_used(artifacts, tmp_path):
    (tmp_path / "out").mkdir()
    result = export_sentence_transformers(artifacts[CASES[0]], tmp_path / "out", verify=False)
    assert (result.path / "modules.json").is_file()


def test_quantized_base_is_refused_with_the_reason(artifacts, tmp_path, capsys,
                                                    no_model_loading):
    adapter = tmp_path / "q"
    shutil.copytree(artifacts[CASES[0]], adapter)
    meta = read_json(adapter / "lastlayer.json")
    meta["base"]["quantization"] = "8bit"
    (adapter / "lastlayer.json").write_text(json.dumps(meta), encoding="utf-8")
    assert main(["export", str(adapter), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "8bit (bitsandbytes) quantized base" in err and "lossy" in err
    assert "model.quantization=null" in err
    assert not (tmp_path / "out").exists()


def test_not_an_artifact_or_a_damaged_one_is_refused(artifacts, saved_models, tmp_path, capsys,
                                                     no_model_loading):
    assert main(["export", str(saved_models["bert"]), str(tmp_path / "out")]) == 2
    assert "is not a lastlayer artifact folder" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    shutil.copytree(artifacts[CASES[0]], damaged)
    (damaged / "adapter_model.safetensors").unlink()
    assert main(["export", str(damaged), str(tmp_path / "out")]) == 2
    assert "adapter_model.safetensors: missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_that_embeds_differently_is_never_written(artifacts, tmp_path, monkeypatch):
    # The check can fail: a folder that pools with CLS for a mean-pooled adapter.
    adapter = artifacts[("bert", "lora", "mean", True)]
    out = export_sentence_transformers(adapter, tmp_path / "st").path
    before = (out / MARKER).read_text(encoding="utf-8")
    real = export_module.sentence_transformers_files

    def wrong_pooling(meta, hidden):
        files = real(meta, hidden)
        files["1_Pooling/config.json"].update(pooling_mode_mean_tokens=False,
                                              pooling_mode_cls_token=True)
        return files

    monkeypatch.setattr(export_module, "sentence_transformers_files", wrong_pooling)
    with pytest.raises(ExportError, match="does not reproduce lastlayer's vectors"):
        export_sentence_transformers(adapter, out, overwrite=True)
    assert (out / MARKER).read_text(encoding="utf-8") == before  # the earlier export stays
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_without_sentence_transformers_the_export_is_written_unchecked(artifacts, tmp_path,
                                                                       monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "sentence_transformers", None)
    result = export_sentence_transformers(artifacts[CASES[0]], tmp_path / "st")
    assert result.min_cosine is None and result.texts == 0
    assert read_json(result.path / MARKER)["verified"] is None
    assert "was not checked" in caplog.text


# ---------------------------------------------------------------------------------------
# The shipped artifacts on real packaged models.


def medical_abstracts(n: int) -> list[str]:
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-l6_lora-top2_crop", "smollm2-135m_lora-top4_crop"])
def test_shipped_medical_artifact_exports_exactly(tmp_path, name):
    adapter = ROOT / "adapters" / "medical" / name
    result = export_sentence_transformers(adapter, tmp_path / "st")
    texts = medical_abstracts(20)  # abstracts are far longer than max_length: truncated
    vectors = st_model(result.path).encode(texts, batch_size=8, convert_to_numpy=True)
    expected = load_target(adapter).encode(texts, batch_size=8, progress=False).numpy()
    assert min(cosines(vectors, expected)) > 0.99999
    assert result.dequantized_gguf == name.startswith("smollm2")
    if result.dequantized_gguf:
        assert "dequantized copy" in (result.path / "README.md").read_text(encoding="utf-8")
