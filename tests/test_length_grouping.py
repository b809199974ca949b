"""Length-grouped batching (``length_grouping``): same examples, less padding, exact resume.

The references are computed here from the stream's examples (``collate=None``): ungrouped
batches are consecutive runs of ``batch_size`` of them, and a pool of grouped batches holds the
same examples as a run of ``N * batch_size`` of them.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from colbert_lightning.data import ColBERTDataModule, TrainFiles
from colbert_lightning.data.collate import Collator
from colbert_lightning.data.readers import make_reader
from colbert_lightning.data.streaming import TripleStream
from colbert_lightning.data.types import TrainingBatch, TrainingExample
from colbert_lightning.modeling.tokenization import ColBERTTokenizer
from colbert_lightning.resources import resource_path
from tests.conftest import tiny_config
from tests.helpers import compose_train, triples_with_cranfield_dev


def cranfield_documents() -> list[str]:
    """The shipped Cranfield corpus' texts: lengths from a few words to a few hundred."""
    with gzip.open(Path(resource_path("cranfield")) / "corpus.jsonl.gz", "rt") as file:
        texts = [json.loads(line)["text"] for line in file]
    return [text for text in texts if text.strip()]


def write_triples(path: Path, count: int, bad_every: int = 0) -> Path:
    """``count`` lines of Cranfield triples (3 negatives), every ``bad_every``-th line broken."""
    documents = cranfield_documents()
    chooser = random.Random(7)
    lines = []
    for i in range(count):
        if bad_every and i % bad_every == bad_every - 1:
            lines.append("{broken")
            continue
        positive, *negatives = chooser.sample(documents, 4)
        lines.append(
            json.dumps({"query": f"query {i}", "positive": positive, "negatives": negatives})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def record(examples: list[TrainingExample]) -> TrainingBatch:
    """A collate that keeps the examples themselves (in ``queries``), tokenising nothing."""
    return TrainingBatch(queries=tuple(examples), documents=(), nway=1 + len(examples[0].negatives))


def make_stream(path: Path, **overrides: object) -> TripleStream:
    settings = {
        "nway": 3,
        "seed": 0,
        "shuffle_buffer": 16,
        "max_passes": 1,
        "batch_size": 4,
        "collate": record,
    } | overrides
    return TripleStream(path, make_reader("jsonl", path), **settings)


def sources(batch: TrainingBatch) -> list[str]:
    return [example.source for example in batch.queries]


def longest(example: TrainingExample) -> int:
    """The characters of the example's longest document, as padding sees it."""
    return max(len(text) for text in (example.positive, *example.negatives))


def chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@pytest.fixture(scope="module")
def tokenizer() -> ColBERTTokenizer:
    # long enough for most Cranfield documents (median 175 tokens, 90% under 340)
    return ColBERTTokenizer.from_config(tiny_config(doc_maxlen=512))


# ---- off: exactly today's batches ---------------------------------------------------------------


@pytest.mark.parametrize("off", [0, 1])
def test_off_batches_are_runs_of_consecutive_examples(
    tmp_path: Path, tokenizer: ColBERTTokenizer, off: int
) -> None:
    path = write_triples(tmp_path / "train.jsonl", 45, bad_every=6)
    settings = {"on_bad_line": "skip", "batch_size": 4}
    examples = list(make_stream(path, collate=None, **settings))
    batches = list(make_stream(path, length_grouping=off, **settings))
    assert [sources(batch) for batch in batches] == chunks([e.source for e in examples], 4)

    collate = Collator(tokenizer)
    default = list(make_stream(path, collate=collate, **settings))
    switched_off = list(make_stream(path, collate=collate, length_grouping=off, **settings))
    assert len(default) == len(switched_off) == 10  # 38 valid lines: the last batch holds 2
    for plain, other in zip(default, switched_off, strict=True):
        assert torch.equal(plain.queries.input_ids, other.queries.input_ids)
        assert torch.equal(plain.documents.input_ids, other.documents.input_ids)
        assert plain.skipped_lines == other.skipped_lines
    assert sum(batch.skipped_lines for batch in switched_off) == 7


def test_off_with_two_workers_over_passes_matches_the_default(tmp_path: Path) -> None:
    # 24 valid lines: 12 per worker and pass, 3 batches of 4; read to the end, so that the
    # workers stop cleanly
    path = write_triples(tmp_path / "train.jsonl", 30, bad_every=5)

    def taken(**overrides: object) -> list[tuple[list[str], int]]:
        stream = make_stream(path, on_bad_line="skip", max_passes=2, **overrides)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        return [(sources(batch), batch.skipped_lines) for batch in loader]

    default = taken()
    assert len(default) == 12
    assert taken(length_grouping=1) == taken(length_grouping=0) == default


# ---- on: the same examples, grouped by length within pools --------------------------------------


@pytest.mark.parametrize(("batch_size", "grouping"), [(1, 4), (3, 2), (4, 4), (7, 3), (5, 16)])
def test_grouped_pass_yields_each_example_once_within_its_pool(
    tmp_path: Path, batch_size: int, grouping: int
) -> None:
    path = write_triples(tmp_path / "train.jsonl", 101)
    examples = list(make_stream(path, collate=None))
    batches = list(make_stream(path, batch_size=batch_size, length_grouping=grouping))
    yielded = [source for batch in batches for source in sources(batch)]
    assert Counter(yielded) == Counter(example.source for example in examples)
    assert len(yielded) == len(examples) == 101
    # every batch full but the stream's last (101 is no multiple of any size tried but 1)
    assert [len(batch) for batch in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert len(batches) == -(-101 // batch_size)
    # pool p is batches p*N .. p*N + N - 1: the examples of run p of N * batch_size examples
    pools = chunks(batches, grouping)
    runs = chunks([example.source for example in examples], grouping * batch_size)
    assert len(pools) == len(runs)
    for pool, run in zip(pools, runs, strict=True):
        assert Counter(source for batch in pool for source in sources(batch)) == Counter(run)


def test_grouped_batches_are_contiguous_in_length_and_pad_less(
    tmp_path: Path, tokenizer: ColBERTTokenizer
) -> None:
    path = write_triples(tmp_path / "train.jsonl", 160)
    grouping, batch_size = 4, 8
    grouped = list(make_stream(path, batch_size=batch_size, length_grouping=grouping))
    ungrouped = list(make_stream(path, batch_size=batch_size))
    examples = [example for batch in ungrouped for example in batch.queries]

    # Within a pool, the batches split its examples sorted by length into contiguous ranges:
    # ordered by their shortest, each batch's longest is at most the next one's shortest.
    orders = []
    for pool in chunks(grouped, grouping):
        ranges = [(min(map(longest, b.queries)), max(map(longest, b.queries))) for b in pool]
        ordered = sorted(ranges)
        assert all(high <= low for (_, high), (low, _) in pairwise(ordered))
        orders.append(tuple(ordered.index(batch_range) for batch_range in ranges))
    # the batches of a pool come in shuffled order, not shortest first, and not in the same
    # order in every pool (5 pools of 4 batches: 24 orders each)
    assert orders != [(0, 1, 2, 3)] * 5
    assert len(set(orders)) > 1

    def padded_characters(batches: list[TrainingBatch]) -> int:
        return sum(len(b) * b.nway * max(map(longest, b.queries)) for b in batches)

    real = sum(len(text) for example in examples for text in (example.positive, *example.negatives))
    assert padded_characters(grouped) < padded_characters(ungrouped)
    assert real <= padded_characters(grouped)

    # The same through the real tokenizer: fewer padded document tokens, the same real ones.
    def tokens(grouping: int) -> tuple[int, int]:
        stream = make_stream(
            path,
            nway=2,
            batch_size=batch_size,
            length_grouping=grouping,
            collate=Collator(tokenizer),
        )
        batches = list(stream)
        real = sum(int(batch.documents.attention_mask.sum()) for batch in batches)
        return real, sum(batch.documents.input_ids.numel() for batch in batches)

    (real_off, padded_off), (real_on, padded_on) = tokens(0), tokens(grouping)
    assert real_on == real_off
    assert padded_on < padded_off


# ---- resume: skip_batches=k gives the uninterrupted stream's batches from k on ------------------


@pytest.mark.parametrize("skip", [0, 1, 2, 5, 8, 12, 13, 14, 15, 20])
def test_resume_inside_and_between_pools_and_past_the_end(tmp_path: Path, skip: int) -> None:
    # 66 lines, every 7th bad: 57 examples in batches of 4, pools of 4 batches (16 examples):
    # three whole pools, then one of 9 examples cut into batches of 4, 4 and 1
    path = write_triples(tmp_path / "train.jsonl", 66, bad_every=7)
    settings = {"on_bad_line": "skip", "length_grouping": 4}
    straight = [(sources(b), b.skipped_lines) for b in make_stream(path, **settings)]
    assert [len(batch) for batch, _ in straight] == [4] * 14 + [1]
    assert sum(skipped for _, skipped in straight) == 9  # each bad line once
    resumed = [
        (sources(b), b.skipped_lines) for b in make_stream(path, skip_batches=skip, **settings)
    ]
    assert resumed == straight[skip:]


def test_resume_skips_by_counting_without_collating(tmp_path: Path) -> None:
    path = write_triples(tmp_path / "train.jsonl", 60)
    collated: list[int] = []

    def counting(examples: list[TrainingExample]) -> TrainingBatch:
        collated.append(len(examples))
        return record(examples)

    batches = list(make_stream(path, collate=counting, length_grouping=4, skip_batches=6))
    assert len(batches) == len(collated) == 15 - 6  # only what is yielded is collated


@pytest.mark.parametrize("skip", [1, 4, 7, 8, 11, 41, 45])
def test_resume_with_two_workers_over_passes(tmp_path: Path, skip: int) -> None:
    # 42 valid lines: 21 per worker and pass; over 3 passes, 7 pools of 3 batches of 3 per
    # worker, some of them across a pass boundary (42 batches in all)
    path = write_triples(tmp_path / "train.jsonl", 50, bad_every=6)

    def batches(skip_batches: int) -> list[tuple[list[str], int]]:
        stream = make_stream(
            path,
            on_bad_line="skip",
            max_passes=3,
            batch_size=3,
            shuffle_buffer=5,
            length_grouping=3,
            skip_batches=skip_batches,
        )
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        return [(sources(batch), batch.skipped_lines) for batch in loader]

    straight = batches(0)
    assert len(straight) == 42
    assert sum(skipped for _, skipped in straight) == 8  # each bad line once
    assert batches(skip) == straight[skip:]


# ---- determinism, settings, the config -----------------------------------------------------------


def test_grouping_is_seeded(tmp_path: Path) -> None:
    path = write_triples(tmp_path / "train.jsonl", 80)

    def order(seed: int) -> list[list[str]]:
        return [sources(batch) for batch in make_stream(path, seed=seed, length_grouping=4)]

    assert order(3) == order(3)
    assert order(3) != order(4)


@pytest.mark.parametrize("value", [-1, 2.0, True, "4", None])
def test_bad_length_grouping_is_refused_naming_it(tmp_path: Path, value: object) -> None:
    path = write_triples(tmp_path / "train.jsonl", 4)
    message = rf"data.length_grouping must be an integer >= 0 .*got {value!r}"
    with pytest.raises(ValueError, match=message):
        make_stream(path, length_grouping=value)
    with pytest.raises(ValueError, match=message):
        ColBERTDataModule(TrainFiles(str(path)), tokenizer=None, length_grouping=value)


def test_the_config_passes_length_grouping_to_the_stream(
    tmp_path: Path, tokenizer: ColBERTTokenizer
) -> None:
    from hydra.utils import instantiate

    path = write_triples(tmp_path / "train.jsonl", 40)
    overrides = triples_with_cranfield_dev(path)
    default = instantiate(compose_train(tmp_path, tmp_path, overrides).data, tokenizer=tokenizer)
    assert default.length_grouping == 0 and default.train_dataset().length_grouping == 0
    cfg = compose_train(tmp_path, tmp_path, [*overrides, "data.length_grouping=4"])
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    assert datamodule.train_dataset().length_grouping == 4
    cfg = compose_train(tmp_path, tmp_path, [*overrides, "data.length_grouping=-2"])
    with pytest.raises(Exception, match="data.length_grouping"):
        instantiate(cfg.data, tokenizer=tokenizer)
