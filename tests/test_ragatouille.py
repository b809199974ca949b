"""RAGTrainer: RAGatouille's training script, with only the import changed, on a tiny model."""

from __future__ import annotations

import csv
import json
import logging
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel

from colbert_lightning.compat.ragatouille import ActivationCheckpointing
from colbert_lightning.compat.raw_data import (
    group_by_query,
    query_triples,
    raw_kind,
    write_training_data,
)
from colbert_lightning.data.beir import find_beir_file, load_corpus, load_qrels, load_queries
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.formats import detect_format, write_folder
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.bm25 import BM25Retriever

# every override a test adds: no DataLoader worker, a short query, no CSV logger
QUICK = ["data.num_workers=0", "model.query_maxlen=16", "logger=none"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A "pretrained" encoder folder, as bert-base-uncased would be, but 32 wide."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resource_path("tokenizer/bert-base-uncased")).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def cranfield():
    """12 (query, relevant abstract) pairs and 200 abstracts, from the shipped Cranfield."""
    root = resource_path("cranfield")
    corpus = load_corpus(find_beir_file(root, "corpus"))
    queries = load_queries(find_beir_file(root, "queries"))
    text_of = dict(zip(corpus.ids, corpus.texts, strict=True))
    pairs = []
    for query_id, grades in load_qrels(f"{root}/qrels/test.tsv").items():
        relevant = [doc for doc, grade in grades.items() if grade > 0 and text_of[doc].strip()]
        if relevant:
            pairs.append((queries[query_id], text_of[relevant[0]]))
        if len(pairs) == 12:
            break
    return pairs, corpus.texts[:200]


def test_ragatouille_from_scratch_script_runs_end_to_end(tiny_bert, cranfield, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="colbert_lightning.compat.ragatouille")
    pairs, my_full_corpus = cranfield
    # --- RAGatouille's documented script; only the import differs (and the tiny sizes) ---
    from colbert_lightning import RAGTrainer

    trainer = RAGTrainer(
        model_name="TinyColBERT",
        pretrained_model_name=str(tiny_bert),
        language_code="en",
        n_usable_gpus=1,
    )
    trainer.prepare_training_data(
        raw_data=pairs,
        data_out_path=str(tmp_path / "data"),
        all_documents=my_full_corpus,
        num_new_negatives=4,
        mine_hard_negatives=True,
    )
    model_path = trainer.train(
        batch_size=4,
        nbits=4,
        maxsteps=3,
        use_ib_negatives=True,
        dim=16,
        learning_rate=5e-4,
        doc_maxlen=48,
        use_relu=False,
        warmup_steps="auto",
        output_dir=tmp_path / "run",
        overrides=QUICK,
    )
    # --- what it produced ---
    assert any("nbits=4: PLAID" in record.getMessage() for record in caplog.records)
    assert trainer.results["steps"] == 3
    # the encoder's pretrained weights were loaded; only the projection started random
    assert trainer.results["init"]["random"] == {"linear": 16 * 32}
    assert Path(model_path) == tmp_path / "run" / "checkpoints" / "colbert"
    assert detect_format(model_path) == "colbert"
    model = ColBERT.load(model_path)  # what RAGPretrainedModel.from_pretrained loads it with
    assert not any(module.training for module in model.modules())  # ready to encode
    assert (model.config.dim, model.config.doc_maxlen, model.config.query_maxlen) == (16, 48, 16)
    start = load_file(tiny_bert / "model.safetensors")["encoder.layer.0.output.dense.weight"]
    trained = model.encoder.state_dict()["encoder.layer.0.output.dense.weight"]
    assert not torch.equal(start, trained)  # it trained
    scores = model.score_texts([pairs[0][0]], [pairs[0][1], my_full_corpus[-1]])
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()


def test_train_arguments_map_onto_the_training_config(tiny_bert, cranfield, tmp_path):
    from colbert_lightning import RAGTrainer

    pairs, documents = cranfield
    trainer = RAGTrainer("m", str(tiny_bert), n_usable_gpus=-1)
    with pytest.raises(RuntimeError, match="prepare_training_data"):
        trainer.compose_config()
    trainer.prepare_training_data(pairs, documents, tmp_path / "data", num_new_negatives=2)
    assert trainer.data.counts["triples"] == 24  # 12 queries x 1 positive x 2 negatives
    cfg = trainer.compose_config(
        batch_size=4, maxsteps=1000, learning_rate=1e-5, use_ib_negatives=False, dim=24
    )
    # one pass over the triples (fewer than maxsteps); warm-up and decay follow that count
    assert cfg.trainer.max_steps == 6 and cfg.data.nway == 2
    assert cfg.module.scheduler.warmup_steps == 0.1 and cfg.module.scheduler.decay == "linear"
    assert trainer.compose_config(batch_size=4, maxsteps=5).trainer.max_steps == 5
    assert cfg.module.optimizer.lr == 1e-5 and cfg.module.in_batch_negatives is False
    assert (cfg.model.init, cfg.model.name_or_path) == ("pretrained", str(tiny_bert))
    assert (cfg.model.dim, cfg.model.doc_maxlen, cfg.data.batch_size) == (24, 256, 4)
    assert cfg.trainer.accelerator == "cpu" and cfg.data.dev is None
    assert "evaluation" not in cfg.callbacks and "last_checkpoint" in cfg.callbacks
    # activation checkpointing is on unless memory is not to be bounded
    target = cfg.callbacks.activation_checkpointing._target_
    assert target == "colbert_lightning.compat.ragatouille.ActivationCheckpointing"
    unbounded = trainer.compose_config(bounded_memory=False)
    assert "activation_checkpointing" not in unbounded.callbacks
    # as colbert-ai: accumsteps splits batch_size; an optimiser step still takes batch_size
    cfg = trainer.compose_config(batch_size=8, maxsteps=100, warmup_steps=1, accumsteps=2)
    assert (cfg.trainer.max_steps, cfg.module.scheduler.warmup_steps) == (3, 1)
    assert (cfg.trainer.accumulate_grad_batches, cfg.data.batch_size) == (2, 4)
    with pytest.raises(ValueError, match="accumsteps=4"):
        trainer.compose_config(batch_size=6, accumsteps=4)
    with pytest.raises(ValueError, match="this run's 3 optimiser steps"):
        trainer.compose_config(batch_size=8, warmup_steps=10)
    with pytest.raises(ValueError, match="use_relu"):
        trainer.compose_config(use_relu=True)
    # init=random: the encoder's architecture only
    random_init = RAGTrainer("m", str(tiny_bert), init="random")
    random_init.data = trainer.data
    assert random_init.compose_config().model.init == "random"
    # held-out dev queries: evaluation during training, best checkpoint by dev nDCG@10
    trainer.prepare_training_data(pairs, documents, tmp_path / "dev", dev_queries=3)
    cfg = trainer.compose_config()
    assert cfg.data.dev.qrels.endswith("qrels/dev.tsv") and "evaluation" in cfg.callbacks


def test_continuing_from_a_colbert_folder_keeps_its_settings(cranfield, tmp_path):
    from colbert_lightning import RAGTrainer
    from tests.conftest import tiny_config

    model = ColBERT.from_config(tiny_config(query_maxlen=24, attend_to_mask_tokens=True))
    write_folder(model, tmp_path / "colbert", "colbert")
    trainer = RAGTrainer("m", str(tmp_path / "colbert"))
    pairs, documents = cranfield
    trainer.prepare_training_data(pairs[:4], documents[:50], tmp_path / "data", num_new_negatives=1)
    cfg = trainer.compose_config(dim=16)
    assert cfg.model.query_maxlen == 24 and cfg.model.attend_to_mask_tokens is True
    assert cfg.model.query_token == "[unused0]"


def test_pairs_become_bm25_hard_negative_triples_below_the_minimum_rank(cranfield, tmp_path):
    pairs, documents = cranfield
    result = write_training_data(
        pairs, tmp_path, "pairs", documents, num_new_negatives=5, min_rank=10, max_rank=30
    )
    # 12 queries with one positive each: one triple per new negative
    assert result.counts["triples"] == 60 and result.counts["new_negatives"] == 60
    corpus = load_corpus(tmp_path / "beir" / "corpus.jsonl")
    assert len(corpus) == len(set(documents) | {positive for _, positive in pairs})
    queries = load_queries(tmp_path / "beir" / "queries.jsonl")
    rankings = BM25Retriever(corpus.ids, corpus.texts, show_progress=False).search(queries, k=30)
    lines = [json.loads(line) for line in open(result.triples, encoding="utf-8")]
    assert len(lines) == 60 and {len(line["neg_ids"]) for line in lines} == {1}
    assert len({(line["qid"], line["neg_ids"][0]) for line in lines}) == 60  # 5 distinct each
    assert [line["qid"] for line in lines[:12]] != sorted(line["qid"] for line in lines[:12])
    for line in lines:
        ranks = {doc: rank for rank, (doc, _) in enumerate(rankings[line["qid"]], start=1)}
        assert all(10 <= ranks[doc] <= 30 for doc in line["neg_ids"])
        assert line["pid"] not in line["neg_ids"]
        assert line["positive"] not in line["negatives"]
    qrels = load_qrels(tmp_path / "beir" / "qrels" / "train.tsv")
    assert all(qrels[line["qid"]][line["pid"]] == 1 for line in lines)


def test_triplets_and_labelled_pairs_keep_their_given_negatives(tmp_path):
    documents = [f"document number {n} about topic {n % 3}" for n in range(30)]
    triplets = [
        ("query about topic 1", "the answer", ["wrong one", "wrong two"]),
        ("query about topic 1", ["another answer"], "wrong three"),
        ("query about topic 2", "second answer", "wrong four"),
    ]
    assert raw_kind(triplets) == "triplets"
    result = write_training_data(
        triplets, tmp_path / "t", "triplets", documents, num_new_negatives=2, min_rank=1
    )
    lines = [json.loads(line) for line in open(result.triples, encoding="utf-8")]
    triples = {(line["query"], line["positive"], *line["negatives"]) for line in lines}
    # topic 1: 2 positives x (3 given + 2 new negatives), every pair (fewer than 20 exist);
    # topic 2: 1 positive x (1 given + 2 new)
    assert len(lines) == len(triples) == 13 and result.counts["given_negatives"] == 4
    for given in ("wrong one", "wrong two", "wrong three"):
        for positive in ("the answer", "another answer"):
            assert ("query about topic 1", positive, given) in triples
    assert ("query about topic 2", "second answer", "wrong four") in triples
    labelled = [("q", "yes", 1), ("q", "no", 0), ("q", "yes too", "1")]
    with pytest.raises(ValueError, match="neither positive_label"):
        group_by_query(labelled, "labelled_pairs")
    grouped = group_by_query(labelled[:2], raw_kind(labelled, pairs_with_labels=True))
    assert (grouped["q"].positives, grouped["q"].negatives) == (["yes"], ["no"])
    no_mining = write_training_data(
        labelled[:2], tmp_path / "l", "labelled_pairs", documents, num_new_negatives=0
    )
    assert no_mining.counts == {
        **no_mining.counts,
        "triples": 1,
        "pairs": 1,
        "given_negatives": 1,
        "new_negatives": 0,
    }
    with pytest.raises(ValueError, match="pairs or triplets"):
        raw_kind([("q",)])


def test_n_usable_gpus_maps_to_lightning_devices_and_ddp(
    tiny_bert, cranfield, tmp_path, monkeypatch
):
    from colbert_lightning import RAGTrainer

    pairs, documents = cranfield
    trainer = RAGTrainer("m", str(tiny_bert), n_usable_gpus=2)
    trainer.prepare_training_data(pairs, documents, tmp_path / "data", num_new_negatives=1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = trainer.compose_config(batch_size=8)
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.trainer.devices) == ("gpu", "ddp", 2)
    assert cfg.data.batch_size == 4  # RAGatouille's batch_size is the total over the GPUs
    trainer.n_usable_gpus = -1  # every visible GPU
    assert trainer.compose_config(batch_size=8).trainer.devices == 4
    with pytest.raises(ValueError, match="multiple of the 4 GPU"):
        trainer.compose_config(batch_size=6)
    trainer.n_usable_gpus = 1
    cfg = trainer.compose_config(batch_size=8)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.data.batch_size) == ("gpu", 1, 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert trainer.compose_config().trainer.accelerator == "cpu"  # with a warning in the log


def ragatouille_triples(positives: int, negatives: int) -> int:
    """How many triples RAGatouille's ``_make_individual_triplets`` makes for one query."""
    if positives == 0 or negatives == 0:
        return 0
    if positives == 1:
        return negatives
    sampled = positives * min(negatives, max(1, 20 // positives))
    return max(sampled, min(20, positives * negatives))  # topped up to 20 distinct pairs


def test_query_triples_are_ragatouilles():
    rng = random.Random(0)
    for k in range(0, 25):
        for n in (0, 1, 2, 3, 7, 10, 30):
            positives, negatives = [f"p{i}" for i in range(k)], [f"n{i}" for i in range(n)]
            pairs = query_triples(positives, negatives, rng)
            assert len(pairs) == len(set(pairs)) == ragatouille_triples(k, n), (k, n)
            assert {p for p, _ in pairs} == (set(positives) if n else set())


@pytest.fixture(scope="module")
def twelve_pairs(cranfield):
    """12 pairs of 10 queries: the first query with 3 relevant abstracts, the others with 1."""
    root = resource_path("cranfield")
    corpus = load_corpus(find_beir_file(root, "corpus"))
    queries = load_queries(find_beir_file(root, "queries"))
    text_of = dict(zip(corpus.ids, corpus.texts, strict=True))
    pairs, singles = [], 0
    for query_id, grades in load_qrels(f"{root}/qrels/test.tsv").items():
        relevant = [doc for doc, grade in grades.items() if grade > 0 and text_of[doc].strip()]
        if not pairs and len(relevant) >= 3:
            pairs += [(queries[query_id], text_of[doc]) for doc in relevant[:3]]
        elif pairs and relevant and singles < 9:
            pairs.append((queries[query_id], text_of[relevant[0]]))
            singles += 1
    return pairs, cranfield[1]


def test_one_pass_is_ragatouilles_triples_and_the_schedule_follows_it(
    tiny_bert, twelve_pairs, tmp_path
):
    from colbert_lightning import RAGTrainer

    pairs, documents = twelve_pairs
    assert (len(pairs), len({query for query, _ in pairs})) == (12, 10)
    trainer = RAGTrainer("steps", str(tiny_bert), n_usable_gpus=0)
    trainer.prepare_training_data(pairs, documents, tmp_path / "data", num_new_negatives=4)
    # RAGatouille: 3 positives x 4 negatives (all 12 pairs, fewer than 20) + 9 x 4 = 48
    expected = ragatouille_triples(3, 4) + 9 * ragatouille_triples(1, 4)
    assert trainer.data.counts["triples"] == expected == 48
    lines = Path(trainer.data.triples).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 48
    model_path = trainer.train(
        batch_size=8,
        maxsteps=1000,
        learning_rate=1e-3,
        dim=16,
        doc_maxlen=48,
        output_dir=tmp_path / "run",
        overrides=["data.num_workers=0", "model.query_maxlen=16", "trainer.log_every_n_steps=1"],
    )
    # one pass: ceil(48 / 8) optimiser steps, each of 8 triples
    assert trainer.results["steps"] == 6 and trainer.results["examples_seen"] == 48
    # warm-up "auto" is 10% of the 6 steps (1), then linear decay to 0 at step 6
    with open(tmp_path / "run" / "csv" / "metrics.csv", encoding="utf-8") as file:
        rates = [float(row["train/lr"]) for row in csv.DictReader(file) if row["train/lr"]]
    assert rates == pytest.approx([0.0, 1e-3, 8e-4, 6e-4, 4e-4, 2e-4])
    assert not any(module.training for module in ColBERT.load(model_path).modules())
    assert trainer.optimizer_steps(batch_size=8, maxsteps=1000) == 6
    assert trainer.optimizer_steps(batch_size=8, maxsteps=4) == 4  # maxsteps caps it


def test_activation_checkpointing_keeps_the_loss_and_gradients():
    from tests.conftest import TINY_ENCODER, tiny_config

    dropout = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    model = ColBERT.from_config(tiny_config(encoder_config={**TINY_ENCODER, **dropout})).train()
    queries = model.tokenizer.queries(["laminar flow over a plate", "shock waves"])
    documents = model.tokenizer.documents(
        ["the boundary layer of a flat plate", "supersonic flow and shock waves", "heat"]
    )

    def gradients(seed: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(seed)
        scores = model.score(model.encode_queries(queries), model.encode_documents(documents))
        loss = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1]))
        loss.backward()
        return loss.item(), [parameter.grad.clone() for parameter in model.parameters()]

    plain_loss, plain = gradients(seed=0)
    callback, pl_module = ActivationCheckpointing(), SimpleNamespace(model=model)
    callback.setup(None, pl_module, "fit")
    assert model.encoder.is_activation_checkpointing
    loss, checkpointed = gradients(seed=0)
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    for expected, got in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    other_seed = gradients(seed=1)[1]  # dropout is on: the masks were replayed, not absent
    assert not all(torch.equal(a, b) for a, b in zip(plain, other_seed, strict=True))
    callback.teardown(None, pl_module, "fit")
    assert not model.encoder.is_activation_checkpointing
    with pytest.raises(ValueError, match="bounded_memory=False"):
        callback.setup(
            None, SimpleNamespace(model=SimpleNamespace(encoder=torch.nn.Linear(2, 2))), "fit"
        )


# Run in a fresh interpreter: in a long test process the heap holds freed chunks of 16 MiB and
# more, which malloc hands out again whatever the mmap threshold (it maps only what no free chunk
# holds), and whose pages are already resident.
_FREED_BLOCKS_SCRIPT = """
import json
from pathlib import Path

import numpy as np

from colbert_lightning.compat.ragatouille import large_blocks_unmapped


def mapping_of(address):
    # the name column of the /proc/self/maps line holding address ('' when anonymous)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if start <= address < end:
            return fields[5].strip() if len(fields) > 5 else ""
    return None


# freeing a mapped 24 MiB block raises glibc's adaptive threshold to 24 MiB: from then on
# smaller blocks come from the heap and stay mapped (resident) when freed
warm = bytearray(24 << 20)
del warm
with large_blocks_unmapped() as changed:
    block = np.ones(16 << 20, dtype=np.uint8)
    address = block.ctypes.data
    held_in = mapping_of(address)
    del block
    after_free = mapping_of(address)
print(json.dumps({"changed": changed, "held_in": held_in, "after_free": after_free}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt and Linux's /proc")
def test_training_on_the_cpu_gives_freed_blocks_back_to_the_system():
    # Checked on the address map, not on RSS: some sandboxes (CI's) do not update VmRSS as pages
    # are touched.
    done = subprocess.run(
        [sys.executable, "-c", _FREED_BLOCKS_SCRIPT], capture_output=True, text=True, check=True
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["changed"]
    assert found["held_in"] == ""  # a mapping of its own, not the [heap]
    assert found["after_free"] is None  # unmapped, not kept in the heap
