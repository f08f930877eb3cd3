"""Property-based tests (Hypothesis): the recipe and override parsers, every corpus reader,
the view makers.

- any override text is parsed or refused with a ConfigError; any recipe file (any bytes)
  and any set of overrides gives a Recipe or a ConfigError, and a Recipe survives its own
  ``to_yaml``;
- any bytes under any corpus suffix give documents (non-empty, stripped strings) or a
  DataError, never another exception;
- every view is a substring of its document, within the maker's bounds, and the two views
  of ``crop`` / ``span`` are drawn independently.

``max_examples`` stays modest so the suite stays fast; ``HYPOTHESIS_PROFILE=thorough`` runs
many more.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import random
import re
import typing
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lastlayer.config import ConfigError, Recipe, load_recipe, parse_override
from lastlayer.corpus import DataError, read_labelled, read_texts, read_with_ids
from lastlayer.training.views import crop_views, dropout_views, span_views, split_sentences

settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# ---------------------------------------------------------------------------------------
# Recipe and overrides.


def recipe_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key a recipe has (``train.max_steps``, ``seed``, ...)."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += recipe_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


KEYS = recipe_keys()
REQUIRED = ["data.train=corpus.jsonl", "output_dir=out"]  # what a recipe must set
yaml_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3),
    st.sampled_from(["auto", "lora", "full", "crop", "span", "dropout", "mean", "bf16",
                     "x.jsonl", "hf://a/b", "[", "{a: 1}", "- a", "!!python/object:os.system"]),
)


def as_override(key: str, value) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


@given(st.text(max_size=60))
def test_any_override_text_parses_or_is_a_config_error(text):
    try:
        path, _ = parse_override(text)
    except ConfigError:
        return
    assert path and all(isinstance(part, str) for part in path)


@given(st.lists(st.tuples(st.sampled_from(KEYS), yaml_values), max_size=6))
def test_any_overrides_give_a_recipe_or_a_config_error(pairs):
    overrides = [*REQUIRED, *(as_override(k, v) for k, v in pairs)]
    try:
        recipe = load_recipe(None, overrides)
    except ConfigError:
        return
    assert isinstance(recipe, Recipe) and recipe.to_yaml()


def plausible(default) -> st.SearchStrategy:
    """Values of the default's type (most of them valid), to reach valid recipes."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 64)
    if isinstance(default, float):
        return st.floats(0.0, 1.0)
    return st.sampled_from([default, None, "auto", "x.jsonl", "some text: with colon",
                            "'quoted'", "#hash"])


DEFAULTS = dataclasses.asdict(load_recipe(None, REQUIRED))


def default_of(key: str):
    node = DEFAULTS
    for part in key.split("."):
        node = node[part]
    return node


plausible_overrides = st.lists(
    st.sampled_from(KEYS).flatmap(lambda k: plausible(default_of(k)).map(lambda v: (k, v))),
    max_size=5)


@settings(suppress_health_check=list(HealthCheck))
@given(plausible_overrides)
def test_a_recipe_survives_its_own_yaml(tmp_path_factory, pairs):
    overrides = [*REQUIRED, *(as_override(k, v) for k, v in pairs)]
    try:
        recipe = load_recipe(None, overrides)
    except ConfigError:
        assume(False)
    path = tmp_path_factory.mktemp("r") / "recipe.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    assert load_recipe(path) == recipe


@given(st.text(max_size=200))
def test_any_recipe_text_gives_a_recipe_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("r") / "recipe.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_recipe(path, REQUIRED)
    except ConfigError:
        pass


def test_a_recipe_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"seed: \x80\n")
    with pytest.raises(ConfigError, match="recipe.yaml"):
        load_recipe(path, REQUIRED)


# ---------------------------------------------------------------------------------------
# Corpus readers.

SUFFIXES = [".txt", ".jsonl", ".csv", ".txt.gz", ".jsonl.gz", ".csv.gz", ".parquet"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["text", "label", "id", "x"]),
                                            inner, max_size=4)),
    max_leaves=8,
)
jsonl_text = st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)),
                      max_size=8).map("\n".join)
csv_text = st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=3), max_size=6).map(
    lambda rows: "\n".join(",".join(row) for row in rows))
contents = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    jsonl_text.map(str.encode), csv_text.map(lambda t: ("text,label\n" + t).encode()),
)


def write(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def check_documents(texts: list) -> None:
    assert texts and all(isinstance(t, str) and t and t == t.strip() for t in texts)


@pytest.mark.parametrize("suffix", SUFFIXES)
@given(data=contents, compress=st.booleans())
@example(data=b"1" * 5000, compress=False)  # past Python's int-parsing limit
@example(data=b"[" * 10**5 + b"]" * 10**5, compress=False)  # past the recursion limit
@example(data=b'{"text": "\\ud800"}', compress=False)  # a lone surrogate
@example(data=b"text\n\x00\n", compress=True)  # NUL: a binary file
@example(data=b"\xff\xfet\x00", compress=False)  # UTF-16
def test_any_bytes_give_documents_or_a_data_error(tmp_path_factory, suffix, data, compress):
    path = write(tmp_path_factory.mktemp("c") / f"corpus{suffix}", data,
                 compress and suffix.endswith(".gz"))
    for read in (lambda: read_texts(path), lambda: read_labelled(path)[0],
                 lambda: read_with_ids(path)[1]):
        try:
            texts = read()
        except DataError:
            continue
        check_documents(texts)


@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), min_size=1, max_size=10),
       st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=5)),
                min_size=1,
                max_size=10))
def test_any_parquet_columns_give_documents_or_a_data_error(tmp_path_factory, texts, labels):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = min(len(texts), len(labels))
    label_col = labels[:n] if all(isinstance(x, (int, type(None))) for x in labels[:n]) \
        else [None if x is None else str(x) for x in labels[:n]]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts[:n], "label": label_col}), buffer)
    path = tmp_path_factory.mktemp("c") / "corpus.parquet"
    path.write_bytes(buffer.getvalue())
    for read in (lambda: read_texts(path), lambda: read_labelled(path)[0]):
        try:
            check_documents(read())
        except DataError:
            pass


# ---------------------------------------------------------------------------------------
# View makers.

WORD = re.compile(r"\S+")
documents = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=1500)
sentences = st.lists(st.text("abcdefgh XYZ", min_size=1, max_size=80), min_size=1,
                     max_size=30).map(lambda parts: ". ".join(p.strip().capitalize() or "A"
                                                             for p in parts) + ".")


@given(st.one_of(documents, sentences), st.integers(0, 2**32), st.integers(1, 3),
       st.integers(10, 120), st.integers(0, 200))
def test_crops_are_substrings_within_bounds(doc, seed, per_crop, min_chars, extra):
    assume(doc.strip())
    max_chars = min_chars + extra
    units = split_sentences(doc, min_chars, max_chars)
    assert all(u and u in doc and len(u) <= max_chars for u in units)
    a, b = crop_views(doc, random.Random(seed), per_crop, min_chars, max_chars)
    words = len(WORD.findall(doc))
    for view in (a, b):
        assert view and view in doc and view == view.strip()
        if len(units) >= per_crop + 1:  # sentence crops: per_crop whole units
            assert any(view.startswith(units[i]) and view.endswith(units[i + per_crop - 1])
                       for i in range(len(units) - per_crop + 1))
        else:  # word-span fallback: at most half of the first 256 words
            assert 1 <= len(WORD.findall(view)) <= max(1, int(min(words, 256) * 0.5))
    view, same = dropout_views(doc, random.Random(seed), per_crop, min_chars, max_chars)
    assert view is same and view in doc and view.strip()


@given(documents, st.integers(0, 2**32), st.floats(0.05, 1.0), st.floats(0.0, 1.0),
       st.integers(1, 300))
def test_spans_are_substrings_within_bounds(doc, seed, low, width, max_words):
    assume(doc.strip())
    high = low + (1 - low) * width
    n = min(len(WORD.findall(doc)), max_words)
    for view in span_views(doc, random.Random(seed), low, high, max_words):
        assert view in doc and view == view.strip()
        assert max(1, int(n * low)) <= len(WORD.findall(view)) <= max(1, int(n * high))


def test_two_views_are_drawn_independently():
    """Over many draws, the two crops' positions are independent and uniform."""
    doc = " ".join(f"Sentence number {i} is here, with enough words to be a unit." for i in
                   range(12))
    units = split_sentences(doc, 40, 80)
    starts = len(units) - 1  # crops of 2 units
    assert starts >= 8
    rng, pairs = random.Random(0), Counter()
    position = {doc[doc.index(units[i]):].split(units[i + 1])[0]: i for i in range(starts)}
    draws = 4000
    for _ in range(draws):
        a, b = crop_views(doc, rng, 2, 40, 80)
        pairs[(next(i for p, i in position.items() if a.startswith(p)),
               next(i for p, i in position.items() if b.startswith(p)))] += 1
    expected = draws / starts**2
    chi2 = sum((pairs[(i, j)] - expected) ** 2 / expected
               for i in range(starts) for j in range(starts))
    dof = starts**2 - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5  # far from any dependence (p << 1e-5)
    same = sum(pairs[(i, i)] for i in range(starts)) / draws
    assert abs(same - 1 / starts) < 0.03
    spans = [span_views(doc, rng) for _ in range(500)]
    assert sum(a == b for a, b in spans) < 50  # span views, too, are two separate draws


# ---------------------------------------------------------------------------------------
# The artifact reader: any lastlayer.json gives an ArtifactMeta or an ArtifactError.

SHIPPED_META = json.loads((Path(__file__).parent.parent / "adapters" / "medical"
                           / "minilm-l6_lora-top2_crop" / "lastlayer.json").read_text())
any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=10,
)


def _paths(value, prefix=()):
    """Every key path of a nested mapping (the places a mutation may hit)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (*prefix, key)
            yield from _paths(inner, (*prefix, key))


META_PATHS = list(_paths(SHIPPED_META))


def _read_meta(data) -> None:
    from lastlayer.artifact import ArtifactError, ArtifactMeta

    try:
        meta = ArtifactMeta.from_dict(data, "lastlayer.json")
    except ArtifactError:
        return
    assert isinstance(meta, ArtifactMeta)


@settings(suppress_health_check=list(HealthCheck))
@given(any_json)
def test_any_json_gives_an_artifact_meta_or_an_artifact_error(data):
    _read_meta(data)


@settings(suppress_health_check=list(HealthCheck))
@given(st.sampled_from(META_PATHS), st.one_of(any_json, st.just(DELETE := object())))
def test_a_valid_lastlayer_json_with_one_value_changed_reads_or_is_refused(path, value):
    """The shipped MiniLM artifact's metadata with one value replaced (or its key deleted)."""
    data = json.loads(json.dumps(SHIPPED_META))
    *parents, last = path
    holder = data
    for key in parents:
        holder = holder[key]
    if value is DELETE:
        del holder[last]
    else:
        holder[last] = value
    _read_meta(data)
