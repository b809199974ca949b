"""Shared fixtures: a tiny random ColBERT on the shipped vocabulary, offline."""

from __future__ import annotations

import os

import pytest

from colbert_lightning.modeling import ColBERT, ColBERTConfig
from colbert_lightning.resources import resource_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY_ENCODER = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
}


def tiny_config(**overrides) -> ColBERTConfig:
    values = {
        "init": "random",
        "tokenizer": resource_path("tokenizer/bert-base-uncased"),
        "encoder_config": dict(TINY_ENCODER),
        "dim": 16,
        "query_maxlen": 16,
        "doc_maxlen": 48,
    }
    values.update(overrides)
    return ColBERTConfig(**values)


@pytest.fixture
def tiny_model() -> ColBERT:
    return ColBERT.from_config(tiny_config()).eval()
