"""Evaluation metrics on hand-made embeddings, BEIR reading, and `evaluate_encoder` end to end."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import medical_sample, write_jsonl
from helpers.tiny import tiny_model, tiny_tokenizer
from scipy.sparse import csr_matrix
from sklearn.metrics import ndcg_score

from lastlayer.config import EvalConfig
from lastlayer.core.encoder import Encoder
from lastlayer.corpus import DataError
from lastlayer.evaluation import suite
from lastlayer.evaluation.datasets import (
    BeirData,
    dataset_kind,
    load_eval_set,
    read_beir,
    read_splits,
)
from lastlayer.evaluation.metrics import (
    METRICS,
    clustering_scores,
    knn_accuracy,
    knn_split_accuracy,
    random_split,
    retrieval_scores,
)
from lastlayer.evaluation.suite import evaluate_encoder, evaluate_paths, format_table, results_json

QRELS_HEADER = "query-id\tcorpus-id\tscore\n"


class LookupEncoder:
    """Stands in for an Encoder: each text's embedding is given; records what it embedded."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=32, progress=True, desc="embed"):
        self.calls.append(list(texts))
        return torch.tensor([self.vectors[t] for t in texts], dtype=torch.float32)


def _beir_folder(
    root: Path, corpus: list[dict], queries: list[dict], qrels: str, split: str = "test"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "corpus.jsonl", corpus)
    write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


def _arc(n: int, step: float = 0.01) -> np.ndarray:
    """n unit vectors at angles 0, step, 2*step, ...: cosine to (1, 0) falls with the index."""
    angles = np.arange(n) * step
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


# ------------------------------------------------------------------------------------- kNN


def test_knn_split_accuracy_hand_made():
    train = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], dtype=float)
    train_labels = ["a", "a", "a", "b", "b", "b"]
    test = np.array([[0.5, 0.5], [10.5, 10.5], [9, 9]], dtype=float)
    result = knn_split_accuracy(train, train_labels, test, ["a", "b", "a"], k=3)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.correct.tolist() == [True, True, False]


def test_knn_split_cosine_differs_from_euclidean():
    # (2, 0.1) is nearest (1, 1) in distance but points the way of (10, 0).
    train, labels, test = np.array([[10.0, 0.0], [1.0, 1.0]]), ["east", "diagonal"], [[2, 0.1]]
    assert knn_split_accuracy(train, labels, np.array(test), ["east"], k=1).accuracy == 0.0
    assert knn_split_accuracy(train, labels, np.array(test), ["east"], 1, "cosine").accuracy == 1


def test_knn_split_needs_k_training_documents():
    with pytest.raises(ValueError, match="at least 3 training"):
        knn_split_accuracy(np.zeros((2, 2)), ["a", "b"], np.zeros((1, 2)), ["a"], k=3)


def test_leave_one_out_knn_still_works():
    vectors = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], dtype=float)
    result = knn_accuracy(vectors, ["a", "a", "a", "b", "b", "b"], k=2)
    assert result.accuracy == 1.0 and result.correct.shape == (6,)


def test_random_split_is_the_seeded_90_10_split():
    train, test = random_split(20)
    assert sorted(test.tolist()) == [0, 17]  # golden: sklearn train_test_split, seed 42
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(20))
    again_train, again_test = random_split(20, seed=42)
    assert train.tolist() == again_train.tolist() and test.tolist() == again_test.tolist()
    assert len(random_split(2888)[1]) == 289
    assert sorted(random_split(20, seed=1)[1].tolist()) != [0, 17]


# ------------------------------------------------------------------------------ clustering


def test_clustering_perfect():
    blobs = np.array([[0, 0], [0, 0.1], [5, 5], [5, 5.1], [-5, 5], [-5, 5.1]], dtype=float)
    scores = clustering_scores(blobs, ["x", "x", "y", "y", "z", "z"])
    assert scores == {"v_measure": pytest.approx(1.0), "ari": pytest.approx(1.0)}


def test_clustering_independent_of_labels():
    # Two clean blobs, each holding the two labels equally: clusters say nothing of labels.
    blobs = np.array([[0, 0], [0, 0.1], [0.1, 0], [0.1, 0.1]] + [[9, 9], [9, 9.1], [9.1, 9],
                                                                 [9.1, 9.1]], dtype=float)
    scores = clustering_scores(blobs, ["p", "q", "p", "q"] * 2)
    assert scores["v_measure"] == pytest.approx(0.0, abs=1e-12)
    assert scores["ari"] == pytest.approx(-1 / 6)  # (4 - 144/28) / (12 - 144/28)


def test_clustering_needs_two_labels():
    with pytest.raises(ValueError, match="at least 2 labels"):
        clustering_scores(np.zeros((3, 2)), ["a", "a", "a"])


# ------------------------------------------------------------------------------- retrieval


def test_retrieval_graded_ndcg_and_recall_by_hand():
    docs = _arc(150)  # query 0 = (1, 0) ranks doc j at place j; query 1 reverses the order
    queries = np.array([[1.0, 0.0], docs[-1] * 3.0])  # norms do not matter: cosine
    relevance = np.zeros((2, 150))
    relevance[0, [0, 10, 120]] = [2, 1, 3]  # ranks 1, 11 (outside @10), 121 (outside @100)
    relevance[1, 149] = 1
    got = retrieval_scores(queries, docs, relevance)

    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    ndcg_q0 = (2 / math.log2(2)) / ideal
    assert got["ndcg@10"] == pytest.approx((ndcg_q0 + 1.0) / 2)
    assert got["recall@100"] == pytest.approx((2 / 3 + 1.0) / 2)
    # ... and the same as scikit-learn on the full score matrix.
    scores = queries @ docs.T
    assert got["ndcg@10"] == pytest.approx(ndcg_score(relevance, scores, k=10))


def test_retrieval_chunks_and_sparse_relevance_agree():
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(130, 8)), rng.normal(size=(7, 8))
    relevance = (rng.random((7, 130)) < 0.05) * rng.integers(1, 4, size=(7, 130))
    relevance[:, 0] = np.maximum(relevance[:, 0], 1)  # every query has a relevant document
    whole = retrieval_scores(queries, docs, relevance)
    assert retrieval_scores(queries, docs, csr_matrix(relevance), chunk_size=3) == pytest.approx(
        whole
    )
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cosine = unit @ (docs / np.linalg.norm(docs, axis=1, keepdims=True)).T
    assert whole["ndcg@10"] == pytest.approx(ndcg_score(relevance, cosine, k=10))


def test_retrieval_refuses_a_query_without_relevant_documents():
    with pytest.raises(ValueError, match="at least one relevant"):
        retrieval_scores(_arc(3), _arc(4), np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0]]))


# ---------------------------------------------------------------------------- BEIR reading


CORPUS = [
    {"_id": "d1", "title": "Wings", "text": "Lift on a wing."},
    {"_id": "d2", "text": "No title here."},  # title is optional
    {"_id": 3, "title": "Numbers", "text": None},  # int id, null text: kept, as "Numbers"
]
QUERIES = [{"_id": "q1", "text": "wing lift"}, {"_id": "q2", "text": "unjudged"},
           {"_id": "q3", "text": "numbers"}]


def test_read_beir(tmp_path):
    qrels = QRELS_HEADER + "q1\td1\t2\nq1\td2\t0\nq3\t3\t1\n"
    beir = read_beir(_beir_folder(tmp_path / "b", CORPUS, QUERIES, qrels))
    assert beir == BeirData(
        doc_ids=["d1", "d2", "3"],
        docs=["Wings Lift on a wing.", "No title here.", "Numbers"],
        query_ids=["q1", "q3"],  # q2 has no qrels
        queries=["wing lift", "numbers"],
        qrels={"q1": {"d1": 2, "d2": 0}, "q3": {"3": 1}},
    )


def test_read_beir_gz_and_other_split(tmp_path):
    folder = _beir_folder(tmp_path / "b", CORPUS, QUERIES, QRELS_HEADER + "q1\td1\t1\n", "dev")
    (folder / "corpus.jsonl").rename(folder / "x")
    write_jsonl(folder / "corpus.jsonl.gz", CORPUS)
    assert read_beir(folder, split="dev").qrels == {"q1": {"d1": 1}}
    with pytest.raises(DataError, match=r"no qrels/test.tsv \(qrels splits here: dev\)"):
        read_beir(folder)


def test_read_beir_drops_unknown_ids_with_a_warning(tmp_path, caplog):
    qrels = QRELS_HEADER + "q1\td1\t1\nq1\tgone\t1\nq9\td1\t1\n"
    with caplog.at_level(logging.WARNING, logger="lastlayer.data"):
        beir = read_beir(_beir_folder(tmp_path / "b", CORPUS, QUERIES, qrels))
    assert beir.qrels == {"q1": {"d1": 1}} and beir.query_ids == ["q1"]
    assert "1 query id(s)" in caplog.text and "1 document id(s)" in caplog.text


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "message"),
    [
        ([{"title": "t", "text": "x"}], QUERIES, QRELS_HEADER, "corpus.jsonl line 1: no field"),
        (CORPUS, [{"_id": "q1"}], QRELS_HEADER, r"queries.jsonl line 1: no field 'text'"),
        (CORPUS[:1] * 2, QUERIES, QRELS_HEADER, "duplicate _id 'd1'"),
        ([{"_id": "d", "text": 5}], QUERIES, QRELS_HEADER, "'text' holds a int"),
        (CORPUS, QUERIES, "q1\td1\t1\n", "line 1: expected the header 'query-id<TAB>corpus-id"),
        (CORPUS, QUERIES, QRELS_HEADER + "q1 d1 1\n", r"line 2: expected query-id<TAB>"),
        (CORPUS, QUERIES, QRELS_HEADER + "q1\td1\thigh\n", "integer score"),
        (CORPUS, QUERIES, QRELS_HEADER + "q9\td1\t1\n", "no judged query"),
    ],
)
def test_read_beir_errors(tmp_path, corpus, queries, qrels, message):
    with pytest.raises(DataError, match=message):
        read_beir(_beir_folder(tmp_path / "b", corpus, queries, qrels))


def test_read_beir_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        read_beir(tmp_path / "nowhere")
    folder = _beir_folder(tmp_path / "b", CORPUS, QUERIES, QRELS_HEADER)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="no queries.jsonl"):
        read_beir(folder)


def test_dataset_kind(tmp_path):
    folder = _beir_folder(tmp_path / "b", CORPUS, QUERIES, QRELS_HEADER + "q1\td1\t1\n")
    assert dataset_kind(folder) == "beir"
    assert dataset_kind(write_jsonl(tmp_path / "l.jsonl", [{"text": "t", "label": "a"}])) == (
        "labelled"
    )
    (tmp_path / "plain").mkdir()
    assert dataset_kind(tmp_path / "plain") == "labelled"  # read_labelled explains the rest
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="looks like a BEIR folder but has no queries.jsonl"):
        dataset_kind(folder)


def test_read_splits(tmp_path):
    records = [{"text": "a", "label": "x", "split": "train"}, {"text": " ", "label": "x",
               "split": "test"}, {"text": "b", "label": "y", "split": "test"}]
    assert read_splits(write_jsonl(tmp_path / "s.jsonl", records)) == ["train", "test"]
    no_split = write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": "x"}])
    assert read_splits(no_split) is None
    csv_file = tmp_path / "s.csv"
    csv_file.write_text("text,label,part\na,x,train\nb,y,test\n", encoding="utf-8")
    assert read_splits(csv_file, split_field="part") == ["train", "test"]
    assert read_splits(csv_file) is None


# ------------------------------------------------------------------- evaluate_encoder


def _labelled(n_per_class: int, split: bool) -> tuple[list[dict], dict[str, list[float]]]:
    """Two classes on two rays; the i-th document of a class sits at distance i along it."""
    records, vectors = [], {}
    for label, direction in (("up", (0.0, 1.0)), ("right", (1.0, 0.0))):
        for i in range(n_per_class):
            text = f"{label} {i}"
            records.append({"text": text, "label": label,
                            **({"split": "test" if i % 3 == 0 else "train"} if split else {})})
            vectors[text] = [direction[0] * (i + 1), direction[1] * (i + 1)]
    return records, vectors


def test_evaluate_labelled_uses_the_data_sets_own_split(tmp_path, monkeypatch):
    records, vectors = _labelled(12, split=True)
    records.append({"text": "extra", "label": "up", "split": "all"})  # not in kNN, clustered
    vectors["extra"] = [0.0, 5.0]
    data = write_jsonl(tmp_path / "own.jsonl", records)
    encoder = LookupEncoder(vectors)
    sizes = []

    def knn_spy(train_x, train_y, test_x, test_y, *args):
        sizes.append((len(train_y), len(test_y)))
        return knn_split_accuracy(train_x, train_y, test_x, test_y, *args)

    monkeypatch.setattr(suite, "knn_split_accuracy", knn_spy)
    got = evaluate_encoder(encoder, data, k=3)
    assert sizes == [(16, 8)]  # i % 3 == 0 is test: 4 + 4; "extra" is in neither
    assert list(got) == ["knn_accuracy", "knn_accuracy_train_test", "v_measure", "ari",
                         "protocol"]
    assert got["knn_accuracy"] == 1.0 and got["knn_accuracy_train_test"] == 1.0
    assert got["v_measure"] == pytest.approx(1.0) and got["ari"] == pytest.approx(1.0)
    assert encoder.calls == [[r["text"] for r in records]]
    assert got["protocol"] == (
        "knn_accuracy: k=3, euclidean, leave-one-out over all 25 documents; "
        "knn_accuracy_train_test: k=3, euclidean, fit on 16, scored on 8 (the data set's own "
        "train/test split); v_measure, ari: k-means, one cluster per label (2), n_init=10, "
        "seed 42, over the same 25 documents")

    # Flip the labels of the train documents: a train->test kNN must now be all wrong, while
    # leave-one-out over all 25 documents counts each one against its flipped neighbours.
    flipped = [dict(r, label={"up": "right", "right": "up"}[r["label"]])
               if r["split"] == "train" else r for r in records]
    data = write_jsonl(tmp_path / "flipped.jsonl", flipped)
    got = evaluate_encoder(encoder, data, k=3, clustering=False)
    x = np.array([vectors[r["text"]] for r in flipped])
    loo = knn_accuracy(x, [r["label"] for r in flipped], k=3).accuracy
    assert got["knn_accuracy_train_test"] == 0.0
    assert got["knn_accuracy"] == pytest.approx(loo) and 0.0 < loo < 1.0


def test_evaluate_labelled_random_split_is_the_papers(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"text": f"doc {i}", "label": "abc"[i % 3]} for i in range(40)]
    vectors = {r["text"]: rng.normal(size=4).tolist() for r in records}
    got = evaluate_encoder(LookupEncoder(vectors), write_jsonl(tmp_path / "r.jsonl", records),
                           k=5, metric="cosine", clustering=False)
    train, test = random_split(40, 0.1, 42)
    x, y = np.array([vectors[r["text"]] for r in records]), [r["label"] for r in records]
    expected = knn_split_accuracy(x[train], [y[i] for i in train], x[test],
                                  [y[i] for i in test], k=5, metric="cosine")
    loo = knn_accuracy(x, y, k=5, metric="cosine")
    assert expected.accuracy != loo.accuracy, "the two protocols must be told apart here"
    assert got == {"knn_accuracy": pytest.approx(loo.accuracy),
                   "knn_accuracy_split_90_10": pytest.approx(expected.accuracy),
                   "protocol": "knn_accuracy: k=5, cosine, leave-one-out over all 40 documents; "
                   "knn_accuracy_split_90_10: k=5, cosine, fit on 36, scored on 4 (a 90%/10% "
                   "random split, seed 42)"}
    # A split field with only one value is no train/test split: the random split is used.
    one_split = [dict(r, split="test") for r in records]
    assert evaluate_encoder(LookupEncoder(vectors), write_jsonl(tmp_path / "t.jsonl", one_split),
                            k=5, metric="cosine", clustering=False) == got


def test_evaluate_labelled_max_docs_and_errors(tmp_path):
    records, vectors = _labelled(30, split=False)
    data = write_jsonl(tmp_path / "m.jsonl", records)
    encoder = LookupEncoder(vectors)
    got = evaluate_encoder(encoder, data, max_docs=20, clustering=False, split_seed=3)
    assert len(encoder.calls[0]) == 20
    # The sample is training's held-out sample (load_eval_set) for the same data and seed.
    held_out = load_eval_set(EvalConfig(data=str(data), max_docs=20), seed=3)
    assert encoder.calls[0] == held_out.texts
    assert "leave-one-out over a seeded sample (seed 3) of 20 of 60 documents" in got["protocol"]
    with pytest.raises(DataError, match="needs more than 10 documents; 10 were read"):
        evaluate_encoder(encoder, data, max_docs=10)
    with pytest.raises(DataError, match="at least 10 training"):
        evaluate_encoder(encoder, data, max_docs=11)
    one_label = write_jsonl(tmp_path / "one.jsonl", [dict(r, label="x") for r in records])
    with pytest.raises(DataError, match="at least 2 labels"):
        evaluate_encoder(encoder, one_label)
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate_encoder(encoder, data, metric="manhattan")


def test_evaluate_beir_scores_only_judged_queries(tmp_path, caplog):
    corpus = [{"_id": f"d{j}", "title": "", "text": f"doc {j}"} for j in range(120)]
    queries = [{"_id": "first", "text": "q first"}, {"_id": "unjudged", "text": "q unjudged"},
               {"_id": "last", "text": "q last"}, {"_id": "zero", "text": "q zero"}]
    qrels = QRELS_HEADER + "first\td0\t2\nfirst\td11\t1\nlast\td119\t1\nzero\td5\t0\n"
    folder = _beir_folder(tmp_path / "beir", corpus, queries, qrels)
    arc = _arc(120)
    vectors = {f"doc {j}": arc[j].tolist() for j in range(120)}
    vectors |= {"q first": [1.0, 0.0], "q last": arc[-1].tolist()}
    encoder = LookupEncoder(vectors)
    with caplog.at_level(logging.WARNING, logger="lastlayer.evaluation.suite"):
        got = evaluate_encoder(encoder, folder)
    assert "1 judged quer(ies) without a relevant document" in caplog.text
    ndcg_first = 2 / (2 + 1 / math.log2(3))  # d0 at rank 1, d11 at rank 12 (outside @10)
    assert got == {"ndcg@10": pytest.approx((ndcg_first + 1) / 2), "recall@100": 1.0,
                   "protocol": "ndcg@10, recall@100: cosine ranking of all 120 documents for 2 "
                   "judged queries of qrels/test.tsv"}
    assert encoder.calls[1] == ["q first", "q last"]  # the unjudged queries are not embedded

    # max_docs keeps every judged document, plus seeded random others.
    encoder = LookupEncoder(vectors)
    small = evaluate_encoder(encoder, folder, max_docs=10)
    embedded = encoder.calls[0]
    assert len(embedded) == 10 and {"doc 0", "doc 11", "doc 119"} <= set(embedded)
    assert small["recall@100"] == 1.0
    assert "a corpus sample of 10 documents keeping every judged one (seed 42)" in small["protocol"]


def test_format_table_and_json():
    results = {"data/med.jsonl.gz": {"knn_accuracy": 0.61234, "knn_accuracy_split_90_10": 0.6,
                                     "v_measure": 0.3, "ari": 0.2,
                                     "protocol": "knn_accuracy: LOO; v_measure, ari: k-means"},
               "data/own.jsonl": {"knn_accuracy": 0.5, "knn_accuracy_train_test": 0.25,
                                  "protocol": "own split"},
               "shared/scifact": {"ndcg@10": 0.645, "recall@100": 0.925}}
    lines = format_table(results).splitlines()
    table, protocols = lines[:4], lines[4:]
    assert table[0].split() == ["data", "knn_accuracy", "knn_accuracy_split_90_10",
                                "knn_accuracy_train_test", "v_measure", "ari", "ndcg@10",
                                "recall@100"]
    assert table[1].split() == ["data/med.jsonl.gz", "0.6123", "0.6000", "-", "0.3000",
                                "0.2000", "-", "-"]
    assert table[2].split() == ["data/own.jsonl", "0.5000", "-", "0.2500", "-", "-", "-", "-"]
    assert table[3].split() == ["shared/scifact", "-", "-", "-", "-", "-", "0.6450", "0.9250"]
    assert len({len(line) for line in table}) == 1  # aligned
    assert protocols == ["", "data/med.jsonl.gz:", "  knn_accuracy: LOO",
                         "  v_measure, ari: k-means", "data/own.jsonl:", "  own split"]
    assert results_json(results) == results
    assert results_json({"x": {"ndcg@10": 0.5}}) == {"ndcg@10": 0.5}
    assert set(METRICS) == set(table[0].split()[1:])


def test_evaluate_tiny_bert_end_to_end(tmp_path):
    encoder = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer(), max_length=32)
    words = {"up": "the cell grows in the body", "right": "a market sells the stock price"}
    records = [{"text": f"{words[label]} {i}", "label": label, "split": ("train", "test")[i % 2]}
               for label in words for i in range(12)]
    labelled = write_jsonl(tmp_path / "tiny.jsonl", records)
    corpus = [{"_id": str(j), "title": f"title {j}", "text": f"{words['up']} {j}"}
              for j in range(12)]
    queries = [{"_id": "a", "text": "cell body"}, {"_id": "b", "text": "stock price"}]
    beir = _beir_folder(tmp_path / "beir", corpus, queries, QRELS_HEADER + "a\t1\t1\nb\t2\t2\n")
    results = evaluate_paths(encoder, [labelled, beir], k=3, progress=False)
    assert list(results) == [str(labelled), str(beir)]
    assert list(results[str(labelled)]) == ["knn_accuracy", "knn_accuracy_train_test",
                                            "v_measure", "ari", "protocol"]
    assert list(results[str(beir)]) == ["ndcg@10", "recall@100", "protocol"]
    assert 0.0 <= results[str(labelled)]["knn_accuracy"] <= 1.0
    assert 0.0 < results[str(beir)]["ndcg@10"] <= 1.0
    assert results[str(beir)]["recall@100"] == 1.0  # 12 documents: all are retrieved
    assert evaluate_encoder(encoder, labelled, k=3, progress=False) == results[str(labelled)]
    assert "tiny.jsonl" in format_table(results)


def test_eval_cli_json_and_errors(saved_models, tmp_path, capsys):


    from lastlayer.cli import main

    data = medical_sample(tmp_path / "labelled.jsonl", docs=40)
    assert main(["eval", str(saved_models["bert"]), "--data", str(data), "--json", "--k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"knn_accuracy", "knn_accuracy_split_90_10", "v_measure", "ari",
                           "protocol"}
    assert 0.0 <= result["knn_accuracy"] <= 1.0
    assert result["protocol"].startswith("knn_accuracy: k=3, euclidean, leave-one-out over all "
                                         "40 documents")
    assert main(["eval", str(saved_models["bert"]), "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["eval", "nobody/nothing-here", "--data", str(data)]) == 2
    assert "cannot load model" in capsys.readouterr().err


# ------------------------------------------------ one inference path: eval.json, eval, Embedder


def test_eval_json_equals_lastlayer_eval_and_the_embedder(saved_models, tmp_path, capsys,
                                                          monkeypatch):
    """An artifact's eval.json (measured in training) is what ``lastlayer eval`` and the
    ``Embedder`` (its heads unmerged, and merged as it loads them by default) give for it:
    the same held-out sample, the same protocol, the same heads on the engine."""

    from lastlayer import train  # the public API: wherever training's modules live
    from lastlayer.cli import main
    from lastlayer.config import load_recipe
    from lastlayer.evaluation.datasets import load_eval_set
    from lastlayer.inference import Embedder

    data = medical_sample(tmp_path / "medical.jsonl", docs=90)
    out = tmp_path / "adapter"
    recipe = load_recipe(None, [
        f"model.name_or_path={saved_models['bert']}", "model.max_length=32",
        f"data.train={data}", f"eval.data={data}", "eval.max_docs=40", "eval.k=5",
        "eval.batch_size=8", "adapter.kind=lora", "adapter.top_k=2", "train.max_steps=3",
        "train.batch_size=8", "train.lr=0.01", "train.cpu=true", "train.routing_docs=0",
        "seed=3", f"output_dir={out}",
    ])
    train(recipe)
    saved = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    capsys.readouterr()

    monkeypatch.chdir(saved_models["bert"].parent)  # the artifact names its base "tiny-bert"
    assert main(["eval", str(out), "--data", str(data), "--json", "--no-clustering",
                 "--batch-size", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["knn_accuracy"] == saved["adapted"]["knn_accuracy"]
    assert main(["eval", "tiny-bert", "--data", str(data), "--json", "--no-clustering",
                 "--batch-size", "8", "--k", "5", "--max-docs", "40", "--seed", "3",
                 "--max-length", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["knn_accuracy"] == saved["base"]["knn_accuracy"]

    held_out = load_eval_set(recipe.eval, recipe.seed)
    embedder = Embedder("tiny-bert", device="cpu", max_length=32)
    embedder.load(out, name="unmerged", merge=False)
    embedder.load(out, name="merged")
    for name in ("unmerged", "merged"):
        vectors = embedder.encode(held_out.texts, adapter=name, batch_size=8).vectors
        got = knn_accuracy(vectors, held_out.labels, 5, "euclidean").accuracy
        assert got == saved["adapted"]["knn_accuracy"], name
