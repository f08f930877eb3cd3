"""``adapter.top_k: auto``: the crop signal, the rule applied to it, training end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.artifacts import artifact_meta

from lastlayer import artifact
from lastlayer.cli import main
from lastlayer.config import ConfigError, load_recipe
from lastlayer.core.adapters import load_target
from lastlayer.evaluation.datasets import load_eval_set
from lastlayer.evaluation.probe import recommend_top_k
from lastlayer.training.choose_k import (
    choose_for_recipe,
    crop_pairs,
    labelled_training_docs,
    pair_retrieval,
)

# The crop signal of tiny BERT (4 layers: 0..4) on 24 training documents of the corpus
# below, seed 0, batches of 8 (48 retrievals: 24 pairs, both ways). A change means the
# signal no longer measures what it did: check why before updating it.
GOLDEN_CROP_CURVE = [17 / 48, 18 / 48, 17 / 48, 17 / 48, 17 / 48]


def auto_recipe(model: Path, corpus: Path, out: Path, *overrides: str):
    return load_recipe(None, [
        f"model.name_or_path={model}", "model.max_length=48", f"data.train={corpus}",
        f"eval.data={corpus}", "eval.max_docs=40", "eval.k=5", "adapter.top_k=auto",
        "adapter.top_k_docs=24", "train.max_steps=2", "train.batch_size=8", "train.lr=1e-3",
        "train.cpu=true", "seed=0", f"output_dir={out}", *overrides,
    ])


# ---------------------------------------------------------------------------------------
# The pieces.


def test_pair_retrieval_counts_own_partner_in_each_batch():
    a = np.eye(4, dtype=np.float32)
    assert pair_retrieval(a, a.copy(), 2) == 1.0
    swapped = a[[1, 0, 2, 3]]  # the first batch's pairs are crossed, the second's right
    assert pair_retrieval(a, swapped, 2) == 0.5
    assert pair_retrieval(a, swapped, 4) == 0.5
    # A lone last row is skipped (nothing to tell it from); both directions count.
    assert pair_retrieval(a[:3], swapped[:3], 2) == 0.0
    with pytest.raises(ValueError, match="two pairs"):
        pair_retrieval(a[:1], a[:1], 2)


def near_identical_pairs(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Unit pairs whose cosines all lie within ~3e-3 of each other (as a raw LM's pooled
    middle-layer states do) but whose own partner is always the nearest row."""
    rng = np.random.default_rng(0)
    common = np.zeros(64, np.float32)
    common[0] = 1.0  # one dominant direction, like a decoder's outlier dimensions
    a = common + 0.005 * rng.standard_normal((n, 64)).astype(np.float32)
    b = a + 0.0005 * rng.standard_normal((n, 64)).astype(np.float32)
    return tuple(x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))


def test_pair_retrieval_stays_float32_inside_a_bf16_autocast():
    """A bf16 training run chooses k inside its autocast; a torch matmul there would round
    the similarities to bf16's 2**-8 steps and tie most pairs (the premise, checked)."""
    import torch

    a, b = near_identical_pairs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = (torch.from_numpy(a) @ torch.from_numpy(b).T).argmax(1)
        inside = pair_retrieval(a, b, 16)
    assert (rounded == torch.arange(16)).float().mean() < 0.5  # bf16 loses partners
    assert inside == pair_retrieval(a, b, 16) == 1.0


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_choose_k_measures_in_the_precision_training_would(saved_models, corpus, tmp_path,
                                                           monkeypatch, mixed_precision):
    """``lastlayer choose-k`` runs the model under the recipe's ``train.mixed_precision``
    autocast, as training's own choice does, so both choose the same k."""
    import torch

    import lastlayer.training.choose_k as choose_k

    seen: list[bool] = []
    real = choose_k.load_encoder

    def spying_encoder(*args, **kwargs):
        encoder = real(*args, **kwargs)
        encoder.model.get_input_embeddings().register_forward_hook(
            lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
        return encoder

    monkeypatch.setattr(choose_k, "load_encoder", spying_encoder)
    choice = choose_for_recipe(auto_recipe(saved_models["bert"], corpus, tmp_path / "o",
                                           f"train.mixed_precision={mixed_precision}"),
                               progress=False)
    assert seen and set(seen) == {mixed_precision == "bf16"}
    assert len(choice.curve) == 5


def test_crop_pairs_are_seeded_distinct_documents_and_real_crops(corpus):
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    a, b = crop_pairs(docs, load_recipe(None, ["data.train=x", "output_dir=y"]).objective,
                      seed=3, num_docs=20)
    again = crop_pairs(docs, load_recipe(None, ["data.train=x", "output_dir=y",
                                                "objective.kind=dropout"]).objective, 3, 20)
    assert (a, b) == again, "a dropout recipe is measured with crops, same seed: same pairs"
    assert len(a) == 20 and a != b
    sources = [next(i for i, d in enumerate(docs) if x in d) for x in a]
    assert len(set(sources)) == 20 and all(y in docs[i] for i, y in zip(sources, b, strict=True))
    objective = load_recipe(None, ["data.train=x", "output_dir=y"]).objective
    assert crop_pairs(docs, objective, 4, 20)[0] != a, "another seed, other pairs"


def test_crop_curve_golden_and_the_rule_applied(saved_models, corpus, tmp_path):
    recipe = auto_recipe(saved_models["bert"], corpus, tmp_path / "out")
    choice = choose_for_recipe(recipe, progress=False)
    assert choice.signal == "crops" and choice.num_documents == 24
    assert choice.num_layers == 4 and len(choice.curve) == 5
    assert choice.curve == pytest.approx(GOLDEN_CROP_CURVE, abs=1e-9)
    assert choice.num_queries == 48  # every crop is one retrieval query
    assert (choice.top_k, choice.plateau_layer) == recommend_top_k(choice.curve, 48)
    # random tiny weights: no layer stands out beyond one standard error, so the plateau
    # is layer 0 and every block is trained
    assert (choice.top_k, choice.plateau_layer, choice.best_layer) == (4, 0, 1)
    assert choice.best_layer == int(np.argmax(choice.curve))
    assert choice.rule.startswith("Heuristic") and choice.seconds >= 0


def test_the_rule_counts_every_crop_as_a_query(saved_models, corpus, tmp_path, monkeypatch):
    """The crop curve goes through the probe's rule with N = 2 x pairs: layer 2 (0.883) is
    within one standard error of the best (0.9) over 256 queries, not over 512."""
    import lastlayer.training.choose_k as choose_k

    curve = [0.5, 0.6, 0.883, 0.6, 0.9]
    monkeypatch.setattr(choose_k, "crop_curve", lambda *args, **kwargs: (curve, 256))
    choice = choose_for_recipe(auto_recipe(saved_models["bert"], corpus, tmp_path / "o"),
                               progress=False)
    assert recommend_top_k(curve, 256) == (3, 2)
    assert (choice.top_k, choice.plateau_layer, choice.num_queries) == (2, 4, 512)
    assert choice.curve == curve and choice.best_layer == 4


# ---------------------------------------------------------------------------------------
# The labelled alternative never sees the held-out sample.


def test_probe_signal_uses_labelled_docs_outside_the_held_out_sample(saved_models, corpus,
                                                                     tmp_path):
    recipe = auto_recipe(saved_models["bert"], corpus, tmp_path / "out",
                         "adapter.top_k_signal=probe", "adapter.top_k_docs=50")
    held_out = load_eval_set(recipe.eval, recipe.seed)
    texts, labels = labelled_training_docs(recipe, held_out, 50)
    assert len(texts) == 50 and len(labels) == 50
    assert not set(texts) & set(held_out.texts)
    choice = choose_for_recipe(recipe, progress=False)
    assert choice.signal == "probe" and choice.num_documents == choice.num_queries == 50
    assert "outside the held-out sample" in choice.measure
    # Every labelled document held out: nothing left to choose on, and the error says so.
    everything = auto_recipe(saved_models["bert"], corpus, tmp_path / "o",
                             "adapter.top_k_signal=probe", "eval.max_docs=null")
    with pytest.raises(ConfigError, match="top_k_signal=crops"):
        labelled_training_docs(everything, load_eval_set(everything.eval, 0), 50)
    without = auto_recipe(saved_models["bert"], corpus, tmp_path / "o",
                          "adapter.top_k_signal=probe", "eval.data=null")
    with pytest.raises(ConfigError, match="labelled eval.data"):
        labelled_training_docs(without, None, 50)


def test_crop_signal_never_reads_held_out_documents(saved_models, corpus, tmp_path,
                                                    monkeypatch):
    import lastlayer.training.choose_k as choose_k

    recipe = auto_recipe(saved_models["bert"], corpus, tmp_path / "out",
                         "adapter.top_k_docs=500")
    held_out = set(load_eval_set(recipe.eval, recipe.seed).texts)
    seen: list[str] = []
    real = choose_k.crop_pairs

    def spy(docs, *args, **kwargs):
        seen.extend(docs)
        return real(docs, *args, **kwargs)

    monkeypatch.setattr(choose_k, "crop_pairs", spy)
    choice = choose_for_recipe(recipe, progress=False)
    assert seen and not set(seen) & held_out
    assert choice.num_documents == 80  # every training document (120 - 40 held out)


# ---------------------------------------------------------------------------------------
# Config, training, artifact.


def test_config_accepts_auto_and_rejects_other_words():
    base = ["data.train=x", "output_dir=y"]
    recipe = load_recipe(None, [*base, "adapter.top_k=auto"])
    assert recipe.adapter.top_k == "auto" and recipe.adapter.top_k_signal == "crops"
    assert load_recipe(None, [*base, "adapter.top_k=3"]).adapter.top_k == 3
    for bad, message in (("adapter.top_k=best", "or auto"), ("adapter.top_k=0", ">= 1"),
                         ("adapter.top_k=true", "or auto"), ("adapter.top_k=2.5", "int or auto"),
                         ("adapter.top_k_signal=labels", "crops, probe"),
                         ("adapter.top_k_docs=0", ">= 1")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(None, [*base, bad])


def test_validate_accepts_auto_without_torch(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "r.yaml"
    path.write_text("data: {train: x.txt}\noutput_dir: out\nadapter: {top_k: auto}\n")
    code = ("import sys; from lastlayer.cli import main; rc = main(['validate', sys.argv[1]]); "
            "assert 'torch' not in sys.modules; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "top-auto" in done.stdout


def test_train_with_auto_records_the_choice(saved_models, corpus, tmp_path, capsys):
    out = tmp_path / "adapters" / "auto"
    path = tmp_path / "auto.yaml"
    path.write_text(auto_recipe(saved_models["llama"], corpus, out).to_yaml())
    assert "top_k: auto" in path.read_text()
    assert main(["train", str(path)]) == 0
    printed = capsys.readouterr().out
    meta = artifact.read(out)
    choice = meta.top_k_choice
    assert choice is not None and choice.signal == "crops"
    assert isinstance(meta.top_k, int) and meta.top_k == choice.top_k
    assert meta.layers.trained_layers == list(range(4 - meta.top_k, 4))
    assert (choice.top_k, choice.plateau_layer) == recommend_top_k(choice.curve, 48)
    assert choice.num_documents == 24 and choice.num_queries == 48
    assert len(choice.curve) == 5
    raw = json.loads((out / "lastlayer.json").read_text())
    assert raw["adapter"]["top_k"] == meta.top_k  # what every existing reader reads
    saved = (out / "recipe.yaml").read_text()
    assert saved.startswith("# adapter.top_k was auto: top_k: auto -> ")
    assert load_recipe(out / "recipe.yaml").adapter.top_k == meta.top_k  # reruns the same k
    assert "Choosing top_k" in printed and "<- plateau" in printed
    assert f"top_k: auto -> {meta.top_k}" in printed
    assert json.loads((out / "eval.json").read_text())["num_documents"] == 40
    assert main(["ls", "--root", str(tmp_path)]) == 0  # lists it, saying k was chosen
    assert f"top-{meta.top_k} (auto: crops)" in capsys.readouterr().out
    # The artifact loads and embeds like any other.
    loaded = load_target(out, name_or_path=str(saved_models["llama"]))
    assert loaded.encode(["a short text."], progress=False).shape[0] == 1


def test_choose_k_cli_prints_the_choice(saved_models, corpus, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    recipe = auto_recipe(saved_models["bert"], corpus, tmp_path / "out")
    path.write_text(recipe.to_yaml())
    assert main(["choose-k", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["curve"] == pytest.approx(GOLDEN_CROP_CURVE, abs=1e-9)
    assert not (tmp_path / "out").exists(), "choosing trains nothing, saves nothing"


def test_old_artifacts_without_a_choice_still_read(tmp_path):
    meta = artifact_meta()
    data = meta.to_dict()
    assert data["top_k_choice"] is None
    data.pop("top_k_choice")  # written before top_k: auto existed
    again = artifact.ArtifactMeta.from_dict(data)
    assert again.top_k_choice is None and again.top_k == 2
    with_choice = {**data, "top_k_choice": {"top_k": 3, "curve": [0.1, 0.2]}}
    assert artifact.ArtifactMeta.from_dict(with_choice).top_k_choice.top_k == 3
    with pytest.raises(artifact.ArtifactError, match="top_k_choice"):
        artifact.ArtifactMeta.from_dict({**data, "top_k_choice": [3]})
