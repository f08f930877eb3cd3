"""The command line's parser: flags generated from ``lastlayer.config.commands``, one module
per command, and ``eval`` and ``probe`` reading an adapter's protocol the same way."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml
from helpers.data import MEDICAL, ROOT

from lastlayer.cli import COMMANDS, build_parser, main
from lastlayer.cli.flags import add_options, to_options
from lastlayer.config import EvalConfig, Recipe
from lastlayer.config.commands import ServeOptions, ServeSettings

SHIPPED = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
# the least each command needs to parse (its required flags and positionals)
REQUIRED = {
    "train": ["r.yaml"], "validate": ["r.yaml"], "ls": [], "env": [], "eval": ["T", "--data", "d"],
    "choose-k": ["r.yaml"], "probe": ["T"], "embed": ["--model", "m", "--input", "i",
                                                     "--output", "o.npy"],
    "export": ["A", "OUT"], "serve": ["--model", "m"], "push": ["A", "o/n"],
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_has_a_module_with_help_examples_and_options():
    assert set(REQUIRED) == set(COMMANDS) == set(subparsers())
    for name, module in COMMANDS.items():
        assert module.HELP and module.EXAMPLES.startswith("examples:"), name
        assert dataclasses.is_dataclass(module.Options) and callable(module.run), name
        assert "examples:" in subparsers()[name].format_help()


def test_every_field_has_exactly_one_argument_and_nothing_else():
    for name, parser in subparsers().items():
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        assert dests == {f.name for f in dataclasses.fields(COMMANDS[name].Options)}, name


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_defaults_come_from_the_dataclass(name):
    options = to_options(COMMANDS[name].Options,
                         build_parser().parse_args([name, *REQUIRED[name]]))
    given = {a.dest for a in subparsers()[name]._actions if a.required
             or (not a.option_strings and a.nargs != "*")}
    for item in dataclasses.fields(options):
        if item.name in given:
            continue
        default = (item.default_factory() if item.default is dataclasses.MISSING
                   else item.default)
        assert getattr(options, item.name) == default, (name, item.name)


def test_menus_are_the_literal_types_and_are_enforced(capsys):
    checked = 0
    for name, parser in subparsers().items():
        hints = typing.get_type_hints(COMMANDS[name].Options)
        for action in parser._actions:
            literal = [h for h in (hints.get(action.dest), *typing.get_args(
                hints.get(action.dest))) if typing.get_origin(h) is Literal]
            assert (action.choices is not None) == bool(literal), (name, action.dest)
            if not literal:
                continue
            assert list(action.choices) == list(typing.get_args(literal[0]))
            with pytest.raises(SystemExit) as stop:
                build_parser().parse_args([name, *REQUIRED[name], action.option_strings[0],
                                           "not-on-the-menu"])
            assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err
            checked += 1
    assert checked >= 6  # eval/probe metric, embed dtype/quantization, export, serve x2


def test_serve_defaults_are_the_servers():
    server = pytest.importorskip("lastlayer.inference.server")
    assert server.ServeSettings is ServeSettings  # re-exported where it used to live
    for item in dataclasses.fields(ServeSettings):
        if item.name in {f.name for f in dataclasses.fields(ServeOptions)}:
            assert getattr(ServeOptions(model="m"), item.name) == item.default, item.name


def test_serve_flags_reach_the_servers_settings(saved_models, monkeypatch, capsys):
    """Every limit given on the command line is the one the server runs with."""
    server = pytest.importorskip("lastlayer.inference.server")
    seen = {}
    monkeypatch.setattr(server, "serve", lambda embedder, settings, **kw: seen.update(
        settings=settings, **kw))
    from lastlayer.cli import main

    assert main(["serve", "--model", str(saved_models["bert"]), "--encode-batch-size", "8",
                 "--workers", "1", "--max-batch", "32", "--batch-window-ms", "2",
                 "--port", "0"]) == 0
    settings = seen["settings"]
    assert (settings.encode_batch_size, settings.workers, settings.max_batch,
            settings.batch_window_ms) == (8, 1, 32, 2.0)
    assert seen["port"] == 0 and "Serving" in capsys.readouterr().out


def test_generator_types_flags_groups_and_refusals():
    @dataclasses.dataclass(kw_only=True)
    class Options:
        path: str = dataclasses.field(metadata={"positional": True})
        size: int | None = None
        rate: float = 0.5
        tags: list[str] = dataclasses.field(default_factory=list, metadata={
            "flags": ("--tag", "-t")})
        loud: bool = dataclasses.field(default=False, metadata={"group": "g"})
        quiet: bool = dataclasses.field(default=False, metadata={"group": "g"})

    parser = argparse.ArgumentParser()
    add_options(parser, Options)
    got = to_options(Options, parser.parse_args(["p", "--size", "3", "-t", "a", "--tag", "b",
                                                 "--loud"]))
    assert got == Options(path="p", size=3, tags=["a", "b"], loud=True)
    assert to_options(Options, parser.parse_args(["p"])) == Options(path="p")
    with pytest.raises(SystemExit):
        parser.parse_args(["p", "--loud", "--quiet"])

    @dataclasses.dataclass
    class OnByDefault:
        on: bool = True

    @dataclasses.dataclass
    class Unknown:
        where: Path = Path(".")

    for bad in (OnByDefault, Unknown):
        with pytest.raises(TypeError):
            add_options(argparse.ArgumentParser(), bad)


@pytest.fixture
def adapter_with_protocol(tmp_path) -> Path:
    """A copy of a shipped artifact whose recipe measures with its own k, metric, seed,
    sample and fields."""
    folder = tmp_path / "adapter"
    shutil.copytree(SHIPPED, folder)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["eval"].update(k=3, metric="cosine", max_docs=50, text_field="body",
                          label_field="topic")
    recipe["seed"] = 7
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def _capture_eval_and_probe(monkeypatch) -> dict[str, dict]:
    """Replace the measuring library functions by ones that record how they were called."""
    import lastlayer.core.adapters
    import lastlayer.evaluation.probe
    import lastlayer.evaluation.suite

    calls: dict[str, dict] = {}

    def evaluate_encoder(encoder, data, **kwargs):
        calls["eval"] = kwargs
        return {}

    def probe(target, data, **kwargs):
        calls["probe"] = {"data": data, **kwargs}
        return {}

    monkeypatch.setattr(lastlayer.core.adapters, "load_target", lambda *a, **k: object())
    monkeypatch.setattr(lastlayer.evaluation.suite, "evaluate_encoder", evaluate_encoder)
    monkeypatch.setattr(lastlayer.evaluation.suite, "format_table", lambda results: "")
    monkeypatch.setattr(lastlayer.evaluation.probe, "probe", probe)
    monkeypatch.setattr(lastlayer.evaluation.probe, "format_probe", lambda result: "")
    monkeypatch.setattr(lastlayer.evaluation.probe, "write_probe", lambda r, out: (out, out))
    return calls


PROTOCOL = ("k", "metric", "max_docs", "text_field", "label_field")


def test_eval_and_probe_read_an_adapters_protocol_the_same_way(adapter_with_protocol,
                                                               monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")  # probe asks for the plot extra first
    calls = _capture_eval_and_probe(monkeypatch)
    out = str(tmp_path / "probe")
    assert main(["eval", str(adapter_with_protocol), "--data", str(MEDICAL)]) == 0
    assert main(["probe", str(adapter_with_protocol), "--data", str(MEDICAL), "--out", out]) == 0
    expected = {"k": 3, "metric": "cosine", "max_docs": 50, "text_field": "body",
                "label_field": "topic"}
    assert {key: calls["eval"][key] for key in PROTOCOL} == expected
    assert {key: calls["probe"][key] for key in PROTOCOL} == expected
    assert calls["eval"]["split_seed"] == calls["probe"]["seed"] == 7

    # the command line wins, for both alike
    flags = ["--k", "5", "--metric", "euclidean", "--max-docs", "40", "--seed", "1",
             "--text-field", "text", "--label-field", "label"]
    assert main(["eval", str(adapter_with_protocol), "--data", str(MEDICAL), *flags]) == 0
    assert main(["probe", str(adapter_with_protocol), "--data", str(MEDICAL), "--out", out,
                 *flags]) == 0
    given = {"k": 5, "metric": "euclidean", "max_docs": 40, "text_field": "text",
             "label_field": "label"}
    assert {key: calls["eval"][key] for key in PROTOCOL} == given
    assert {key: calls["probe"][key] for key in PROTOCOL} == given
    assert calls["eval"]["split_seed"] == calls["probe"]["seed"] == 1

    # no --data: probe measures on the recipe's own eval data
    assert main(["probe", str(adapter_with_protocol), "--out", out]) == 0
    recipe = yaml.safe_load((adapter_with_protocol / "recipe.yaml").read_text())
    assert calls["probe"]["data"] == recipe["eval"]["data"]


def test_a_base_model_is_measured_with_the_recipe_defaults(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    calls = _capture_eval_and_probe(monkeypatch)
    base = tmp_path / "base"  # a local model folder (not an artifact)
    base.mkdir()
    assert main(["eval", str(base), "--data", str(MEDICAL)]) == 0
    assert main(["probe", str(base), "--data", str(MEDICAL), "--out", str(tmp_path)]) == 0
    defaults = {"k": EvalConfig.k, "metric": EvalConfig.metric,
                "text_field": EvalConfig.text_field, "label_field": EvalConfig.label_field}
    for command in ("eval", "probe"):
        assert {key: calls[command][key] for key in defaults} == defaults
    assert calls["eval"]["split_seed"] == calls["probe"]["seed"] == Recipe.seed
    assert calls["eval"]["max_docs"] is None  # eval: every document of a base model's data
    assert calls["probe"]["max_docs"] == EvalConfig.max_docs  # probe: a sample (per layer)
