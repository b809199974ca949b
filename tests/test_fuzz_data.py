"""Fuzz-style: every reader meets corrupted lines and either parses them or names file and line."""

from __future__ import annotations

import json
import random

import pytest
import torch

from colbert_lightning.data import ColBERTDataModule, TrainFiles
from colbert_lightning.data.collate import Collator
from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.readers import iter_examples, make_reader
from colbert_lightning.data.text_store import TextStore
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, load_tokenizer
from colbert_lightning.training.run import train
from tests.conftest import tiny_config
from tests.helpers import TINY_OVERRIDES, compose_train, triples_with_cranfield_dev

LINES = 40


def good_lines(fmt: str) -> list[bytes]:
    lines = []
    for i in range(LINES):
        if fmt == "jsonl":
            record = {"query": f"query {i}", "positive": f"doc {i}", "negatives": [f"doc {i + 1}"]}
            lines.append(json.dumps(record).encode())
        elif fmt == "msmarco_text":
            lines.append(f"query {i}\tdoc {i}\tdoc {i + 1}".encode())
        elif fmt == "msmarco_ids":
            lines.append(f"q{i}\tp{i}\tp{i + 1}".encode())
        else:
            lines.append(json.dumps([f"q{i}", f"p{i}", f"p{i + 1}"]).encode())
    return lines


def corrupt(line: bytes, generator: random.Random) -> bytes:
    kind = generator.choice(["truncate", "utf8", "tab", "drop_tab", "unknown_id", "empty", "quote"])
    if kind == "truncate":
        return line[: generator.randrange(1, len(line))]
    if kind == "utf8":
        at = generator.randrange(len(line))
        return line[:at] + b"\xff\xfe" + line[at:]
    if kind == "tab":
        return line + b"\textra"
    if kind == "drop_tab":
        return line.replace(b"\t", b" ", 1)
    if kind == "unknown_id":
        return line.replace(b"p", b"zz", 1).replace(b"q", b"zz", 1)
    if kind == "empty":
        return (
            b'{"query": "", "positive": "", "negatives": [""]}'
            if line.startswith(b"{")
            else b"\t\t"
        )
    return line.replace(b'"', b"", 1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    queries = folder / "queries.tsv"
    queries.write_text("".join(f"q{i}\tquery {i}\n" for i in range(LINES + 1)))
    collection = folder / "collection.jsonl"
    collection.write_text(
        "".join(json.dumps({"_id": f"p{i}", "text": f"doc {i}"}) + "\n" for i in range(LINES + 1))
    )
    return TextStore(queries), TextStore(collection)


@pytest.mark.parametrize("fmt", ["jsonl", "colbert_ids", "msmarco_ids", "msmarco_text"])
@pytest.mark.parametrize("seed", range(5))
def test_corrupted_lines_give_file_and_line_or_parse(fmt, seed, tmp_path, stores):
    generator = random.Random(seed)
    lines = good_lines(fmt)
    corrupted = sorted(generator.sample(range(LINES), 6))
    for index in corrupted:
        lines[index] = corrupt(lines[index], generator)
    # the file ends mid-line: the last line is cut and has no newline
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(b"\n".join(lines) + b"\n" + good_lines(fmt)[0][:7])
    id_stores = stores if fmt in ("colbert_ids", "msmarco_ids") else (None, None)
    reader = make_reader(fmt, path, *id_stores)

    bad_lines = BadLines("skip")
    parsed = [number for number, _ in iter_examples(reader, bad_lines)]
    rejected = sorted(set(range(1, LINES + 2)) - set(parsed))
    assert LINES + 1 in rejected  # the cut-off last line is never silently accepted
    assert set(rejected) <= {index + 1 for index in corrupted} | {LINES + 1}
    assert bad_lines.total == len(rejected)  # every rejected line is counted
    # under the default policy the first rejected line stops the read, named with file and line
    with pytest.raises(DataFormatError) as error:
        list(iter_examples(reader))
    assert str(error.value).startswith(f"{path}:{rejected[0]}: ")
    assert (error.value.path, error.value.line) == (str(path), rejected[0])


def test_duplicate_ids_in_a_collection(tmp_path):
    path = tmp_path / "collection.tsv"
    path.write_text("p1\tone\np2\ttwo\np1\tagain\n")
    with pytest.raises(DataFormatError, match=r"collection.tsv:3: duplicate id 'p1'"):
        TextStore(path)
    bad_lines = BadLines("skip")
    store = TextStore(path, bad_lines=bad_lines)
    assert store["p1"] == "one" and bad_lines.total == 1


def test_enormous_texts_are_shortened_on_read_to_the_same_tokens(tmp_path):
    sentence = "the wing of the aircraft gives lift, said Émile. "
    enormous = sentence * (10_000_000 // len(sentence))  # 10 MB of text on one line
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps({"query": enormous, "positive": enormous, "negatives": ["n"]}) + "\n"
    )
    config = tiny_config(query_maxlen=16, doc_maxlen=48)
    tokenizer = ColBERTTokenizer(load_tokenizer(config), config)
    datamodule = ColBERTDataModule(TrainFiles(str(path)), tokenizer, shuffle_buffer=0)
    stream = datamodule.train_dataset(max_passes=1)
    stream.collate = None
    [example] = list(stream)
    # shortened once, as read: neither the shuffle buffer nor the tokenizer sees 10 MB
    assert len(example.query) < 1000 and len(example.positive) < 2000
    assert enormous.startswith(example.query) and enormous.startswith(example.positive)
    batch = Collator(tokenizer)([example])
    assert batch.queries.input_ids.shape == (1, 16)
    assert batch.documents.input_ids.shape == (2, 48)
    # what the whole text gives: its first 400 sentences hold far more than 48 tokens
    whole = tokenizer.documents([sentence * 400, "n"])
    assert torch.equal(batch.documents.input_ids, whole.input_ids)
    assert torch.equal(batch.queries.input_ids, tokenizer.queries([sentence * 400]).input_ids)


def test_skipped_lines_are_counted_in_results(tmp_path):
    # Every even line bad: two DataLoader workers, each with half of the valid lines.
    lines = [
        json.dumps({"query": f"wing {i}", "positive": f"lift {i}", "negatives": [f"drag {i}"]})
        for i in range(16)
    ]
    bad = [
        '{"query": "truncated',
        json.dumps({"query": "q", "positive": "", "negatives": ["n"]}),
        "\udcff",  # invalid UTF-8 once written with surrogateescape
        "[]",
        json.dumps({"query": "q", "positive": "p"}),
        json.dumps({"query": "q", "positive": "p", "negatives": []}),
        "",
        "{broken",
    ]
    lines[1::2] = bad
    triples = tmp_path / "triples.jsonl"
    triples.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    overrides = [
        *TINY_OVERRIDES,
        *triples_with_cranfield_dev(triples),
        "data.on_bad_line=skip",
        "data.num_workers=2",
        "data.batch_size=2",
        "trainer.max_steps=8",  # two passes over the 8 valid lines: each bad line counted once
        "callbacks=none",
        "logger=none",
    ]
    results = train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    assert results["steps"] == 8 and results["examples_seen"] == 16
    assert results["skipped_lines"] == 8
    assert json.loads((tmp_path / "run" / "results.json").read_text())["skipped_lines"] == 8


def test_bad_id_store_lines_are_counted_once_and_seen_queries_skip_bad_lines(tmp_path):
    from colbert_lightning.data import ColBERTDataModule, TrainFiles
    from colbert_lightning.data.beir import normalized_text, text_key

    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\twing lift\nbroken line without a tab\nq2\tshock waves\n")
    collection = tmp_path / "collection.tsv"
    collection.write_text("p1\tlift\np2\tdrag\np3\tshock\n")
    triples = tmp_path / "triples.jsonl"
    triples.write_text('["q1", "p1", "p2"]\n["q2", "p3", "p1"]\n["q9", "p3", "p1"]\n')
    files = TrainFiles(str(triples), "colbert_ids", str(queries), str(collection))
    datamodule = ColBERTDataModule(
        files,
        tokenizer=ColBERTTokenizer(load_tokenizer(tiny_config()), tiny_config()),
        on_bad_line="skip",
    )
    seen = datamodule.seen_queries()
    datamodule.train_dataset()
    assert datamodule.skipped_store_lines == 1  # one bad queries line, read once
    # q9 is unknown: that line is never trained on, so its query is not "seen"
    assert seen.train == {text_key(normalized_text(t)) for t in ("wing lift", "shock waves")}
    assert "Wing  LIFT!" in seen and "drag" not in seen
