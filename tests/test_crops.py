"""Label-free crops (``data=crops``): their spans and negatives, shards, bad lines, a run."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from colbert_lightning.data import ColBERTDataModule, CropSpec, TrainFiles
from colbert_lightning.data.crops import CropReader
from colbert_lightning.data.datamodule import validate_training_file
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.readers import make_reader
from colbert_lightning.data.streaming import TripleStream
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.training.run import train
from tests.helpers import TINY_OVERRIDES, compose_train

SPEC = CropSpec(min_ratio=0.2, max_ratio=0.5, min_words=3)


def document(index: int, words: int) -> str:
    """A document whose words name it and their place: ``d7w0 d7w1 ...``."""
    return " ".join(f"d{index}w{position}" for position in range(words))


def write_corpus(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def beir_line(index: int, text: str, title: str = "") -> str:
    return json.dumps({"_id": f"doc{index}", "title": title, "text": text})


def beir_corpus(path: Path, count: int) -> Path:
    # lengths 12 to 47 words, so that spans of 20% and 50% differ by several words
    return write_corpus(path, [beir_line(i, document(i, 12 + 5 * i % 36)) for i in range(count)])


def stream(path: Path, spec: CropSpec = SPEC, **settings: object) -> TripleStream:
    settings = {"nway": 3, "seed": 0, "shuffle_buffer": 4, "max_passes": 1} | settings
    reader = make_reader("crops", path, min_negatives=settings["nway"] - 1, crops=spec)
    return TripleStream(path, reader, **settings)


def line_of(example: TrainingExample) -> int:
    return int(example.source.rsplit(":", 1)[1])


def span_of(text: str) -> tuple[int, int, int]:
    """``(document, first word, words)`` of a span, checked to be one run of one document."""
    places = [
        tuple(map(int, re.fullmatch(r"d(\d+)w(\d+)", word).groups())) for word in text.split()
    ]
    documents = {index for index, _ in places}
    assert len(documents) == 1, text
    positions = [position for _, position in places]
    assert positions == list(range(positions[0], positions[0] + len(positions))), text
    return places[0][0], positions[0], len(positions)


def test_spans_are_runs_of_their_document_within_the_ratio_bounds(tmp_path: Path) -> None:
    path = beir_corpus(tmp_path / "corpus.jsonl", 12)
    examples = list(stream(path, max_passes=3))
    assert Counter(map(line_of, examples)) == Counter({line: 3 for line in range(1, 13)})
    lengths, starts = set(), set()
    for example in examples:
        own = line_of(example) - 1
        words = 12 + 5 * own % 36
        shortest = max(SPEC.min_words, round(SPEC.min_ratio * words))
        longest = max(SPEC.min_words, round(SPEC.max_ratio * words))
        query, positive = span_of(example.query), span_of(example.positive)
        for index, start, length in (query, positive):
            assert index == own and shortest <= length <= longest and start + length <= words
            lengths.add(length / words)
        starts.add(query[1] - positive[1])
        # negatives: spans of other documents, distinct, named by their ids
        negatives = [span_of(text) for text in example.negatives]
        assert len(negatives) == 2 and all(index != own for index, _, _ in negatives)
        assert example.negative_ids == tuple(f"doc{index}" for index, _, _ in negatives)
        assert len(set(example.negative_ids)) == 2 and example.positive_id == f"doc{own}"
    # the ratio is drawn, not fixed, and the two spans are drawn independently
    assert min(lengths) < 0.3 and max(lengths) > 0.4
    assert len(starts) > 5


def test_crops_depend_on_seed_pass_and_line_only(tmp_path: Path) -> None:
    path = beir_corpus(tmp_path / "corpus.jsonl", 20)

    def by_pass_and_line(examples: list[TrainingExample]) -> dict[tuple[int, int], tuple]:
        drawn, passes = {}, Counter()
        for example in examples:  # a shard yields all of a pass before the next
            line = line_of(example)
            drawn[passes[line], line] = (example.query, example.positive, example.negatives)
            passes[line] += 1
        return drawn

    whole = by_pass_and_line(list(stream(path, max_passes=2)))
    # other shards, another shuffle: the same crops of the same (pass, line)
    sharded = {}
    for rank in range(2):
        sharded |= by_pass_and_line(
            list(stream(path, max_passes=2, rank=rank, world_size=2, shuffle_buffer=0))
        )
    assert sharded == whole and len(whole) == 40
    # another pass (or seed), other crops: the queries alone differ (a few may match by chance)
    assert sum(whole[0, line][0] != whole[1, line][0] for line in range(1, 21)) >= 17
    reseeded = by_pass_and_line(list(stream(path, max_passes=1, seed=1)))
    assert sum(reseeded[0, line][0] != whole[0, line][0] for line in range(1, 21)) >= 17


def test_workers_and_ranks_shard_documents_disjointly_and_completely(tmp_path: Path) -> None:
    lines = [beir_line(i, document(i, 10)) for i in range(23)]
    lines[4] = beir_line(4, "too short")  # bad lines shift which shard a document goes to
    lines[9] = "{not json"
    path = write_corpus(tmp_path / "corpus.jsonl", lines)
    seen = []
    for rank in range(2):
        shard = stream(path, rank=rank, world_size=2, on_bad_line="skip", shuffle_buffer=3)
        seen.append(
            [line_of(example) for example in DataLoader(shard, batch_size=None, num_workers=2)]
        )
    assert not set(seen[0]) & set(seen[1]) and all(seen)
    assert Counter(seen[0] + seen[1]) == Counter(set(range(1, 24)) - {5, 10})


def test_bad_lines_name_file_line_and_field_or_are_counted(tmp_path: Path) -> None:
    lines = [beir_line(i, document(i, 10)) for i in range(8)]
    lines[1] = json.dumps({"_id": "doc1", "title": "no text"})
    lines[3] = ""  # a blank line inside the file
    lines[4] = beir_line(4, " ", title=" ")
    lines[6] = beir_line(6, "two words")
    path = write_corpus(tmp_path / "corpus.jsonl", lines)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: missing field 'text'")):
        list(stream(path, nway=2))
    skipping = stream(path, nway=2, on_bad_line="skip")
    assert sorted(map(line_of, skipping)) == [1, 3, 6, 8]
    problems = {problem: count for (_, problem), count in skipping.bad_lines.counts.items()}
    assert problems == {
        "missing field 'text'": 1,
        "empty line": 1,
        "empty document: no title or text": 1,
        "document too short to crop: 2 words, fewer than data.crops.min_words=3": 1,
    }
    # a plain-text corpus: one document a line, the same rules
    text = write_corpus(tmp_path / "corpus.txt", [document(0, 9), "", document(2, 9), "a b"])
    with pytest.raises(DataFormatError, match=re.escape(f"{text}:2: empty line")):
        list(stream(text, nway=2))
    files = TrainFiles(str(text), format="crops")
    valid = validate_training_file(files, on_bad_line="skip", crops=SPEC)
    assert (valid.lines, valid.valid) == (4, 2)


def test_positive_document_gives_whole_documents(tmp_path: Path) -> None:
    path = write_corpus(tmp_path / "corpus.txt", [document(i, 8 + i) for i in range(6)])
    whole = CropSpec(min_ratio=0.2, max_ratio=0.5, min_words=3, positive="document")
    for example in stream(path, whole, max_passes=2):
        own = line_of(example) - 1
        assert span_of(example.query)[0] == own and example.query != example.positive
        assert example.positive == document(own, 8 + own) and example.positive_id == str(own + 1)
        for text, negative_id in zip(example.negatives, example.negative_ids, strict=True):
            index = int(negative_id) - 1
            assert index != own and text == document(index, 8 + index)


def test_crops_settings_are_checked(tmp_path: Path) -> None:
    path = beir_corpus(tmp_path / "corpus.jsonl", 2)
    with pytest.raises(ValueError, match="at least 3 are needed"):
        CropReader(path, SPEC, min_negatives=2)
    with pytest.raises(ValueError, match="data.crops is for format 'crops'"):
        make_reader("jsonl", path, crops=SPEC)
    with pytest.raises(ValueError, match=r"data.crops.min_ratio \(0.6\) is above max_ratio"):
        CropSpec(min_ratio=0.6, max_ratio=0.5)
    with pytest.raises(ValueError, match="data.crops.positive"):
        CropSpec(positive="query")
    # crops train on no query: none to leave out of a test set as seen in training
    path = beir_corpus(tmp_path / "three.jsonl", 3)
    datamodule = ColBERTDataModule(TrainFiles(str(path), format="crops"), None, crops=SPEC)
    assert datamodule.seen_queries().train == frozenset() and datamodule.valid_lines().valid == 3


def test_data_crops_trains_end_to_end(tmp_path: Path) -> None:
    # a tiny BEIR collection, cropped for training and searched for dev; one empty document
    folder = tmp_path / "collection"
    (folder / "qrels").mkdir(parents=True)
    texts = [document(i, 20) for i in range(30)]
    texts[7] = ""
    write_corpus(folder / "corpus.jsonl", [beir_line(i, text) for i, text in enumerate(texts)])
    queries = [json.dumps({"_id": f"q{i}", "text": f"d{i}w3 d{i}w4 d{i}w5"}) for i in range(5)]
    write_corpus(folder / "queries.jsonl", queries)
    qrels = ["query-id\tcorpus-id\tscore", *(f"q{i}\tdoc{i}\t1" for i in range(5))]
    write_corpus(folder / "qrels" / "test.tsv", qrels)
    overrides = [
        *TINY_OVERRIDES,
        "data=crops",
        f"data.root={folder}",
        "data.prepare=null",  # dev on the judged queries themselves: no query is trained on
        "data.dev.corpus=${data.root}/corpus.jsonl",
        "data.dev.queries=${data.root}/queries.jsonl",
        "data.dev.qrels=${data.root}/qrels/test.tsv",
        "data.num_workers=0",
        "data.batch_size=4",
        "trainer.max_steps=3",
        "logger=csv",
    ]
    cfg = compose_train(tmp_path / "run", tmp_path / "cache", overrides)
    assert cfg.data.train.path == str(folder / "corpus.jsonl")  # the dev collection's corpus
    results = train(cfg)
    assert results["steps"] == 3 and results["examples_seen"] == 12
    assert results["skipped_lines"] == 1  # the empty document, counted
    assert results["step0"]["step"] == 0 and results["final"]["step"] == 3
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["final"] == results["final"]
