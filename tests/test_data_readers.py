"""Tests for TextStore and the training-file readers."""

from __future__ import annotations

import gzip
import json
import pickle
import random
from pathlib import Path

import pytest
import torch

from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.readers import (
    TRAIN_FORMATS,
    ColbertIdsReader,
    iter_examples,
    make_reader,
)
from colbert_lightning.data.text_store import TextStore, UnknownIdError


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def beir(record_id: str | int, text: str, title: str | None = None) -> str:
    record = {"_id": record_id, "text": text}
    if title is not None:
        record["title"] = title
    return json.dumps(record)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[TextStore, TextStore]:
    queries = write_lines(tmp_path / "queries.tsv", ["q1\twhat is a wing", "q2\tflutter"])
    collection = write_lines(
        tmp_path / "collection.tsv",
        ["p1\twings lift", "p2\tflutter shakes", "p3\tnothing", "p4\tmore nothing", "p5\t  "],
    )
    return TextStore(queries), TextStore(collection)


def assert_bad_line(error: pytest.ExceptionInfo, path: Path, line: int, words: str) -> None:
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message, message


# ---------------------------------------------------------------- TextStore


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_text_store_beir(tmp_path: Path, name: str) -> None:
    path = write_lines(
        tmp_path / name,
        [beir("d1", "first text", "Title"), beir(2, "second text"), beir("d3", "", "")],
    )
    store = TextStore(path, cache_dir=tmp_path / "cache")
    assert len(store) == 3
    assert store["d1"] == "Title first text"
    assert store["2"] == "second text" and store[2] == "second text"
    assert store["d3"] == ""  # an empty text is the caller's business
    assert list(store.ids()) == ["d1", "2", "d3"]
    assert "d1" in store and "d9" not in store
    with pytest.raises(UnknownIdError, match="'d9' is not in") as error:
        store["d9"]
    assert isinstance(error.value, KeyError)


def test_text_store_tsv_with_title_column(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "collection.tsv", ["0\tsome text\tA Title", "1\tplain text"])
    store = TextStore(path)
    assert store["0"] == "A Title some text"
    assert store["1"] == "plain text"


def test_text_store_gz_cache_is_reused(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "queries.tsv.gz", ["q1\tone", "q2\ttwo"])
    first = TextStore(path, cache_dir=tmp_path / "cache")
    second = TextStore(path, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert first["q2"] == second["q2"] == "two"


def test_text_store_pickles(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "corpus.jsonl.gz", [beir(f"d{i}", f"text {i}") for i in range(50)]
    )
    store = TextStore(path)
    assert store["d7"] == "text 7"  # opens the handle, which must not travel
    copy = pickle.loads(pickle.dumps(store))
    assert copy["d42"] == "text 42"
    assert len(copy) == 50


def test_text_store_many_ids_all_found(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.tsv", [f"{i}\tpassage {i}" for i in range(3000)])
    store = TextStore(path)
    assert all(store[str(i)] == f"passage {i}" for i in range(0, 3000, 7))
    assert list(store.ids()) == [str(i) for i in range(3000)]


@pytest.mark.parametrize(
    ("name", "lines", "line", "words"),
    [
        ("c.jsonl", [beir("a", "x"), "{not json"], 2, "bad JSON"),
        ("c.jsonl", [beir("a", "x"), json.dumps({"_id": "b"})], 2, "missing field 'text'"),
        ("c.jsonl", [json.dumps({"text": "x"})], 1, "missing field '_id'"),
        ("c.tsv", ["a\tx", "b\tx\ty\tz"], 2, "found 4"),
        ("c.tsv", ["a\tx", "b"], 2, "found 1"),
        ("c.tsv", ["a\tx", b"b\t\xff\xfe"], 2, "invalid UTF-8"),
        ("c.tsv", ["a\tx", "", "b\ty"], 2, "empty line"),
        ("c.tsv", ["a\tx", "b\ty", "a\tz"], 3, "duplicate id 'a' (first at line 1)"),
        ("c.jsonl", [beir(1, "x"), beir("2", "y"), beir("1", "z")], 3, "duplicate id '1'"),
    ],
)
def test_text_store_bad_lines(
    tmp_path: Path, name: str, lines: list[str | bytes], line: int, words: str
) -> None:
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(DataFormatError) as error:
        TextStore(path)
    assert_bad_line(error, path, line, words)
    bad_lines = BadLines("skip")
    store = TextStore(path, bad_lines=bad_lines)
    assert bad_lines.total == 1
    assert len(store) == len(lines) - 1


def test_text_store_keeps_first_of_duplicates_and_ignores_trailing_blank_lines(
    tmp_path: Path,
) -> None:
    path = write_lines(tmp_path / "c.tsv", ["a\tfirst", "a\tsecond", "b\tthird", "", ""])
    store = TextStore(path, bad_lines=BadLines("skip"))
    assert store["a"] == "first"
    assert list(store.ids()) == ["a", "b"]


def test_text_store_unknown_format(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.txt", ["a\tx"])
    with pytest.raises(ValueError, match="cannot tell the format"):
        TextStore(path)
    assert TextStore(path, fmt="tsv")["a"] == "x"


# ---------------------------------------------------------------- readers


def test_jsonl_reader(tmp_path: Path) -> None:
    record = {"query": "q", "positive": "p", "negatives": ["n1", "n2"]}
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(record)] * 2)
    examples = list(iter_examples(make_reader("jsonl", path)))
    assert [number for number, _ in examples] == [1, 2]
    example = examples[1][1]
    assert (example.query, example.positive, example.negatives) == ("q", "p", ("n1", "n2"))
    assert example.source == f"{path}:2"


def test_colbert_ids_reader(tmp_path: Path, stores: tuple[TextStore, TextStore]) -> None:
    queries, collection = stores
    path = write_lines(
        tmp_path / "train.jsonl", ['["q1", "p1", "p2", "p3"]', '["q2", ["p2", 9.5], ["p1", 3.0]]']
    )
    reader = make_reader("colbert_ids", path, queries, collection, min_negatives=1)
    assert isinstance(reader, ColbertIdsReader)
    (_, first), (_, second) = iter_examples(reader)
    assert first.query == "what is a wing"
    assert first.positive == "wings lift"
    assert first.negatives == ("flutter shakes", "nothing")
    assert (second.query, second.positive, second.negatives) == (
        "flutter",
        "flutter shakes",
        ("wings lift",),
    )


def test_colbert_ids_reader_integer_ids(tmp_path: Path) -> None:
    queries = TextStore(write_lines(tmp_path / "q.tsv", ["7\tseven"]))
    collection = TextStore(write_lines(tmp_path / "c.tsv", ["1\tone", "2\ttwo"]))
    path = write_lines(tmp_path / "train.jsonl", ["[7, 1, 2]"])
    [(_, example)] = iter_examples(make_reader("colbert_ids", path, queries, collection))
    assert (example.query, example.positive, example.negatives) == ("seven", "one", ("two",))


def test_msmarco_ids_reader(tmp_path: Path, stores: tuple[TextStore, TextStore]) -> None:
    path = write_lines(tmp_path / "triples.tsv", ["q1\tp1\tp3", "q2\tp2\tp4"])
    reader = make_reader("msmarco_ids", path, *stores)
    [(_, first), (_, second)] = iter_examples(reader)
    assert (first.query, first.positive, first.negatives) == (
        "what is a wing",
        "wings lift",
        ("nothing",),
    )
    assert second.negatives == ("more nothing",)


def test_msmarco_text_reader(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "triples.tsv.gz", ["a query\ta positive\ta negative"])
    [(number, example)] = iter_examples(make_reader("msmarco_text", path))
    assert number == 1
    assert (example.query, example.positive, example.negatives) == (
        "a query",
        "a positive",
        ("a negative",),
    )


GOOD_JSONL = json.dumps({"query": "q", "positive": "p", "negatives": ["n"]})


@pytest.mark.parametrize(
    ("fmt", "bad", "words"),
    [
        ("jsonl", '{"query": "q", ', "bad JSON"),
        ("jsonl", json.dumps({"query": "q", "negatives": ["n"]}), "missing field 'positive'"),
        (
            "jsonl",
            json.dumps({"query": 3, "positive": "p", "negatives": ["n"]}),
            "must be a string",
        ),
        ("jsonl", json.dumps({"query": "q", "positive": "p", "negatives": "n"}), "list of strings"),
        (
            "jsonl",
            json.dumps({"query": " ", "positive": "p", "negatives": ["n"]}),
            "empty text for the query",
        ),
        (
            "jsonl",
            json.dumps({"query": "q", "positive": "p", "negatives": ["n", ""]}),
            "negative #2",
        ),
        (
            "jsonl",
            json.dumps({"query": "q", "positive": "p", "negatives": []}),
            "needs at least 1 negatives, has 0",
        ),
        ("jsonl", b'{"query": "q\xc3", "positive": "p", "negatives": ["n"]}', "invalid UTF-8"),
        ("jsonl", "", "empty line"),
        ("msmarco_text", "q\tp", "expected 3 tab-separated columns"),
        ("msmarco_text", "q\tp\tn\tx", "found 4"),
        ("msmarco_text", "q\t\tn", "empty text for the positive"),
        ("msmarco_ids", "q1\tp1\tp9", "unknown passage id 'p9'"),
        ("msmarco_ids", "q9\tp1\tp2", "unknown query id 'q9'"),
        ("msmarco_ids", "q1\tp1\tp5", "empty text for the negative passage 'p5'"),
        ("msmarco_ids", "q1\tp1", "found 2"),
        ("colbert_ids", '["q1", "p1"]', "needs at least 1 negatives, has 0"),
        ("colbert_ids", '{"q": 1}', "expected a JSON list"),
        ("colbert_ids", '["q1", "p1", null]', "must be a non-empty string or an integer"),
        ("colbert_ids", '["q1", "p1", "p404"]', "unknown passage id 'p404' (not in"),
    ],
)
def test_reader_bad_lines(
    tmp_path: Path,
    stores: tuple[TextStore, TextStore],
    fmt: str,
    bad: str | bytes,
    words: str,
) -> None:
    good = {
        "jsonl": GOOD_JSONL,
        "msmarco_text": "q\tp\tn",
        "msmarco_ids": "q1\tp1\tp2",
        "colbert_ids": '["q1", "p1", "p2"]',
    }[fmt]
    path = write_lines(tmp_path / "train.data", [good, good, bad, good])
    id_stores = stores if fmt in ("msmarco_ids", "colbert_ids") else (None, None)
    reader = make_reader(fmt, path, *id_stores)
    with pytest.raises(DataFormatError) as error:
        list(iter_examples(reader))
    assert_bad_line(error, path, 3, words)
    bad_lines = BadLines("skip")
    assert [number for number, _ in iter_examples(reader, bad_lines)] == [1, 2, 4]
    assert bad_lines.total == 1


def test_reader_min_negatives(tmp_path: Path) -> None:
    record = {"query": "q", "positive": "p", "negatives": ["n1", "n2"]}
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(record)])
    with pytest.raises(DataFormatError, match=":1: needs at least 3 negatives, has 2"):
        list(iter_examples(make_reader("jsonl", path, min_negatives=3)))


def test_make_reader_errors(tmp_path: Path, stores: tuple[TextStore, TextStore]) -> None:
    path = write_lines(tmp_path / "train.tsv", ["q\tp\tn"])
    with pytest.raises(ValueError, match="unknown training data format 'csv'") as error:
        make_reader("csv", path)
    assert all(fmt in str(error.value) for fmt in TRAIN_FORMATS)
    with pytest.raises(ValueError, match="needs both a queries and a collection"):
        make_reader("msmarco_ids", path, queries=stores[0])
    with pytest.raises(ValueError, match="takes no queries or collection"):
        make_reader("msmarco_text", path, *stores)
    with pytest.raises(ValueError, match="one negative per line"):
        make_reader("msmarco_text", path, min_negatives=2)
    with pytest.raises(FileNotFoundError, match="no such training file"):
        make_reader("jsonl", tmp_path / "missing.jsonl")


# ---- TextCap: enormous texts shortened on read, the tokens kept unchanged ------------------

CAP_WORDS = (
    "wing lift drag shock boundary-layer laminar turbulent Émile naïve Σίσυφος ΟΔΟΣ 机翼 升力 "
    "don't x-ray 3.5 (supersonic) flow, heat; ´acute ﬁne ½ résumé"
).split()


def cap_text_of(shape: str) -> str:
    generator = random.Random(shape)
    words = [generator.choice(CAP_WORDS) for _ in range(6000)]
    if shape == "prose":
        return " ".join(words)
    if shape == "whitespace runs":
        runs = [" ", "  ", "\t", "\n", " \u3000 ", "\xa0", " \r\n "]
        return "".join(word + generator.choice(runs) for word in words)
    if shape == "words of over 100 letters":  # one [UNK] each, 150 characters per token
        return " ".join("x" * generator.randint(101, 200) for _ in range(2000)) + " " + words[0]
    if shape == "characters the tokenizer drops":  # the first cut holds no token at all
        return "\u200b\u0301 " * 10_000 + " ".join(words)
    assert shape == "one long word"
    return "w" * 40_000


@pytest.fixture(scope="module")
def colbert_tokenizer():
    from colbert_lightning.modeling.tokenization import ColBERTTokenizer, load_tokenizer
    from tests.conftest import tiny_config

    config = tiny_config(query_maxlen=32, doc_maxlen=180)
    return ColBERTTokenizer(load_tokenizer(config), config)


@pytest.mark.parametrize(
    "shape",
    [
        "prose",
        "whitespace runs",
        "words of over 100 letters",
        "characters the tokenizer drops",
        "one long word",
    ],
)
def test_text_cap_keeps_the_tokens_the_model_keeps(colbert_tokenizer, shape: str) -> None:
    from colbert_lightning.data.collate import TextCap

    cap = TextCap(colbert_tokenizer)
    text = cap_text_of(shape)
    query, document = cap.query(text), cap.document(text)
    assert text.startswith(query) and text.startswith(document)
    if shape == "one long word":  # no space to cut at
        assert query == document == text
    else:
        assert len(query) <= len(document) < len(text)
    assert torch.equal(
        colbert_tokenizer.queries([query]).input_ids, colbert_tokenizer.queries([text]).input_ids
    )
    shortened = colbert_tokenizer.documents([document]).input_ids
    assert torch.equal(shortened, colbert_tokenizer.documents([text]).input_ids)


def test_text_cap_leaves_short_texts_alone(colbert_tokenizer) -> None:
    from colbert_lightning.data.collate import TextCap

    cap = TextCap(colbert_tokenizer)
    text = " ".join(CAP_WORDS)
    assert cap.query(text) is text and cap.document(text) is text
