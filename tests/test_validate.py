"""Bad training data found early: ``data.validate`` before the first step, and the vocabulary
check of the first batches ([UNK] and words spelled out letter by letter)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from colbert_lightning.data import ColBERTDataModule, DataFormatError, TrainFiles
from colbert_lightning.data.collate import Collator, VocabularyFit
from colbert_lightning.data.datamodule import validate_training_file
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling.tokenization import ColBERTTokenizer
from colbert_lightning.training import ColBERTModule
from colbert_lightning.training.run import train
from tests.conftest import tiny_config
from tests.helpers import TINY_OVERRIDES, compose_train, triples_with_cranfield_dev


def write_triples(path: Path, count: int, bad: dict[int, str]) -> Path:
    """``count`` lines, those numbered (1-based) in ``bad`` replaced by their text."""
    lines = [
        bad.get(
            number,
            json.dumps({"query": f"wing {number}", "positive": "lift", "negatives": ["drag"]}),
        )
        for number in range(1, count + 1)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer() -> ColBERTTokenizer:
    return ColBERTTokenizer.from_config(tiny_config())


def test_validate_stops_at_a_bad_last_line_before_any_step(tmp_path, monkeypatch):
    triples = write_triples(tmp_path / "train.jsonl", 40, {40: '{"query": "cut off'})

    def never(*args, **kwargs):
        raise AssertionError("training reached the stream: validation did not stop it first")

    monkeypatch.setattr(ColBERTDataModule, "train_dataloader", never)
    monkeypatch.setattr(ColBERTModule, "training_step", never)
    overrides = [
        *TINY_OVERRIDES,
        *triples_with_cranfield_dev(triples),
        "data.validate=true",
        "callbacks=none",
        "logger=none",
    ]
    with pytest.raises(DataFormatError, match=r"train.jsonl:40: bad JSON: Unterminated string"):
        train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))


def test_validate_under_skip_logs_the_bad_lines_before_training(tmp_path, tokenizer, caplog):
    triples = write_triples(tmp_path / "train.jsonl", 16, {n: "{broken" for n in range(2, 17, 2)})
    files = TrainFiles(str(triples))
    silent = ColBERTDataModule(files, tokenizer, on_bad_line="skip")
    with caplog.at_level(logging.INFO):
        silent.setup("fit")
    assert "validated" not in caplog.text  # off by default: the stream counts them as it trains
    assert (silent.valid_lines().lines, silent.valid_lines().valid) == (16, 8)
    datamodule = ColBERTDataModule(files, tokenizer, on_bad_line="skip", validate=True)
    with caplog.at_level(logging.INFO):
        datamodule.setup("fit")
    assert (
        f"validated {triples}: 8 of its 16 lines are bad and will be skipped: bad JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1) (8)"
    ) in caplog.text


def test_validate_training_file_without_a_model(tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\twing lift\nq2\tshock waves\n")
    collection = tmp_path / "collection.tsv"
    collection.write_text("p1\tlift\np2\tdrag\n")
    triples = tmp_path / "train.tsv"
    triples.write_text("q1\tp1\tp2\nq2\tp2\tp1\nq2\tp1\tp9\n")
    files = TrainFiles(str(triples), "msmarco_ids", str(queries), str(collection))
    with pytest.raises(DataFormatError, match=r"train.tsv:3: unknown passage id 'p9'"):
        validate_training_file(files)
    valid_lines = validate_training_file(files, on_bad_line="skip")
    assert (valid_lines.lines, valid_lines.valid, valid_lines.bad) == (3, 2, 1)
    assert 3 not in valid_lines and 1 in valid_lines and 2 in valid_lines


# ---- the vocabulary check of the first batches ------------------------------------------------

TEXTS = {  # query, positive, negative
    "english": (
        "wing lift at supersonic speed",
        "the lift of a thin wing in supersonic flow",
        "heat transfer in a laminar boundary layer",
    ),
    "chinese": ("机翼在超音速下的升力", "超音速流动中薄机翼的升力与阻力", "层流边界层中的传热"),
    "cyrillic": (
        "подъёмная сила крыла",
        "подъёмная сила тонкого крыла в сверхзвуковом потоке",
        "теплообмен в ламинарном пограничном слое",
    ),
}


def batch_of(tokenizer: ColBERTTokenizer, language: str):
    query, positive, negative = TEXTS[language]
    examples = [TrainingExample(query, positive, (negative,)) for _ in range(4)]
    return Collator(tokenizer)(examples)


@pytest.mark.parametrize(
    ("language", "warning"),
    [
        ("english", None),
        ("chinese", "% of them are [UNK]"),
        ("cyrillic", "it cuts words into"),
    ],
)
def test_vocabulary_fit_warns_on_text_the_vocabulary_cannot_spell(
    tokenizer, caplog, language, warning
):
    fit = VocabularyFit("bert-base-uncased", batches=2)
    batch = batch_of(tokenizer, language)
    with caplog.at_level(logging.INFO, logger="colbert_lightning.data.collate"):
        fit.add(batch)
        assert not caplog.records  # logged when the batches are counted
        fit.add(batch)
        fit.add(batch)
    [record] = caplog.records  # once
    assert "the first 2 training batches (this process) have" in record.message
    if warning is None:
        assert record.levelno == logging.INFO
        assert fit.unknown_rate == 0 and fit.pieces_per_word < 1.3
        return
    assert record.levelno == logging.WARNING
    assert warning in record.message
    assert "The tokenizer bert-base-uncased does not fit this text" in record.message
    assert "bert-base-multilingual-cased or xlm-roberta-base" in record.message


def test_datamodule_checks_the_vocabulary_on_the_first_batches(tmp_path, tokenizer, caplog):
    triples = write_triples(tmp_path / "train.jsonl", 4, {})
    datamodule = ColBERTDataModule(TrainFiles(str(triples)), tokenizer)
    datamodule.trainer = SimpleNamespace(training=True)
    batch = batch_of(tokenizer, "cyrillic")
    with caplog.at_level(logging.WARNING):
        for _ in range(99):
            datamodule.on_after_batch_transfer(batch, 0)
        assert not caplog.records
        datamodule.on_after_batch_transfer(batch, 0)  # the 100th
        datamodule.on_after_batch_transfer(batch, 0)
        datamodule.teardown("fit")
    [record] = caplog.records
    assert "the first 100 training batches" in record.message
    assert "it cuts words into" in record.message
    # a run shorter than that reports what it counted when it ends
    short = ColBERTDataModule(TrainFiles(str(triples)), tokenizer)
    short.trainer = SimpleNamespace(training=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        short.on_after_batch_transfer(batch_of(tokenizer, "chinese"), 0)
        short.teardown("fit")
    assert "the first 1 training batches" in caplog.text and "are [UNK]" in caplog.text
