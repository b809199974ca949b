"""MLM pretraining from random weights: packing, masking, sharding, a run, resume, the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors import safe_open
from torch.utils.data import DataLoader

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.corpora import iter_corpus_texts
from colbert_lightning.modeling import ColBERT, ColBERTConfig
from colbert_lightning.pretraining.mlm import load_tokenizer, pretrain
from colbert_lightning.pretraining.packing import (
    IGNORE_INDEX,
    PackedCorpusStream,
    TokenMasker,
    pack_sequences,
    seeded_generator,
    shard_index,
    tokenize,
)
from colbert_lightning.resources import resource_path
from tests.helpers import REPO

CLS, SEP, MASK, PAD = 101, 102, 103, 0
TINY = [
    "encoder_config.hidden_size=32",
    "encoder_config.num_hidden_layers=1",
    "encoder_config.intermediate_size=64",
    "encoder_config.max_position_embeddings=64",
    "data.max_length=32",
    "data.batch_size=16",
    "data.validation_documents=20",
    "data.num_workers=0",
    "cpu_threads=1",  # a loaded 2-core machine runs a tiny model ~5x slower with 2 threads
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]
RUN = [
    *TINY,
    "trainer.max_steps=40",
    "module.optimizer.lr=3e-3",
    "callbacks.last_checkpoint.every_n_train_steps=20",
    "callbacks.evaluation.schedule.interval=20",
]
TOKENS_PER_STEP = 16 * 32


def compose_pretrain(output_dir: Path, overrides: list[str] = ()):
    """``conf/pretrain.yaml`` as the command line composes it, writing under ``output_dir``."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "pretrain",
            overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={output_dir}", *overrides],
        )


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resource_path("tokenizer/bert-base-uncased"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny pretraining run on the shipped Cranfield: (output folder, pretrain.json)."""
    output_dir = tmp_path_factory.mktemp("pretrain")
    results = pretrain(compose_pretrain(output_dir, RUN))
    return output_dir, results


# ---- packing ----------------------------------------------------------------------------------


def test_packing_keeps_every_token_in_full_sequences():
    rng = random.Random(0)
    # lengths from one token to several bodies, so that documents span sequences
    documents = [
        [rng.randrange(1000, 2000) for _ in range(rng.choice([1, 2, 5, 13, 29, 40]))]
        for _ in range(60)
    ]
    max_length = 12
    sequences = list(pack_sequences(documents, max_length, CLS, SEP))
    assert sequences
    for sequence in sequences:
        assert len(sequence) == max_length
        assert sequence[0] == CLS and sequence[-1] == SEP
        assert CLS not in sequence[1:]
    # the bodies, end to end, are the documents with one [SEP] between consecutive ones
    bodies = [token for sequence in sequences for token in sequence[1:-1]]
    stream = [token for number, doc in enumerate(documents) for token in [SEP] * bool(number) + doc]
    assert bodies == stream[: len(bodies)]
    assert len(stream) - len(bodies) < max_length - 2  # only a partial body is left over


def test_packed_stream_reads_its_shard_in_order_without_the_validation_documents(tokenizer):
    cranfield = resource_path("cranfield")
    stream = PackedCorpusStream(
        [cranfield],
        tokenizer,
        max_length=24,
        batch_size=8,
        masker=TokenMasker.from_tokenizer(tokenizer),
        shuffle_buffer=0,  # file order, so that the expected tokens are known
        skip_documents=5,
    )
    batches = stream.batches(shard=1, num_shards=3)
    original = []
    for _ in range(6):
        batch = next(batches)
        assert batch.input_ids.shape == (8, 24)
        restored = torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids)
        original += [token for row in restored.tolist() for token in row[1:-1]]
    texts = [text.text for text in iter_corpus_texts([cranfield], 1, 3) if text.index >= 5]
    documents = tokenize(tokenizer, texts[:40])
    expected = [t for number, doc in enumerate(documents) for t in [SEP] * bool(number) + doc]
    assert original == expected[: len(original)]


# ---- masking ----------------------------------------------------------------------------------


def _sequences(count: int, length: int, seed: int) -> torch.Tensor:
    """Packed-looking rows: [CLS] ... [SEP], with a few inner [SEP]s and one [PAD]."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(1000, 30000, (count, length), generator=generator)
    rows[:, 0], rows[:, -1] = CLS, SEP
    rows[:, 7], rows[::3, 20], rows[1::5, 11] = SEP, SEP, PAD
    return rows


def test_masking_draws_about_fifteen_percent_of_ordinary_tokens_80_10_10(tokenizer):
    masker = TokenMasker.from_tokenizer(tokenizer, 0.15)
    special = torch.tensor(tokenizer.all_special_ids)
    generator = seeded_generator("test")
    chosen = maskable = masked = kept = replaced = 0
    per_position = torch.zeros(64)
    for seed in range(40):
        rows = _sequences(32, 64, seed)
        batch = masker(rows, generator)
        ordinary = ~torch.isin(rows, special)
        selected = batch.labels != IGNORE_INDEX
        # specials never chosen and never changed; unchosen tokens unchanged, labelled -100
        assert not (selected & ~ordinary).any()
        assert torch.equal(batch.input_ids[~selected], rows[~selected])
        assert torch.equal(batch.labels[selected], rows[selected])
        assert (batch.labels[~selected] == IGNORE_INDEX).all()
        inputs = batch.input_ids[selected]
        assert not torch.isin(inputs[inputs != MASK], special).any()  # no random special
        chosen += int(selected.sum())
        maskable += int(ordinary.sum())
        masked += int((inputs == MASK).sum())
        kept += int((inputs == rows[selected]).sum())
        replaced += int(((inputs != MASK) & (inputs != rows[selected])).sum())
        per_position += selected.float().sum(dim=0)
    assert abs(chosen / maskable - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02
    assert abs(replaced / chosen - 0.1) < 0.02
    # every ordinary position is chosen about as often: not always the first ones of a row
    rate = per_position[1:7] / (40 * 32)
    assert ((rate > 0.1) & (rate < 0.2)).all(), rate


def test_masking_is_reproducible_from_its_seed(tokenizer):
    masker = TokenMasker.from_tokenizer(tokenizer)
    rows = _sequences(8, 32, 0)
    first = masker(rows, seeded_generator("a"))
    again = masker(rows, seeded_generator("a"))
    other = masker(rows, seeded_generator("b"))
    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)


# ---- sharding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_shards_are_disjoint_and_complete_over_ranks_and_workers(
    tokenizer, world_size, num_workers
):
    cranfield = resource_path("cranfield")
    held_out = 7
    seen: list[int] = []
    for rank in range(world_size):
        stream = PackedCorpusStream(
            [cranfield],
            tokenizer,
            16,
            4,
            TokenMasker.from_tokenizer(tokenizer),
            skip_documents=held_out,
            rank=rank,
            world_size=world_size,
        )
        for worker in range(num_workers):
            shard, num_shards = shard_index(rank, worker, world_size, num_workers)
            seen += [text.index for text in stream.documents(shard, num_shards, pass_index=0)]
    total = sum(1 for _ in iter_corpus_texts([cranfield]))
    assert len(seen) == len(set(seen))  # disjoint
    assert set(seen) == set(range(held_out, total))  # complete, validation documents left out


def test_dataloader_workers_read_their_own_shards(tokenizer, tmp_path):
    # one ordinary word per document: every token of a batch names the document it came from
    words = [
        word
        for word, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        if word.isalpha() and word.islower() and len(word) > 3
    ][:400]
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(words) + "\n")
    document_of = {
        tokenizer.convert_tokens_to_ids(word): number for number, word in enumerate(words)
    }
    stream = PackedCorpusStream(
        [corpus],
        tokenizer,
        10,
        4,
        TokenMasker.from_tokenizer(tokenizer),
        skip_documents=0,
        rank=1,
        world_size=2,
    )
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    shards = {0: set(), 1: set()}
    for number, batch in zip(range(8), loader, strict=False):
        restored = torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids)
        documents = {document_of[t] for t in restored.flatten().tolist() if t in document_of}
        shards[number % 2] |= {document % 4 for document in documents}  # batches alternate
    assert shards == {0: {2}, 1: {3}}  # rank 1's workers read shards 2 and 3 of 4


# ---- a run ------------------------------------------------------------------------------------


def test_mlm_loss_falls_from_the_uniform_guess(run, tokenizer):
    _, results = run
    uniform = math.log(len(tokenizer))  # cross-entropy of a uniform guess over the vocabulary
    step0, final = results["val_step0"], results["val"]
    assert step0["step"] == 0 and final["step"] == 40
    assert abs(step0["val/mlm_loss"] - uniform) < 0.3, step0
    assert final["val/mlm_loss"] < step0["val/mlm_loss"] - 1.0, (step0, final)
    assert final["val/mlm_accuracy"] > 0.02
    assert results["tokens_seen"] == 40 * TOKENS_PER_STEP
    assert results["train"]["mlm_loss"] < uniform - 1.0


def test_run_folder_holds_the_encoder_then_pretrain_json(run, tokenizer):
    output_dir, results = run
    written = json.loads((output_dir / "pretrain.json").read_text())
    assert written["steps"] == 40 and written["val"] == results["val"]
    assert written["corpora"] == [resource_path("cranfield")]
    assert "git_commit" in written and written["seconds"] > 0
    encoder = output_dir / "encoder"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(os.listdir(encoder))
    assert load_tokenizer(encoder).get_vocab() == tokenizer.get_vocab()
    assert not [name for name in os.listdir(output_dir) if ".tmp-" in name]
    with safe_open(encoder / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and not [name for name in names if "cls." in name or "pooler" in name]
    header = (output_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/mlm_loss" in header and "train/mlm_accuracy" in header


def test_saved_encoder_loads_into_colbert_with_every_encoder_weight(run):
    output_dir, _ = run
    encoder = str(output_dir / "encoder")
    model = ColBERT.from_config(ColBERTConfig(init="pretrained", name_or_path=encoder))
    summary = model.init_summary
    assert summary.random == {"linear": 32 * 128}, summary.table()  # only the projection
    assert set(summary.loaded) == {"encoder.embeddings", "encoder.encoder"}
    trained = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = trained["state_dict"]
    for name, parameter in model.encoder.named_parameters():
        assert torch.equal(parameter, state[f"model.bert.{name}"]), name


def test_resume_continues_the_step_count(run, tmp_path):
    output_dir, first = run
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    overrides = [
        *[o for o in RUN if not o.startswith("trainer.max_steps")],
        "trainer.max_steps=45",
        f"ckpt_path='{checkpoint}'",
    ]
    results = pretrain(compose_pretrain(tmp_path, overrides))
    assert results["steps"] == 45
    assert results["tokens_seen"] == 45 * TOKENS_PER_STEP
    with open(tmp_path / "csv" / "metrics.csv") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file) if row.get("train/mlm_loss")]
    assert len(steps) == 5 and min(steps) >= 40  # only steps 41..45 were trained here
    assert results["val_step0"] == first["val_step0"]  # the history travels with checkpoints
    assert results["val"]["step"] == 45


# ---- config -----------------------------------------------------------------------------------


def test_default_sizes_are_the_tiny_models_that_loads_them(tmp_path):
    cfg = compose_pretrain(tmp_path)
    tiny = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    assert OmegaConf.to_container(cfg.encoder_config) == OmegaConf.to_container(tiny.encoder_config)
    assert cfg.corpora == [resource_path("cranfield")]
    distributed = compose_pretrain(tmp_path, ["trainer=ddp_cpu"])
    assert distributed.trainer.strategy == "ddp" and distributed.trainer.max_steps == 500


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.max_length=4", "data.max_length"),
        ("corpora=[/no/such/corpus]", "corpora"),
        ("encoder_config.model_type=roberta", "model_type"),
        ("data.max_length=100", "max_position_embeddings"),
        ("data.mask_probability=1.5", "data.mask_probability"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message, tmp_path):
    cfg = compose_pretrain(tmp_path, [*TINY, "trainer.max_steps=2", override])
    # the classes' ValueError, or hydra's InstantiationException quoting it
    with pytest.raises(Exception, match=message):
        pretrain(cfg)
    assert not (tmp_path / "pretrain.json").exists()


# ---- the command ------------------------------------------------------------------------------


def test_command_runs_end_to_end_through_hydra(tmp_path):
    run_dir = tmp_path / "run"
    arguments = [
        *[o for o in TINY if not o.startswith(("data.", "encoder_config.hidden"))],
        "encoder_config.hidden_size=16",
        "data.max_length=16",
        "data.batch_size=2",
        "data.validation_documents=3",
        "data.num_workers=0",
        "trainer.max_steps=2",
        f"hydra.run.dir={run_dir}",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    completed = subprocess.run(
        [sys.executable, "-m", "colbert_lightning.pretrain", *arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((run_dir / "pretrain.json").read_text())
    assert results["steps"] == 2 and results["val"]["step"] == 2
    assert (run_dir / "encoder" / "config.json").is_file()
    assert json.loads((run_dir / "encoder" / "config.json").read_text())["hidden_size"] == 16
