"""Nothing silently wrong (issue 16): damaged or odd input is read right or refused by name.

Each case says what goes wrong without the guard: a byte-order mark read into the first id,
gzip and UTF-8 damage raised by a library with no file named, a folder where a file belongs,
and texts that tokenise to nothing searched or trained on as if they had words.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from colbert_lightning.config.checks import ConfigError, check_config
from colbert_lightning.data import ColBERTDataModule, TrainFiles
from colbert_lightning.data.beir import (
    Corpus,
    find_beir_file,
    load_candidates,
    load_corpus,
    load_dev_set,
    load_qrels,
    load_queries,
    qrels_path,
)
from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.readers import iter_examples, make_reader
from colbert_lightning.data.text_store import TextStore
from colbert_lightning.evaluation.split import evaluate_split
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, tokenizes_to_nothing
from colbert_lightning.retrieval.bm25 import BM25Config, BM25Retriever
from colbert_lightning.training.run import train
from tests.conftest import tiny_config
from tests.helpers import TINY_OVERRIDES, compose_train

BOM = b"\xef\xbb\xbf"
LINES = 12
# Each only the characters BERT's tokeniser drops: NULs, zero-width spaces, controls, a BOM.
NOTHING_TEXTS = ["\x00\x00", "\u200b \u200b", "\x01\x07\x1b", "\ufeff\u200d", " \t"]


def write(path: Path, lines: list[bytes]) -> Path:
    """Write the lines (newline-terminated), gzipped when the name ends in ``.gz``."""
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def beir_lines(prefix: str) -> list[bytes]:
    return [
        json.dumps({"_id": f"{prefix}{i}", "title": "", "text": f"text {i}"}).encode()
        for i in range(LINES)
    ]


def tsv_lines(prefix: str) -> list[bytes]:
    return [f"{prefix}{i}\ttext {i}".encode() for i in range(LINES)]


def training_lines(fmt: str) -> list[bytes]:
    if fmt == "jsonl":
        return [
            json.dumps({"query": f"q {i}", "positive": f"p {i}", "negatives": [f"n {i}"]}).encode()
            for i in range(LINES)
        ]
    if fmt == "msmarco_text":
        return [f"q {i}\tp {i}\tn {i}".encode() for i in range(LINES)]
    if fmt == "msmarco_ids":
        return [f"q{i}\tp{i}\tp{(i + 1) % LINES}".encode() for i in range(LINES)]
    return [json.dumps([f"q{i}", f"p{i}", f"p{(i + 1) % LINES}"]).encode() for i in range(LINES)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[TextStore, TextStore]:
    folder = tmp_path_factory.mktemp("stores")
    queries = TextStore(write(folder / "queries.tsv", tsv_lines("q")))
    collection = TextStore(write(folder / "collection.tsv", tsv_lines("p")))
    return queries, collection


Read = Callable[[Path, BadLines], object]


def training_reader(fmt: str, stores: tuple[TextStore, TextStore]) -> Read:
    """Reads a training file in ``fmt`` to the end."""
    id_stores = stores if fmt in ("colbert_ids", "msmarco_ids") else (None, None)

    def read(path: Path, bad_lines: BadLines) -> list:
        reader = make_reader(fmt, path, *id_stores)
        return [example for _, example in iter_examples(reader, bad_lines)]

    return read


def store_ids(path: Path, bad_lines: BadLines) -> list[str]:
    return list(TextStore(path, bad_lines=bad_lines).ids())


def reader_cases(stores) -> dict[str, tuple[str, list[bytes], Read]]:
    """Every reader of a line-oriented file: its file name, good lines and a full read.

    The BEIR loaders have no bad-line policy (the first bad line stops them); the id stores and
    the training readers follow the ``BadLines`` they are given.
    """
    qrels = [b"query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1".encode() for i in range(LINES)]
    return {
        "corpus": ("corpus.jsonl", beir_lines("d"), lambda path, _: load_corpus(path).ids),
        "queries": ("queries.jsonl", beir_lines("q"), lambda path, _: load_queries(path)),
        "qrels": ("test.tsv", qrels, lambda path, _: load_qrels(path)),
        "candidates": (
            "run.trec",
            [f"q{i} Q0 d{i} 1 1.5 bm25".encode() for i in range(LINES)],
            lambda path, _: load_candidates(path),
        ),
        "tsv store": ("collection.tsv", tsv_lines("p"), store_ids),
        "beir store": ("docs.jsonl", beir_lines("d"), store_ids),
        **{
            f"training {fmt}": (
                "train.jsonl" if fmt in ("jsonl", "colbert_ids") else "train.tsv",
                training_lines(fmt),
                training_reader(fmt, stores),
            )
            for fmt in ("jsonl", "msmarco_text", "colbert_ids", "msmarco_ids")
        },
    }


SKIPPING = ("tsv store", "beir store", "training")
READERS = [
    "corpus",
    "queries",
    "qrels",
    "candidates",
    "tsv store",
    "beir store",
    "training jsonl",
    "training msmarco_text",
    "training colbert_ids",
    "training msmarco_ids",
]


# --- 1. a byte-order mark starts the file ---------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("reader", READERS)
def test_a_byte_order_mark_is_not_part_of_the_first_line(reader, suffix, tmp_path, stores):
    name, lines, read = reader_cases(stores)[reader]
    path = tmp_path / (name + suffix)
    expected = read(write(path, lines), BadLines())
    assert read(write(path, [BOM + lines[0], *lines[1:]]), BadLines()) == expected


def test_a_bom_on_a_tsv_id_store_keeps_the_first_id(tmp_path, stores):
    queries = TextStore(write(tmp_path / "queries.tsv", [BOM + b"q0\tfirst", b"q1\tsecond"]))
    assert list(queries.ids()) == ["q0", "q1"] and queries["q0"] == "first"
    # the first training line names q0: found, not an unknown id skipped in silence
    train = write(tmp_path / "train.tsv", [b"q0\tp0\tp1", b"q1\tp1\tp0"])
    reader = make_reader("msmarco_ids", train, queries, stores[1])
    bad_lines = BadLines("skip")
    examples = [example for _, example in iter_examples(reader, bad_lines)]
    assert [example.query_id for example in examples] == ["q0", "q1"] and bad_lines.total == 0


def test_bom_only_where_a_file_starts(tmp_path):
    # an empty file saved with a BOM is an empty file
    assert load_queries(write(tmp_path / "queries.jsonl", [BOM])) == {}
    # files joined with their marks: the second mark is refused, not read into an id
    joined = write(tmp_path / "collection.tsv", [BOM + b"p0\ta", BOM + b"p1\tb"])
    with pytest.raises(DataFormatError, match=r"collection.tsv:2: a byte-order mark"):
        TextStore(joined)
    utf16 = tmp_path / "q.tsv"
    utf16.write_bytes("q0\tx\n".encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"q.tsv:1: the file is UTF-16"):
        TextStore(utf16)


# --- 2. damaged bytes -----------------------------------------------------------------------


def damaged(kind: str, lines: list[bytes]) -> tuple[str, bytes, int]:
    """``(suffix, file bytes, first bad line)`` of a file damaged in one way."""
    data = b"".join(line + b"\n" for line in lines)
    if kind == "invalid UTF-8":
        bad = b"".join(line + b"\n" for line in [*lines[:3], lines[3] + b"\xff\xfe", *lines[4:]])
        return "", bad, 4
    if kind == "invalid UTF-8, gzipped":
        _, bad, line = damaged("invalid UTF-8", lines)
        return ".gz", gzip.compress(bad, mtime=0), line
    if kind == "plain text in .gz":
        return ".gz", data, 1
    if kind == "truncated gzip":
        compressed = gzip.compress(data, mtime=0)
        return ".gz", compressed[: len(compressed) // 2], 0  # the line depends on zlib's blocks
    raise ValueError(kind)


DAMAGE = ["invalid UTF-8", "invalid UTF-8, gzipped", "plain text in .gz", "truncated gzip"]


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("reader", READERS)
def test_damaged_bytes_name_the_file_and_line(reader, kind, tmp_path, stores):
    name, lines, read = reader_cases(stores)[reader]
    suffix, data, line = damaged(kind, lines)
    path = tmp_path / (name + suffix)
    path.write_bytes(data)
    with pytest.raises(DataFormatError) as raised:
        read(path, BadLines("error"))
    error = raised.value
    assert error.path == str(path) and str(error).startswith(f"{path}:{error.line}: ")
    if line:
        assert error.line == line
    expected = {
        "plain text in .gz": "not gzip data, although the name ends in .gz",
        "truncated gzip": "the gzip data ends early: the file is truncated",
    }.get(kind, "invalid UTF-8 at byte")
    assert error.problem.startswith(expected), error.problem
    if reader.startswith(SKIPPING):
        bad_lines = BadLines("skip")
        if kind.startswith("invalid UTF-8"):  # one line: skipped and counted
            assert len(read(path, bad_lines)) == LINES - 1
            assert bad_lines.total == 1
        else:  # nothing after damaged gzip bytes can be read: no policy skips it
            with pytest.raises(DataFormatError, match=expected):
                read(path, bad_lines)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"[" * 100_000, "bad JSON: maximum recursion depth exceeded"),
        (b'{"_id": ' + b"9" * 5000 + b', "text": "x"}', "bad JSON: Exceeds the limit"),
    ],
)
def test_json_beyond_the_decoders_limits_names_the_line(line, problem, tmp_path):
    path = write(tmp_path / "corpus.jsonl", [*beir_lines("d")[:2], line])
    with pytest.raises(DataFormatError, match=rf"corpus.jsonl:3: {problem}"):
        load_corpus(path)


FLIPS_PER_CASE = 6


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_fuzz_byte_flips_give_a_named_error_or_a_counted_skip(suffix, tmp_path, stores):
    """Seeded: each reader's file with one to three random bytes changed, a fixed number of times.

    The outcome is a read (maybe with bad lines skipped and counted) or a ``DataFormatError``
    naming the file: never an error from gzip, zlib, json or the UTF-8 codec.
    """
    generator = random.Random(f"flips{suffix}")
    outcomes = {"read": 0, "named error": 0}
    for reader, (name, lines, read) in reader_cases(stores).items():
        clean = b"".join(line + b"\n" for line in lines)
        if suffix:
            clean = gzip.compress(clean, mtime=0)
        for flip in range(FLIPS_PER_CASE):
            data = bytearray(clean)
            for _ in range(generator.randint(1, 3)):
                data[generator.randrange(len(data))] ^= generator.randint(1, 255)
            path = tmp_path / f"{flip}-{name}{suffix}"
            path.write_bytes(bytes(data))
            try:
                read(path, BadLines("skip"))
            except DataFormatError as error:
                assert error.path == str(path), (reader, flip, error)
                outcomes["named error"] += 1
            else:
                outcomes["read"] += 1
    assert outcomes["named error"] > 0


# --- 3. a folder where a file belongs -------------------------------------------------------


def test_a_qrels_split_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "qrels" / "test.tsv").mkdir(parents=True)
    write(tmp_path / "qrels" / "dev.tsv", [b"query-id\tcorpus-id\tscore"])
    with pytest.raises(IsADirectoryError, match=r"qrels/test.tsv, is a folder, not a file"):
        qrels_path(tmp_path, "test")
    # and a missing split lists only the splits that are files
    with pytest.raises(FileNotFoundError, match=r"splits found: \['dev'\]"):
        qrels_path(tmp_path, "train")
    (tmp_path / "corpus.jsonl").mkdir()
    with pytest.raises(IsADirectoryError, match="corpus.jsonl is a folder, not a corpus file"):
        find_beir_file(tmp_path, "corpus")
    with pytest.raises(IsADirectoryError, match="corpus.jsonl is a folder, not a text file"):
        TextStore(tmp_path / "corpus.jsonl")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("data.dev.corpus", "data.dev.corpus={folder}: is a folder, not a file"),
        ("data.train.path", "data.train.path={folder}: is a folder, not a file"),
        ("ckpt_path", "ckpt_path={folder}: is a folder, not a checkpoint file"),
    ],
)
def test_a_folder_where_a_file_belongs_fails_before_any_model(key, message, tmp_path, monkeypatch):
    def must_not_build(*args, **kwargs):
        raise AssertionError("a model was built despite a bad config")

    monkeypatch.setattr(ColBERT, "from_config", must_not_build)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cfg = compose_train(tmp_path / "run", tmp_path / "cache", [*TINY_OVERRIDES, f"{key}={folder}"])
    with pytest.raises(ConfigError, match=message.format(folder=folder)):
        train(cfg)


def test_a_prepare_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "prepared"
    blocker.write_text("not a folder")
    overrides = [*TINY_OVERRIDES, f"data.prepare.output_dir={blocker}"]
    cfg = compose_train(tmp_path / "run", tmp_path / "cache", overrides)
    with pytest.raises(ConfigError, match=f"data.prepare.output_dir={blocker}: is a file"):
        check_config(cfg)


def test_a_test_split_whose_qrels_is_a_folder_is_a_config_error(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels" / "test.tsv").mkdir(parents=True)
    for name in ("corpus.jsonl.gz", "queries.jsonl.gz"):  # the dev files data=cranfield names
        (root / name).touch()
    overrides = [*TINY_OVERRIDES, f"data.root={root}", "test_split=test"]
    cfg = compose_train(tmp_path / "run", tmp_path / "cache", overrides)
    with pytest.raises(ConfigError, match="test_split=test: the qrels .* is a folder"):
        check_config(cfg)


# --- 4. texts that tokenise to nothing ------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> ColBERTTokenizer:
    return ColBERTTokenizer.from_config(tiny_config())


def test_a_text_of_dropped_characters_is_empty(tokenizer):
    for text in NOTHING_TEXTS:
        assert tokenizer.is_empty(text), repr(text)
        assert tokenizer.tokenizer.tokenize(text) == []  # the tokeniser agrees
    for text in ["a", "\x00a", "\u200b7", "?", "\u00e9", "\ufdd0"]:
        assert not tokenizer.is_empty(text), repr(text)
        assert not tokenizes_to_nothing(tokenizer.tokenizer, text)


def beir_folder(root: Path, texts: list[str]) -> Path:
    root.mkdir()
    corpus = [json.dumps({"_id": f"d{i}", "text": text}).encode() for i, text in enumerate(texts)]
    write(root / "corpus.jsonl", corpus)
    write(root / "queries.jsonl", [json.dumps({"_id": "q0", "text": "shock waves"}).encode()])
    (root / "qrels").mkdir()
    write(root / "qrels" / "test.tsv", [b"query-id\tcorpus-id\tscore", b"q0\td0\t1"])
    return root


def test_bm25_refuses_a_corpus_with_no_word_to_index():
    for texts in (["", " "], NOTHING_TEXTS[:2], ["a", "the"]):
        with pytest.raises(ValueError, match="none of the 2 documents has a word BM25 can index"):
            BM25Retriever(["d0", "d1"], texts, show_progress=False)
    # one document with a word is enough; the others score 0
    rankings = BM25Retriever(["d0", "d1"], ["\x00", "shock waves"], show_progress=False).search(
        {"q": "shock"}, k=2
    )
    assert rankings["q"][0][0] == "d1" and rankings["q"][1] == ("d0", 0.0)


def test_evaluate_split_refuses_a_corpus_of_empty_documents(tmp_path):
    root = beir_folder(tmp_path / "beir", NOTHING_TEXTS)
    model = ColBERT.from_config(tiny_config())
    with pytest.raises(ValueError, match=r"corpus.jsonl: none of its 5 documents has any text"):
        evaluate_split(model, str(root), "test")
    with pytest.raises(ValueError, match="none of the 5 documents has a word BM25 can index"):
        evaluate_split(BM25Config(), str(root), "test")
    # one document with text is searchable
    result = evaluate_split(model, str(beir_folder(tmp_path / "ok", ["\x00", "lift"])), "test")
    assert result["documents"] == 2


def test_corpus_require_text(tokenizer):
    Corpus(["d0"], ["\x00"], "c.jsonl").require_text(lambda text: not text.strip())
    with pytest.raises(ValueError, match="c.jsonl: none of its 1 documents"):
        Corpus(["d0"], ["\x00"], "c.jsonl").require_text(tokenizer.is_empty)


def test_a_dev_set_of_empty_documents_is_refused_when_asked(tmp_path, tokenizer):
    root = beir_folder(tmp_path / "beir", NOTHING_TEXTS)
    files = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "test.tsv"]
    assert len(load_dev_set(*files).corpus_ids) == 5
    with pytest.raises(ValueError, match="corpus.jsonl: none of its 5 documents has any text"):
        load_dev_set(*files, is_empty=tokenizer.is_empty)


def test_training_refuses_a_text_that_tokenises_to_nothing(tmp_path, tokenizer):
    lines = [
        json.dumps({"query": "lift", "positive": "\x00\u200b", "negatives": ["drag"]}).encode(),
        json.dumps({"query": "drag", "positive": "wings", "negatives": ["lift"]}).encode(),
    ]
    train_file = write(tmp_path / "train.jsonl", lines)
    datamodule = ColBERTDataModule(
        TrainFiles(path=str(train_file)), tokenizer, num_workers=0, shuffle_buffer=0
    )
    stream = datamodule.train_dataset(max_passes=1)
    with pytest.raises(DataFormatError, match="train.jsonl:1: empty text for the positive"):
        list(stream)
