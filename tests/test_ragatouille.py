"""RAGTrainer: RAGatouille's training script, with only the import changed, on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel

from colbert_lightning.compat.raw_data import group_by_query, raw_kind, write_training_data
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


def test_ragatouille_from_scratch_script_runs_end_to_end(tiny_bert, cranfield, tmp_path):
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
    assert trainer.results["steps"] == 3
    # the encoder's pretrained weights were loaded; only the projection started random
    assert trainer.results["init"]["random"] == {"linear": 16 * 32}
    assert detect_format(model_path) == "colbert"
    model = ColBERT.load(model_path).eval()
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
    triples = trainer.data.counts["triples"]
    cfg = trainer.compose_config(
        batch_size=4, maxsteps=1000, learning_rate=1e-5, use_ib_negatives=False, dim=24
    )
    # one pass over the triples (fewer than maxsteps); warm-up and decay follow that count
    assert cfg.trainer.max_steps == -(-triples // 4)
    assert cfg.module.scheduler.warmup_steps == 0.1 and cfg.module.scheduler.decay == "linear"
    assert cfg.module.optimizer.lr == 1e-5 and cfg.module.in_batch_negatives is False
    assert (cfg.model.init, cfg.model.name_or_path) == ("pretrained", str(tiny_bert))
    assert (cfg.model.dim, cfg.model.doc_maxlen, cfg.data.batch_size) == (24, 256, 4)
    assert cfg.trainer.accelerator == "cpu" and cfg.data.dev is None
    assert "evaluation" not in cfg.callbacks and "last_checkpoint" in cfg.callbacks
    cfg = trainer.compose_config(batch_size=2, maxsteps=2, warmup_steps=1, accumsteps=2)
    assert (cfg.trainer.max_steps, cfg.module.scheduler.warmup_steps) == (2, 1)
    assert cfg.trainer.accumulate_grad_batches == 2
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
    assert result.counts["triples"] == 12 and result.counts["new_negatives"] == 60
    corpus = load_corpus(tmp_path / "beir" / "corpus.jsonl")
    assert len(corpus) == len(set(documents) | {positive for _, positive in pairs})
    queries = load_queries(tmp_path / "beir" / "queries.jsonl")
    rankings = BM25Retriever(corpus.ids, corpus.texts, show_progress=False).search(queries, k=30)
    lines = [json.loads(line) for line in open(result.triples, encoding="utf-8")]
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
    assert [line["positive"] for line in lines] == ["the answer", "another answer", "second answer"]
    assert lines[0]["negatives"][:3] == ["wrong one", "wrong two", "wrong three"]
    assert len(lines[0]["negatives"]) == 5 and result.counts["given_negatives"] == 7
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
    with pytest.raises(ValueError, match="multiple of the 4 GPUs"):
        trainer.compose_config(batch_size=6)
    trainer.n_usable_gpus = 1
    cfg = trainer.compose_config(batch_size=8)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.data.batch_size) == ("gpu", 1, 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert trainer.compose_config().trainer.accelerator == "cpu"  # with a warning in the log
