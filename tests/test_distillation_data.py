"""Teacher scores in the training data: readers, streaming, collation (issue 19, data side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import colbert_lightning.resources
from colbert_lightning.data import ColBERTDataModule, TrainFiles
from colbert_lightning.data.collate import Collator, TextCap, teacher_scores
from colbert_lightning.data.datamodule import validate_training_file
from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.readers import TRAIN_FORMATS, iter_examples, make_reader
from colbert_lightning.data.streaming import TripleStream
from colbert_lightning.data.text_store import TextStore
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling.config import ColBERTConfig
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, load_tokenizer


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def scored(query: str, documents: list[str], scores: list, **ids: object) -> str:
    return json.dumps({"query": query, "documents": documents, "scores": scores, **ids})


@pytest.fixture
def stores(tmp_path: Path) -> tuple[TextStore, TextStore]:
    queries = write_lines(tmp_path / "queries.tsv", ["q1\twhat is a wing", "q2\tflutter"])
    collection = write_lines(
        tmp_path / "collection.tsv",
        ["p1\twings lift", "p2\tflutter shakes", "p3\tnothing", "p4\tmore nothing"],
    )
    return TextStore(queries), TextStore(collection)


@pytest.fixture(scope="module")
def tokenizer() -> ColBERTTokenizer:
    config = ColBERTConfig(
        tokenizer=colbert_lightning.resources.resource_path("tokenizer/bert-base-uncased"),
        encoder_config={"model_type": "bert"},
        query_maxlen=8,
        doc_maxlen=8,
    )
    return ColBERTTokenizer(load_tokenizer(config), config)


# ---------------------------------------------------------------- colbert_ids with scores


def test_colbert_ids_keeps_teacher_scores(tmp_path: Path, stores) -> None:
    path = write_lines(
        tmp_path / "distill.jsonl",
        [
            '["q1", ["p1", 2.5], ["p2", 1], ["p3", -0.5]]',
            '["q2", ["p2", 0.25], ["p4", 3.0]]',
            '["q1", "p1", "p3"]',
        ],
    )
    examples = [example for _, example in iter_examples(make_reader("colbert_ids", path, *stores))]
    first, second, bare = examples
    assert first.scores == (2.5, 1.0, -0.5)
    assert (first.positive, first.negatives) == ("wings lift", ("flutter shakes", "nothing"))
    assert (first.positive_id, first.negative_ids) == ("p1", ("p2", "p3"))
    # the first passage is the positive whatever its score (colbert-ai's labels=0)
    assert second.scores == (0.25, 3.0) and second.positive_id == "p2"
    assert bare.scores is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ('["q1", ["p1", 2.5], "p2"]', "element 1 is a [pid, score] pair but element 2 is a bare"),
        ('["q1", "p1", ["p2", 2.5]]', "element 2 is a [pid, score] pair but element 1 is a bare"),
        ('["q1", ["p1", "high"], ["p2", 1]]', "the score of element 1 must be a number"),
        ('["q1", ["p1", 1], ["p2", true]]', "the score of element 2 must be a number"),
        ('["q1", ["p1", NaN], ["p2", 1]]', "the score of element 1 must be finite"),
        ('["q1", ["p1", 1], ["p2", -Infinity]]', "the score of element 2 must be finite"),
        ('["q1", ["p1", 1e300], ["p2", 1]]', "within float32's range"),
        ('["q1", ["p1", 1, 2], ["p2", 1]]', "element 1 must be a passage id or a [pid, score]"),
        ('["q1", [null, 1], ["p2", 1]]', "element 1 must be a non-empty string or an integer"),
        ('["q1", ["p1", 1]]', "needs at least 1 negatives, has 0"),
    ],
)
def test_colbert_ids_bad_scores(tmp_path: Path, stores, bad: str, words: str) -> None:
    good = '["q1", ["p1", 1.0], ["p2", 0.5]]'
    path = write_lines(tmp_path / "distill.jsonl", [good, bad, good])
    reader = make_reader("colbert_ids", path, *stores)
    with pytest.raises(DataFormatError) as error:
        list(iter_examples(reader))
    assert str(error.value).startswith(f"{path}:2: ") and words in str(error.value), error.value
    bad_lines = BadLines("skip")
    assert [number for number, _ in iter_examples(reader, bad_lines)] == [1, 3]
    assert bad_lines.total == 1


# ---------------------------------------------------------------- scored_jsonl


def test_scored_jsonl_is_a_training_format(tmp_path: Path, stores) -> None:
    assert "scored_jsonl" in TRAIN_FORMATS
    path = write_lines(tmp_path / "s.jsonl", [scored("q", ["p", "n"], [1, 0])])
    with pytest.raises(ValueError, match="takes no queries or collection"):
        make_reader("scored_jsonl", path, *stores)


def test_scored_jsonl_reader(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            scored("what lifts", ["wings lift", "rocks", "sand"], [3.5, -1, 0.25]),
            scored("q", ["p", "n"], [0.0, 9.0], qid=7, doc_ids=["d1", 2]),
        ],
    )
    (_, plain), (_, with_ids) = iter_examples(make_reader("scored_jsonl", path))
    assert plain == TrainingExample(
        "what lifts",
        "wings lift",
        ("rocks", "sand"),
        source=f"{path}:1",
        scores=(3.5, -1.0, 0.25),
    )
    # the first document stays the positive though a negative outscores it
    assert (with_ids.positive, with_ids.scores) == ("p", (0.0, 9.0))
    assert (with_ids.query_id, with_ids.positive_id, with_ids.negative_ids) == ("7", "d1", ("2",))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ('["q", ["p", "n"], [1, 0]]', "expected a JSON object, got list"),
        (json.dumps({"query": "q", "documents": ["p", "n"]}), "missing field 'scores'"),
        (json.dumps({"documents": ["p", "n"], "scores": [1, 0]}), "missing field 'query'"),
        (scored(3, ["p", "n"], [1, 0]), "field 'query' must be a string"),
        (scored("q", ["p", 4], [1, 0]), "field 'documents' must be a list of strings"),
        (scored("q", ["p"], [1]), "needs the positive and at least one negative, has 1"),
        (scored("q", ["p", "n"], [1]), "field 'scores' must be a list of 2 numbers"),
        (scored("q", ["p", "n"], "1 0"), "field 'scores' must be a list of 2 numbers"),
        (scored("q", ["p", "n"], [1, "0"]), "scores element 2 must be a number"),
        (scored("q", ["p", "n"], [False, 0]), "scores element 1 must be a number"),
        ('{"query": "q", "documents": ["p", "n"], "scores": [1, NaN]}', "must be finite"),
        (scored("q", ["p", " "], [1, 0]), "empty text for the document 2"),
        (scored(" ", ["p", "n"], [1, 0]), "empty text for the query"),
        (scored("q", ["p", "n"], [1, 0], qid="q1"), "has 'qid' but not 'doc_ids'"),
        (scored("q", ["p", "n"], [1, 0], doc_ids=["a", "b"]), "has 'doc_ids' but not 'qid'"),
        (scored("q", ["p", "n"], [1, 0], qid="q", doc_ids=["a"]), "list of 2 ids"),
        (scored("q", ["p", "n"], [1, 0], qid="q", doc_ids=["a", ""]), "doc_ids element 2"),
        ("{not json", "bad JSON"),
    ],
)
def test_scored_jsonl_bad_lines(tmp_path: Path, bad: str, words: str) -> None:
    good = scored("q", ["p", "n"], [1, 0])
    path = write_lines(tmp_path / "s.jsonl", [good, good, bad, good])
    reader = make_reader("scored_jsonl", path)
    with pytest.raises(DataFormatError) as error:
        list(iter_examples(reader))
    assert str(error.value).startswith(f"{path}:3: ") and words in str(error.value), error.value
    bad_lines = BadLines("skip")
    assert [number for number, _ in iter_examples(reader, bad_lines)] == [1, 2, 4]
    assert bad_lines.total == 1


def test_scored_jsonl_min_negatives(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [scored("q", ["p", "n1", "n2"], [3, 2, 1])])
    with pytest.raises(DataFormatError, match=":1: needs at least 3 negatives, has 2"):
        list(iter_examples(make_reader("scored_jsonl", path, min_negatives=3)))


# ---------------------------------------------------------------- streaming keeps them aligned


def score_of(document_id: str) -> float:
    """The independent lookup: each document's score is a function of its id alone."""
    line, position = document_id[1:].split(".")
    return int(line) * 100 + int(position) + 0.5


def write_scored_file(path: Path, lines: int, documents: int, long_text: str = "") -> Path:
    records = []
    for line in range(lines):
        ids = [f"d{line}.{position}" for position in range(documents)]
        texts = [f"text of {doc_id} {long_text}".strip() for doc_id in ids]
        records.append(
            scored(f"query {line}", texts, [score_of(i) for i in ids], qid=line, doc_ids=ids)
        )
    return write_lines(path, records)


def assert_aligned(example: TrainingExample, nway: int, capped: bool = False) -> None:
    ids = (example.positive_id, *example.negative_ids)
    assert len(ids) == len(example.scores) == nway
    assert example.scores == tuple(score_of(doc_id) for doc_id in ids)
    if not capped:  # and the texts still belong to those ids
        texts = (example.positive, *example.negatives)
        assert all(text == f"text of {doc_id}" for text, doc_id in zip(texts, ids, strict=True))


def test_sampled_negatives_keep_their_scores(tmp_path: Path) -> None:
    path = write_scored_file(tmp_path / "s.jsonl", lines=12, documents=7)
    reader = make_reader("scored_jsonl", path)
    seen = []
    for rank in range(2):  # sharded across two ranks, shuffled, two passes
        stream = TripleStream(
            path,
            reader,
            nway=3,
            seed=rank,
            shuffle_buffer=4,
            max_passes=2,
            rank=rank,
            world_size=2,
        )
        for example in stream:
            assert_aligned(example, nway=3)
            seen.append(example.query)
    assert sorted(seen) == sorted(f"query {line}" for line in range(12) for _ in range(2))


def test_scores_survive_the_text_cap(tmp_path: Path, tokenizer: ColBERTTokenizer) -> None:
    path = write_scored_file(tmp_path / "s.jsonl", lines=3, documents=5, long_text="word " * 400)
    stream = TripleStream(
        path,
        make_reader("scored_jsonl", path),
        nway=4,
        seed=0,
        shuffle_buffer=0,
        max_passes=1,
        cap=TextCap(tokenizer),
    )
    examples = list(stream)
    assert all(len(example.positive) < 1000 for example in examples)  # the cap did cut
    for example in examples:
        assert_aligned(example, nway=4, capped=True)


def test_colbert_ids_scores_follow_the_sampled_negatives(tmp_path: Path) -> None:
    ids = [f"d0.{position}" for position in range(6)]
    queries = write_lines(tmp_path / "queries.tsv", ["0\tquery zero"])
    collection = write_lines(tmp_path / "collection.tsv", [f"{i}\ttext of {i}" for i in ids])
    pairs = ", ".join(f'["{doc_id}", {score_of(doc_id)}]' for doc_id in ids)
    path = write_lines(tmp_path / "distill.jsonl", [f"[0, {pairs}]"])
    reader = make_reader("colbert_ids", path, TextStore(queries), TextStore(collection))
    stream = TripleStream(path, reader, nway=3, seed=0, shuffle_buffer=0, max_passes=5)
    chosen = set()
    for example in stream:
        assert_aligned(example, nway=3)
        chosen.add(example.negative_ids)
    assert len(chosen) > 1  # different negatives each pass, their scores with them


def test_batches_carry_teacher_scores_and_resume(tmp_path: Path, tokenizer) -> None:
    path = write_scored_file(tmp_path / "s.jsonl", lines=10, documents=5)
    settings = {"nway": 3, "seed": 1, "shuffle_buffer": 4, "max_passes": 1}
    examples = list(TripleStream(path, make_reader("scored_jsonl", path), **settings))
    batched = {"batch_size": 2, "collate": Collator(tokenizer)}
    batches = list(TripleStream(path, make_reader("scored_jsonl", path), **settings, **batched))
    for number, batch in enumerate(batches):
        rows = examples[2 * number : 2 * number + 2]
        assert batch.teacher_scores.dtype == torch.float32
        assert batch.teacher_scores.shape == (2, 3)
        assert batch.teacher_scores.tolist() == [list(example.scores) for example in rows]
    resumed = TripleStream(
        path, make_reader("scored_jsonl", path), **settings, **batched, skip_batches=3
    )
    assert [batch.teacher_scores.tolist() for batch in resumed] == [
        batch.teacher_scores.tolist() for batch in batches[3:]
    ]


# ---------------------------------------------------------------- collation


def example(source: str, scores: tuple[float, ...] | None, negatives: int = 2) -> TrainingExample:
    negative_texts = tuple(f"negative {i}" for i in range(negatives))
    return TrainingExample("query", "positive", negative_texts, source=source, scores=scores)


def test_collate_builds_teacher_scores(tokenizer: ColBERTTokenizer) -> None:
    batch = Collator(tokenizer)([example("a:1", (3.0, 2.0, 1.0)), example("a:2", (0.0, 1.0, 2.0))])
    assert batch.nway == 3 and len(batch.documents) == 6
    assert torch.equal(batch.teacher_scores, torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]]))
    moved = batch.to("cpu")
    assert torch.equal(moved.teacher_scores, batch.teacher_scores)
    assert Collator(tokenizer)([example("a:1", None)]).teacher_scores is None


def test_collate_refuses_a_mix(tokenizer: ColBERTTokenizer) -> None:
    mixed = [example("s.jsonl:4", (1.0, 0.0, 0.0)), example("t.jsonl:9", None)]
    with pytest.raises(ValueError, match="s.jsonl:4 has scores, t.jsonl:9 has none"):
        Collator(tokenizer)(mixed)
    with pytest.raises(ValueError, match="u.jsonl:2: 2 teacher scores for 3 documents"):
        teacher_scores([example("u.jsonl:2", (1.0, 0.0))])


def test_datamodule_trains_on_scored_jsonl(tmp_path: Path, tokenizer) -> None:
    path = write_scored_file(tmp_path / "s.jsonl", lines=6, documents=4)
    files = TrainFiles(str(path), "scored_jsonl")
    assert validate_training_file(files, nway=4).valid == 6
    datamodule = ColBERTDataModule(files, tokenizer, batch_size=3, nway=2, num_workers=0)
    batches = list(datamodule.train_dataset(max_passes=1))
    assert [tuple(batch.teacher_scores.shape) for batch in batches] == [(3, 2), (3, 2)]


def test_datamodule_refuses_a_file_mixing_scored_and_plain_lines(tmp_path: Path) -> None:
    queries = write_lines(tmp_path / "q.tsv", ["q1\twhat is a wing"])
    collection = write_lines(tmp_path / "c.tsv", ["p1\twings lift", "p2\tflutter shakes"])
    path = write_lines(
        tmp_path / "distill.jsonl", ['["q1", ["p1", 1.0], ["p2", 0.5]]', '["q1", "p1", "p2"]']
    )
    files = TrainFiles(str(path), "colbert_ids", str(queries), str(collection))
    with pytest.raises(DataFormatError, match=r"distill.jsonl:2: no teacher scores, but .*:1 has"):
        validate_training_file(files, on_bad_line="skip")
