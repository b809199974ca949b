"""Tests for TripleStream (sharding, passes, shuffling, negatives, bad lines) and Collator."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import colbert_lightning.resources
from colbert_lightning.data import ColBERTDataModule, TrainFiles
from colbert_lightning.data.collate import Collator
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.readers import make_reader
from colbert_lightning.data.streaming import TripleStream
from colbert_lightning.data.types import TrainingBatch, TrainingExample
from colbert_lightning.modeling.config import ColBERTConfig
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, load_tokenizer


def write_training_file(path: Path, count: int, negatives: int = 3) -> Path:
    lines = [
        json.dumps(
            {
                "query": f"query {i}",
                "positive": f"positive {i}",
                "negatives": [f"negative {i}.{j}" for j in range(negatives)],
            }
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_stream(path: Path, **overrides: object) -> TripleStream:
    settings = {"nway": 2, "seed": 0, "shuffle_buffer": 0, "max_passes": 1} | overrides
    return TripleStream(path, make_reader("jsonl", path), **settings)


@pytest.fixture(scope="module")
def tokenizer() -> ColBERTTokenizer:
    config = ColBERTConfig(
        tokenizer=colbert_lightning.resources.resource_path("tokenizer/bert-base-uncased"),
        encoder_config={"model_type": "bert"},
    )
    return ColBERTTokenizer(load_tokenizer(config), config)


def queries_over_ranks_and_workers(path: Path, max_passes: int) -> list[str]:
    seen = []
    for rank in range(2):
        stream = make_stream(
            path, rank=rank, world_size=2, max_passes=max_passes, shuffle_buffer=8, seed=rank
        )
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        seen += [example.query for example in loader]
    return seen


def test_each_example_once_per_pass_across_ranks_and_workers(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 101)
    expected = Counter(f"query {i}" for i in range(101))
    assert Counter(queries_over_ranks_and_workers(path, max_passes=1)) == expected
    twice = Counter(queries_over_ranks_and_workers(path, max_passes=2))
    assert twice == Counter({query: 2 for query in expected})


def test_rank_shards_without_workers(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 10)
    shards = [
        [example.query for example in make_stream(path, rank=rank, world_size=3)]
        for rank in range(3)
    ]
    assert shards[1] == ["query 1", "query 4", "query 7"]
    assert sorted(sum(shards, [])) == sorted(f"query {i}" for i in range(10))


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 200)

    def order(seed: int) -> list[str]:
        return [example.query for example in make_stream(path, seed=seed, shuffle_buffer=50)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(order(2))
    unshuffled = [example.query for example in make_stream(path, shuffle_buffer=1)]
    assert unshuffled == [f"query {i}" for i in range(200)]
    assert order(1) != unshuffled


def test_passes_reshuffle_and_endless_mode_keeps_going(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 30)
    stream = make_stream(path, shuffle_buffer=10, max_passes=None)
    iterator = iter(stream)
    first, second, third = ([next(iterator).query for _ in range(30)] for _ in range(3))
    assert sorted(first) == sorted(second) == sorted(third)
    assert first != second


def test_negatives_sampled_deterministically(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 20, negatives=5)
    first = list(make_stream(path, nway=3, seed=4))
    again = list(make_stream(path, nway=3, seed=4))
    other = list(make_stream(path, nway=3, seed=5))
    assert all(len(example.negatives) == 2 for example in first)
    assert first == again
    assert [e.negatives for e in first] != [e.negatives for e in other]
    for i, example in enumerate(first):
        assert set(example.negatives) <= {f"negative {i}.{j}" for j in range(5)}


def test_bad_lines_raise_or_are_counted(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 6)
    lines = path.read_text().splitlines()
    lines[2] = "{broken"
    lines[4] = ""
    path.write_text("\n".join(lines) + "\n\n")  # the trailing blank line is no error
    with pytest.raises(DataFormatError, match=r"train.jsonl:3: bad JSON"):
        list(make_stream(path))
    stream = make_stream(path, on_bad_line="skip")
    assert [example.query for example in stream] == ["query 0", "query 1", "query 3", "query 5"]
    assert stream.bad_lines.total == 2
    assert stream.bad_lines.counts[(str(path), "empty line")] == 1


def test_too_few_negatives_for_nway_is_a_bad_line(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 3, negatives=2)
    with pytest.raises(DataFormatError, match=":1: needs at least 3 negatives, has 2"):
        list(make_stream(path, nway=4))


def test_empty_file_and_too_many_shards(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        list(make_stream(empty))
    small = write_training_file(tmp_path / "small.jsonl", 2)
    with pytest.raises(ValueError, match="fewer than the 3 shards"):
        list(make_stream(small, rank=2, world_size=3))


def test_all_bad_lines_in_endless_mode_raises_instead_of_spinning(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{\n{\n")
    with pytest.raises(ValueError, match="none of the 2 lines"):
        list(make_stream(path, on_bad_line="skip", max_passes=None))


def test_stream_holds_no_lines(tmp_path: Path) -> None:
    # Design check: the stream keeps only its settings and the reader between iterations.
    path = write_training_file(tmp_path / "train.jsonl", 50)
    stream = make_stream(path)
    list(stream)
    assert not any(isinstance(value, (list, tuple)) for value in vars(stream).values())


def test_batches_carry_skipped_line_counts(tmp_path: Path, tokenizer: ColBERTTokenizer) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 7, negatives=2)
    lines = path.read_text().splitlines()
    lines[1] = "[]"
    path.write_text("\n".join(lines) + "\n")
    stream = make_stream(
        path, nway=3, batch_size=2, collate=Collator(tokenizer), on_bad_line="skip"
    )
    batches = list(DataLoader(stream, batch_size=None, num_workers=0))
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert [batch.skipped_lines for batch in batches] == [1, 0, 0]
    assert all(isinstance(batch, TrainingBatch) and batch.nway == 3 for batch in batches)
    assert batches[0].documents.input_ids.shape[0] == 6


def test_collator_orders_documents(tokenizer: ColBERTTokenizer) -> None:
    examples = [
        TrainingExample("first query", "alpha", ("beta", "gamma")),
        TrainingExample("second query", "delta", ("epsilon", "zeta")),
    ]
    batch = Collator(tokenizer)(examples)
    expected = tokenizer.documents(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    assert torch.equal(batch.documents.input_ids, expected.input_ids)
    assert torch.equal(
        batch.queries.input_ids, tokenizer.queries(["first query", "second query"]).input_ids
    )
    assert batch.nway == 3 and batch.skipped_lines == 0
    with pytest.raises(ValueError, match="same number of negatives"):
        Collator(tokenizer)([examples[0], TrainingExample("q", "p", ("n",))])
    with pytest.raises(ValueError, match="empty list"):
        Collator(tokenizer)([])


def test_stream_checks_its_settings(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 4)
    with pytest.raises(ValueError, match="rank"):
        make_stream(path, rank=2, world_size=2)
    with pytest.raises(ValueError, match="on_bad_line"):
        make_stream(path, on_bad_line="ignore")
    with pytest.raises(ValueError, match="its reader names"):
        TripleStream(tmp_path / "other.jsonl", make_reader("jsonl", path), 2, 0, 0)


@pytest.mark.parametrize("nway", [1, 0, -1, 2.0, True, "2", None])
def test_stream_and_datamodule_reject_the_same_nway_alike(tmp_path: Path, nway: object) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 4)
    message = rf"data.nway must be an integer >= 2 \(a positive and a negative\), got {nway!r}"
    with pytest.raises(ValueError, match=message):
        make_stream(path, nway=nway)
    with pytest.raises(ValueError, match=message):
        ColBERTDataModule(TrainFiles(str(path)), tokenizer=None, nway=nway)


@pytest.mark.parametrize("nway", [2, 3, 4])
def test_stream_and_datamodule_accept_the_same_nway(tmp_path: Path, nway: int) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 4)
    assert all(len(example.negatives) == nway - 1 for example in make_stream(path, nway=nway))
    assert ColBERTDataModule(TrainFiles(str(path)), tokenizer=None, nway=nway).nway == nway


# ---- shards of valid lines: bad lines anywhere, every shard gets its share --------------------


def write_half_bad_file(path: Path, lines: int = 16) -> Path:
    """Every even line bad: sharded by line over two shards, shard 1 would hold no valid one."""
    records = [
        json.dumps({"query": f"query {i}", "positive": f"positive {i}", "negatives": [f"n {i}"]})
        if i % 2 == 0
        else "{broken"
        for i in range(lines)
    ]
    path.write_text("\n".join(records) + "\n")
    return path


VALID_QUERIES = [f"query {i}" for i in range(0, 16, 2)]


def test_workers_share_the_valid_lines_whatever_the_bad_ones(
    tmp_path: Path, tokenizer: ColBERTTokenizer
) -> None:
    path = write_half_bad_file(tmp_path / "train.jsonl")
    stream = make_stream(
        path,
        on_bad_line="skip",
        max_passes=2,
        batch_size=2,
        collate=Collator(tokenizer),
        shuffle_buffer=4,
    )
    batches = list(DataLoader(stream, batch_size=None, num_workers=2))
    # 8 valid lines, 4 per worker: 2 batches per worker and pass
    assert len(batches) == 8
    queries = Counter(
        tokenizer.tokenizer.decode(row[2:], skip_special_tokens=True)
        for batch in batches
        for row in batch.queries.input_ids
    )
    assert queries == Counter({query: 2 for query in VALID_QUERIES})
    assert sum(batch.skipped_lines for batch in batches) == 8  # each bad line once


def test_ranks_and_workers_each_get_a_quarter_of_the_valid_lines(tmp_path: Path) -> None:
    path = write_half_bad_file(tmp_path / "train.jsonl")
    per_rank = []
    for rank in range(2):
        stream = make_stream(path, on_bad_line="skip", rank=rank, world_size=2)
        per_rank.append([e.query for e in DataLoader(stream, batch_size=None, num_workers=2)])
    assert [len(queries) for queries in per_rank] == [4, 4]
    assert sorted(sum(per_rank, [])) == sorted(VALID_QUERIES)


def test_resumed_stream_continues_where_it_stopped_despite_bad_lines(
    tmp_path: Path, tokenizer: ColBERTTokenizer
) -> None:
    path = write_half_bad_file(tmp_path / "train.jsonl", lines=40)

    def batches(skip: int, count: int) -> list[torch.Tensor]:
        stream = make_stream(
            path,
            on_bad_line="skip",
            max_passes=None,
            batch_size=3,
            collate=Collator(tokenizer),
            shuffle_buffer=5,
            skip_batches=skip,
        )
        loader = iter(DataLoader(stream, batch_size=None, num_workers=2))
        return [next(loader).queries.input_ids for _ in range(count)]

    straight = batches(0, 9)
    resumed = batches(5, 4)
    assert all(torch.equal(a, b) for a, b in zip(straight[5:], resumed, strict=True))


def test_a_file_changed_after_it_was_scanned_is_named(tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "train.jsonl", 4)
    stream = make_stream(path)
    write_training_file(path, 5)
    with pytest.raises(RuntimeError, match=r"changed after it was scanned \(4 lines, 4 valid"):
        list(stream)


def ddp_stream_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One of two gloo processes: the DataModule's stream for this rank, as DDP trains it."""
    from datetime import timedelta
    from types import SimpleNamespace

    import torch.distributed as dist

    from tests.helpers import gloo_process_group

    # a process left waiting for the other would fail after the timeout, not hang the tests
    with gloo_process_group(rank, port, world_size, timeout=timedelta(seconds=60)):
        config = ColBERTConfig(
            tokenizer=colbert_lightning.resources.resource_path("tokenizer/bert-base-uncased"),
            encoder_config={"model_type": "bert"},
        )
        tokenizer = ColBERTTokenizer(load_tokenizer(config), config)
        outcome: dict[str, object] = {}
        for name, policy in (("half_bad", "skip"), ("all_bad", "skip"), ("last_bad", "error")):
            datamodule = ColBERTDataModule(
                TrainFiles(f"{folder}/{name}.jsonl"),
                tokenizer,
                batch_size=2,
                num_workers=0,
                shuffle_buffer=0,
                on_bad_line=policy,
            )
            datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
            try:
                datamodule.setup("fit")
                loader = iter(datamodule.train_dataloader())
                queries, skipped = [], 0
                for _ in range(4):  # two passes over this rank's 4 valid lines
                    batch = next(loader)
                    ids = batch.queries.input_ids
                    queries += [tokenizer.tokenizer.decode(row[2:], True) for row in ids]
                    skipped += batch.skipped_lines
                    step = torch.tensor([float(len(batch))])
                    dist.all_reduce(step)  # as DDP's gradient all-reduce, every step
                outcome[name] = {"queries": queries, "skipped": skipped}
            except ValueError as error:
                outcome[name] = {"error": str(error)}
            dist.barrier()  # both processes get here: neither is left waiting
        torch.save(outcome, f"{folder}/rank{rank}.pt")


def test_two_ddp_processes_share_the_valid_lines_and_fail_alike(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from tests.helpers import free_port
    from tests.test_distributed import WORLD

    write_half_bad_file(tmp_path / "half_bad.jsonl")
    (tmp_path / "all_bad.jsonl").write_text("{broken\n" * 16)
    last_bad = write_training_file(tmp_path / "last_bad.jsonl", 16)
    last_bad.write_text(last_bad.read_text() + "{broken\n")
    mp.start_processes(
        ddp_stream_worker,
        args=(WORLD, free_port(), str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    trained = [Counter(outcome["half_bad"]["queries"]) for outcome in ranks]
    assert sum(trained, Counter()) == Counter({query: 2 for query in VALID_QUERIES})
    assert all(len(queries) == 4 for queries in trained)  # half the valid lines each
    assert sum(outcome["half_bad"]["skipped"] for outcome in ranks) == 8
    # every process stops alike before its first step, none waits for another
    message = "none of the 16 lines of .*all_bad.jsonl is a valid example"
    assert all(re.search(message, outcome["all_bad"]["error"]) for outcome in ranks)
    assert all(":17: bad JSON" in outcome["last_bad"]["error"] for outcome in ranks)
