"""BEIR loading (plain and gzipped, malformed lines) and BM25 triple preparation on Cranfield."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from colbert_lightning.data.beir import (
    find_beir_file,
    load_candidates,
    load_corpus,
    load_dev_set,
    load_qrels,
    load_queries,
)
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.negatives import prepare_triples, split_dev_queries
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.bm25 import BM25Retriever

CRANFIELD = Path(resource_path("cranfield"))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as output:
        output.write("\n".join(lines) + "\n")
    return path


def make_collection(root: Path, gzipped: bool = False) -> Path:
    suffix = ".jsonl.gz" if gzipped else ".jsonl"
    write_lines(
        root / f"corpus{suffix}",
        [
            json.dumps({"_id": "d1", "title": "Wings", "text": "lift and drag"}),
            json.dumps({"_id": "d2", "title": "", "text": "shock waves"}),
            json.dumps({"_id": "d3", "title": "", "text": ""}),
        ],
    )
    write_lines(
        root / f"queries{suffix}",
        [json.dumps({"_id": "q1", "text": "lift"}), json.dumps({"_id": "q2", "text": "shock"})],
    )
    write_lines(
        root / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td2\t0"]
    )
    return root


@pytest.mark.parametrize("gzipped", [False, True])
def test_load_collection(tmp_path: Path, gzipped: bool) -> None:
    root = make_collection(tmp_path, gzipped)
    corpus_path = find_beir_file(root, "corpus")
    assert corpus_path.name.endswith(".gz") == gzipped
    corpus = load_corpus(corpus_path)
    assert corpus.ids == ["d1", "d2", "d3"]
    assert corpus.texts == ["Wings lift and drag", "shock waves", ""]
    assert corpus.empty_count == 1
    assert load_queries(find_beir_file(root, "queries")) == {"q1": "lift", "q2": "shock"}
    assert load_qrels(root / "qrels" / "test.tsv") == {"q1": {"d1": 2, "d2": 0}}
    dev = load_dev_set(corpus_path, find_beir_file(root, "queries"), root / "qrels" / "test.tsv")
    assert dev.queries == {"q1": "lift"}  # only judged queries
    assert dev.qrels == {"q1": {"d1": 2, "d2": 0}}


def test_candidates_trec_and_tsv(tmp_path: Path) -> None:
    root = make_collection(tmp_path)
    run = write_lines(tmp_path / "run.trec", ["q1 Q0 d2 2 1.5 bm25", "q1 Q0 d1 1 2.0 bm25"])
    dev = load_dev_set(
        root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "test.tsv", run
    )
    assert dev.candidates == {"q1": ["d1", "d2"]}
    pairs = write_lines(tmp_path / "pairs.tsv", ["q1\td2", "q1\td3", "q2\td1"])
    assert load_candidates(pairs) == {"q1": ["d2", "d3"], "q2": ["d1"]}
    bad = write_lines(tmp_path / "bad.tsv", ["q1\td9"])
    with pytest.raises(DataFormatError, match="unknown corpus id"):
        load_candidates(bad, doc_ids={"d1"})


def test_find_beir_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        find_beir_file(tmp_path, "corpus")


def test_shipped_cranfield_loads() -> None:
    dev = load_dev_set(
        find_beir_file(CRANFIELD, "corpus"),
        find_beir_file(CRANFIELD, "queries"),
        CRANFIELD / "qrels" / "test.tsv",
    )
    assert len(dev.corpus_ids) == 1400 and len(dev.queries) == 225
    assert sum(len(judged) for judged in dev.qrels.values()) == 1837
    assert sum(g > 0 for judged in dev.qrels.values() for g in judged.values()) == 1612
    assert load_corpus(find_beir_file(CRANFIELD, "corpus")).empty_count == 2


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"_id": "d9", "text": "x"', "bad JSON"),
        ('{"_id": "d9"}', "missing field 'text'"),
        ('{"text": "x"}', "missing field '_id'"),
        ('{"_id": "d1", "text": "again"}', "duplicate id 'd1'"),
        ('["d9", "x"]', "JSON object"),
        ("", "empty line"),  # a blank line is an error unless only blank lines follow it
    ],
)
def test_malformed_corpus_line(tmp_path: Path, line: str, problem: str) -> None:
    good = [json.dumps({"_id": "d1", "text": "ok"}), json.dumps({"_id": "d2", "text": "ok"})]
    path = write_lines(
        tmp_path / "corpus.jsonl.gz", [*good, line, json.dumps({"_id": "d3", "text": "ok"})]
    )
    with pytest.raises(DataFormatError, match=problem) as raised:
        load_corpus(path)
    assert raised.value.line == 3
    assert str(raised.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("q1\td1", "3 tab-separated columns"),
        ("q1\td1\thigh", "must be an integer"),
        ("q9\td1\t1", "unknown query id 'q9'"),
        ("q1\td9\t1", "unknown corpus id 'd9'"),
        ("q1\td1\t1", "judged twice"),
    ],
)
def test_malformed_qrels_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write_lines(tmp_path / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", line])
    with pytest.raises(DataFormatError, match=problem) as raised:
        load_qrels(path, query_ids={"q1"}, doc_ids={"d1"})
    assert str(raised.value).startswith(f"{path}:3: ")


def test_qrels_header_required(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "test.tsv", ["q1\td1\t1"])
    with pytest.raises(DataFormatError, match="header"):
        load_qrels(path)


def test_dev_split_is_deterministic_and_disjoint() -> None:
    query_ids = [str(i) for i in range(100)]
    train, dev = split_dev_queries(query_ids, 10, seed=3)
    assert len(dev) == 10 and not set(train) & set(dev) and len(train) + len(dev) == 100
    assert set(split_dev_queries(list(reversed(query_ids)), 10, seed=3)[1]) == set(dev)
    assert len(split_dev_queries(query_ids, 0.25, seed=3)[1]) == 25
    assert set(split_dev_queries(query_ids, 10, seed=4)[1]) != set(dev)
    with pytest.raises(ValueError, match="dev queries"):
        split_dev_queries(query_ids, 101, seed=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    output_dir = tmp_path_factory.mktemp("prepared")
    result = prepare_triples(CRANFIELD, "test", output_dir, dev_queries=50, show_progress=False)
    return result


def read_qrels_ids(path: str) -> set[str]:
    return set(load_qrels(path))


def test_prepare_outputs(prepared) -> None:
    assert not prepared.cached
    counts = prepared.counts
    assert counts["dev_queries"] == 50 and counts["train_queries"] == 175
    train_ids, dev_ids = read_qrels_ids(prepared.train_qrels), read_qrels_ids(prepared.dev_qrels)
    assert len(train_ids) == 175 and len(dev_ids) == 50 and not train_ids & dev_ids

    qrels = load_qrels(CRANFIELD / "qrels" / "test.tsv")
    assert load_qrels(prepared.dev_qrels) == {query_id: qrels[query_id] for query_id in dev_ids}
    corpus = load_corpus(find_beir_file(CRANFIELD, "corpus"))
    text_of = dict(zip(corpus.ids, corpus.texts, strict=True))
    queries = load_queries(find_beir_file(CRANFIELD, "queries"))
    rankings = BM25Retriever(corpus.ids, corpus.texts, show_progress=False).search(
        {query_id: queries[query_id] for query_id in train_ids}, k=100
    )
    lines = Path(prepared.triples).read_text(encoding="utf-8").splitlines()
    assert len(lines) == counts["triples"] > 0
    for line in lines:
        record = json.loads(line)
        query_id, positive_id = record["qid"], record["pid"]
        assert query_id in train_ids
        assert qrels[query_id][positive_id] > 0
        assert record["query"] == queries[query_id] and record["positive"] == text_of[positive_id]
        assert 0 < len(record["neg_ids"]) <= 8
        assert len(set(record["neg_ids"])) == len(record["neg_ids"])
        window = {doc_id for doc_id, _ in rankings[query_id][9:100]}
        for negative_id, negative in zip(record["neg_ids"], record["negatives"], strict=True):
            assert qrels[query_id].get(negative_id, 0) <= 0  # never judged relevant
            assert negative_id in window  # BM25 ranks 10..100 only
            assert negative == text_of[negative_id] and negative.strip()
    manifest = json.loads(Path(prepared.manifest).read_text())
    assert manifest["parameters"]["min_rank"] == 10 and manifest["counts"] == counts


def test_prepare_is_deterministic_and_cached(prepared, tmp_path: Path) -> None:
    again = prepare_triples(CRANFIELD, "test", tmp_path, dev_queries=50, show_progress=False)
    for name in ("triples", "train_qrels", "dev_qrels"):
        assert Path(getattr(again, name)).read_bytes() == Path(getattr(prepared, name)).read_bytes()
    cached = prepare_triples(CRANFIELD, "test", tmp_path, dev_queries=50, show_progress=False)
    assert cached.cached and cached.counts == again.counts
    # Different parameters: the cache does not apply.
    other = prepare_triples(
        CRANFIELD,
        "test",
        tmp_path,
        dev_queries=50,
        seed=1,
        negatives_per_positive=2,
        show_progress=False,
    )
    assert not other.cached and other.counts["dev_queries"] == 50


def test_prepare_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_rank"):
        prepare_triples(CRANFIELD, "test", tmp_path, min_rank=50, max_rank=10)
    with pytest.raises(FileNotFoundError, match="splits found"):
        prepare_triples(CRANFIELD, "train", tmp_path)


def test_prepare_skips_empty_positives_and_composes_from_config(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
    from colbert_lightning.prepare import prepare, summary

    root = make_collection(tmp_path / "collection")
    write_lines(
        root / "qrels" / "test.tsv",
        ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td3\t1", "q2\td2\t1"],
    )
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "prepare",
            overrides=[
                f"root={root}",
                f"output_dir={tmp_path / 'out'}",
                "dev_queries=1",
                "min_rank=1",
                "max_rank=3",
            ],
        )
    result = prepare(cfg)
    train_id = next(iter(load_qrels(result.train_qrels)))
    records = [json.loads(line) for line in Path(result.triples).read_text().splitlines()]
    if train_id == "q1":  # d3 is relevant but empty: skipped; d2 is the only usable negative
        assert result.counts["skipped_empty_positives"] == 1
        assert [(r["pid"], r["neg_ids"]) for r in records] == [("d1", ["d2"])]
    else:
        assert [(r["pid"], sorted(r["neg_ids"])) for r in records] == [("d2", ["d1"])]
    assert "1 train, 1 dev" in summary(result)
