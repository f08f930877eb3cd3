"""Recipes: airtight keys, typed values, closed menus, overrides, shipped recipes valid."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.artifacts import shipped_artifacts
from helpers.data import ROOT

from lastlayer.artifact import nested_strings as artifact_strings  # keys and values, nested
from lastlayer.config import (
    AdapterConfig,
    ConfigError,
    ObjectiveConfig,
    Recipe,
    apply_overrides,
    load_recipe,
    parse_override,
)

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
MINIMAL = ["data.train=corpus.txt", "output_dir=out"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_from_overrides_alone():
    recipe = load_recipe(None, MINIMAL)
    assert recipe.data.train == "corpus.txt"
    assert recipe.objective.kind == "crop" and recipe.objective.temperature == 0.05
    assert recipe.adapter.top_k == 2 and recipe.seed == 42


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.output_dir.startswith("adapters/")
    # adapters/<domain>/<name> mirrors recipes/<domain>/<name>.yaml
    assert Path(recipe.output_dir).parent.name == path.parent.name
    assert Path(recipe.output_dir).name == path.stem
    header = path.read_text().splitlines()
    assert header[0].startswith("#"), "recipes start with a comment header"
    assert any("lastlayer train" in line for line in header if line.startswith("#"))


def _outside_repo(value: str) -> bool:
    """A path that leaves the project folder (a ``..`` part), which users do not have."""
    return not value.startswith("hf://") and ".." in Path(value.replace("\\", "/")).parts


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_recipes_name_data_a_user_can_reach(path):
    import yaml

    data = yaml.safe_load(path.read_text())
    outside = [s for s in artifact_strings(data) if _outside_repo(s)]
    assert not outside, f"{path.name} names paths outside the project: {outside}"
    recipe = load_recipe(path)
    for source in (recipe.data.train, recipe.eval.data):
        if source and not source.startswith("hf://"):  # a file shipped under data/
            assert (ROOT / source).is_file(), f"{path.name}: {source} is not in the project"


def test_the_outside_check_can_fail():
    assert _outside_repo("../shared/data/x.jsonl") and _outside_repo("data/../../x")
    assert not _outside_repo("data/medical.jsonl") and not _outside_repo("hf://a/b?split=x")


def test_shipped_recipes_cover_each_objective_and_adapter_kind():
    recipes = [load_recipe(p) for p in RECIPES]
    assert {r.objective.kind for r in recipes} >= {"crop", "dropout"}
    assert {r.adapter.kind for r in recipes} == {"lora", "full"}


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    path = write(tmp_path, "data: {train: x}\noutput_dir: o\nadapter: {topk: 2}\n")
    with pytest.raises(ConfigError, match=r"unknown key adapter\.topk.*valid keys: .*top_k"):
        load_recipe(path)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key modle"):
        load_recipe(write(tmp_path, "modle: {}\ndata: {train: x}\noutput_dir: o\n"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=ten", r"train\.max_steps must be int"),
        ("train.max_steps=true", r"train\.max_steps must be int"),
        ("adapter.kind=prefix", r"adapter\.kind must be one of lora, full"),
        ("objective.kind=mask", r"objective\.kind must be one of crop, span, dropout"),
        ("model.pooling=max", r"model\.pooling must be one of mean, cls, last"),
        ("model.quantization=3bit", r"model\.quantization must be one of 8bit, 4bit"),
        ("adapter.target_modules=query", r"adapter\.target_modules must be a list"),
        ("adapter.top_k=0", r"adapter\.top_k must be >= 1"),
        ("train.batch_size=1", r"in-batch negatives"),
        ("objective.temperature=0", r"temperature must be > 0"),
        ("train.warmup_ratio=1.5", r"between 0 and 1"),
        ("adapter=3", r"adapter must be a mapping"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [*MINIMAL, override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="only applies to adapter.kind=lora"):
        AdapterConfig(kind="full", target_modules=["query"])
    with pytest.raises(ConfigError, match="max_sentence_chars"):
        ObjectiveConfig(min_sentence_chars=300, max_sentence_chars=200)
    with pytest.raises(ConfigError, match="model_dropout=false .* kind crop or span"):
        ObjectiveConfig(kind="dropout", model_dropout=False)
    with pytest.raises(ConfigError, match="data.train is required"):
        load_recipe(None, ["output_dir=o"])
    with pytest.raises(ConfigError, match="adapter.kind=full cannot train on a 8bit"):
        load_recipe(None, [*MINIMAL, "adapter.kind=full", "model.quantization=8bit"])
    assert load_recipe(None, [*MINIMAL, "model.gguf_file=a.gguf",  # dequantized, then quantized
                              "model.quantization=8bit"]).model.quantization == "8bit"


def test_override_parsing_and_types():
    assert parse_override("train.lr=0.5") == (["train", "lr"], 0.5)
    assert load_recipe(None, [*MINIMAL, "train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 quirk
    assert parse_override("model.quantization=null") == (["model", "quantization"], None)
    assert parse_override("adapter.target_modules=[q_proj, v_proj]")[1] == ["q_proj", "v_proj"]
    recipe = load_recipe(None, [*MINIMAL, "train.lr=1", "seed=7"])
    assert recipe.train.lr == 1.0 and isinstance(recipe.train.lr, float) and recipe.seed == 7
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_overrides_win_over_file(tmp_path):
    path = write(tmp_path, "data: {train: x}\noutput_dir: o\ntrain: {max_steps: 5}\n")
    assert load_recipe(path, ["train.max_steps=9"]).train.max_steps == 9


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(None, [*MINIMAL, "adapter.target_modules=[query]"])
    again = load_recipe(write(tmp_path, recipe.to_yaml()))
    assert again == recipe
    assert isinstance(again, Recipe)


def test_broken_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(write(tmp_path, "a: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lastlayer", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_validate_cli_ok_and_never_imports_torch():
    code = ("import sys; from lastlayer.cli import main; rc = main(['validate', *sys.argv[1:]]);"
            "assert 'torch' not in sys.modules, 'validate imported torch'; raise SystemExit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *map(str, RECIPES)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == len(RECIPES)


def test_validate_cli_reports_bad_recipe_with_exit_2(tmp_path):
    bad = write(tmp_path, "data: {train: x}\noutput_dir: o\ntrain: {max_step: 3}\n")
    done = run_cli("validate", str(bad), str(RECIPES[0]))
    assert done.returncode == 2
    assert "FAIL" in done.stdout and "unknown key train.max_step" in done.stdout


def test_train_cli_config_error_exits_2_without_traceback():
    done = run_cli("train", str(RECIPES[0]), "adapter.kind=prefix")
    assert done.returncode == 2
    assert "adapter.kind must be one of" in done.stderr and "Traceback" not in done.stderr


def test_help_has_examples_for_each_command():
    for command in ("train", "validate", "ls", "env", "probe", "eval"):
        done = run_cli(command, "--help")
        assert done.returncode == 0 and "examples:" in done.stdout


def test_ls_lists_recipes():
    done = run_cli("ls")
    assert done.returncode == 0
    assert "Recipes (" in done.stdout and str(RECIPES[0].relative_to(ROOT)) in done.stdout


PAPER_RECIPES = sorted((ROOT / "recipes").rglob("mpnet-base_*.yaml"))


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: p.name)
def test_paper_recipes_follow_the_papers_protocol(path, monkeypatch):
    """The paper's protocol: mpnet-base, mean pooling, 2-sentence crops of 100-250 chars, tau 0.05,
    batch 64, lr 2e-4 for crops (2e-5 otherwise), 10% warm-up, exactly one epoch."""
    from lastlayer.evaluation.datasets import load_eval_set
    from lastlayer.training.data import training_documents

    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository
    recipe = load_recipe(path)
    assert recipe.model.name_or_path == "microsoft/mpnet-base"
    assert recipe.model.pooling == "mean" and recipe.adapter.kind == "full"
    objective = recipe.objective
    assert (objective.temperature, objective.sentences_per_crop) == (0.05, 2)
    assert (objective.min_sentence_chars, objective.max_sentence_chars) == (100, 250)
    assert recipe.train.batch_size == 64 and recipe.train.warmup_ratio == 0.1
    assert recipe.train.lr == (2e-4 if objective.kind == "crop" else 2e-5)
    assert (recipe.eval.k, recipe.eval.metric) == (10, "euclidean")
    # one epoch over what training actually sees (held-out texts and their duplicates
    # excluded), the last batch partial
    train_docs = len(training_documents(recipe, load_eval_set(recipe.eval, recipe.seed)))
    assert recipe.train.max_steps == -(-train_docs // 64)
    assert recipe.train.cached_pairs == 0 and recipe.train.mixed_precision == "no"


def test_group_by_length_needs_cached_pairs():
    with pytest.raises(ConfigError, match="group_by_length needs train.cached_pairs"):
        load_recipe(None, [*MINIMAL, "train.group_by_length=true"])
    assert load_recipe(None, [*MINIMAL, "train.group_by_length=true",
                              "train.cached_pairs=64"]).train.group_by_length


ARTIFACTS = shipped_artifacts()


@pytest.mark.parametrize("folder", ARTIFACTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_artifacts_match_their_recipes(folder):
    """A committed artifact is what its recipe under recipes/ produces, and says so."""
    import json

    shipped = load_recipe(folder / "recipe.yaml")
    assert shipped.output_dir == str(folder.relative_to(ROOT))
    recipe_file = ROOT / "recipes" / folder.parent.name / f"{folder.name}.yaml"
    recipe, ran = load_recipe(recipe_file).to_dict(), shipped.to_dict()
    for section, key in (("data", "train"), ("eval", "data")):
        if recipe[section][key] != ran[section][key]:
            # Trained on a local copy; the recipe names where users get it (and says so).
            assert recipe[section][key].startswith("hf://"), (section, key)
            assert "--data-root" in recipe_file.read_text()
            recipe[section][key] = ran[section][key]
    assert recipe == ran
    report = json.loads((folder / "eval.json").read_text())
    assert report["num_documents"] == shipped.eval.max_docs
    assert report["delta"]["ci95_low"] <= report["delta"]["delta"] <= report["delta"]["ci95_high"]
    peft = json.loads((folder / "adapter_config.json").read_text())
    assert peft["base_model_name_or_path"] == shipped.model.name_or_path
    assert (folder / "adapter_model.safetensors").stat().st_size < 2 * 2**20  # light


def test_one_decoder_for_recipes_and_artifacts():
    """lastlayer.config.decode: the same rules for a recipe and for lastlayer.json, each
    failing with its own error type and words."""
    from lastlayer.artifact import ArtifactError, Embedding
    from lastlayer.config import RECIPE, ModelConfig, Source, TrainConfig, decode, from_dict

    art = Source(ArtifactError, where="x.json: ", root="the file", mapping="an object")
    with pytest.raises(ArtifactError, match=r"^x\.json: unknown key modle in the file; valid "):
        decode(ModelConfig, {"modle": 1}, art)
    with pytest.raises(ConfigError, match=r"^unknown key modle in the recipe; valid keys: "):
        decode(ModelConfig, {"modle": 1}, RECIPE)
    with pytest.raises(ArtifactError, match=r"^x\.json: missing key pooling\.$"):
        decode(Embedding, {}, art)
    with pytest.raises(ArtifactError, match=r"^x\.json: model must be an object, got 3"):
        decode(ModelConfig, 3, art, "model.")
    # bools are only bools, both ways
    with pytest.raises(ConfigError, match=r"max_length must be int, got True"):
        decode(ModelConfig, {"max_length": True}, RECIPE)
    with pytest.raises(ArtifactError, match=r"normalize must be bool, got 1"):
        decode(ModelConfig, {"normalize": 1}, art)
    with pytest.raises(ConfigError, match=r"train\.lr must be float, got True"):
        from_dict(TrainConfig, {"lr": True}, "train.")
    # ints and number strings are floats where a float is expected (YAML 1.1: 1e-4 is a string)
    assert from_dict(TrainConfig, {"lr": "1e-4"}).lr == 1e-4
    assert from_dict(TrainConfig, {"lr": 1}).lr == 1.0
    # a failed cross-field check comes back as the source's error, naming the file
    with pytest.raises(ArtifactError, match=r"^x\.json: model\.max_length must be"):
        decode(ModelConfig, {"max_length": 0}, art)
