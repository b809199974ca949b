"""False in-batch negatives: documents relevant to a query never count against it.

The expected masks and losses are computed here from document ids, the training qrels and
query texts with plain Python and numpy, independently of the keys the collator hashes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim import AdamW

from colbert_lightning.data.beir import load_qrels, load_queries, normalized_text
from colbert_lightning.data.collate import Collator
from colbert_lightning.data.negatives import prepare_triples, split_dev_queries
from colbert_lightning.data.readers import JsonlTextReader
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling import ColBERT
from colbert_lightning.resources import resource_path
from colbert_lightning.scoring import maxsim, maxsim_grouped
from colbert_lightning.training import ColBERTModule
from tests.conftest import tiny_config

SCIFACT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory):
    """Prepared Cranfield triples (as ``make train`` prepares them) and the train qrels."""
    output = tmp_path_factory.mktemp("prepared")
    result = prepare_triples(
        resource_path("cranfield"), "test", output, dev_queries=50, show_progress=False
    )
    lines = Path(result.triples).read_bytes().splitlines(keepends=True)
    return lines, load_qrels(result.train_qrels), result.triples


def _batch_examples(lines: list[bytes], path: str, seed: int, size: int = 32):
    reader = JsonlTextReader(path)
    rows = random.Random(seed).sample(range(len(lines)), size)
    examples = [reader.parse(lines[row], row + 1) for row in rows]
    # one negative each (nway 2), as the default config streams them
    return [
        TrainingExample(
            e.query, e.positive, e.negatives[:1], e.source, e.query_id, e.positive_id,
            e.negative_ids[:1],
        )
        for e in examples
    ]  # fmt: skip


def _expected_mask(examples, qrels, in_batch: bool) -> np.ndarray:
    """From ids and texts: column j is a false negative of query i."""
    nway = 2
    documents = [(e.positive_id, e.negative_ids[0]) for e in examples]
    columns = [doc for pair in documents for doc in pair]
    mask = np.zeros((len(examples), len(columns) if in_batch else nway), dtype=bool)
    for i, example in enumerate(examples):
        relevant = {doc for doc, grade in qrels.get(example.query_id, {}).items() if grade > 0}
        relevant.add(example.positive_id)
        for other in examples:
            if normalized_text(other.query) == normalized_text(example.query):
                relevant.add(other.positive_id)
        candidates = enumerate(columns) if in_batch else enumerate(documents[i])
        for j, doc in candidates:
            target = i * nway if in_batch else 0
            mask[i, j] = j != target and doc in relevant
    return mask


def _loss_by_hand(scores: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> float:
    """Mean over queries of -log softmax(target) over the columns left in."""
    losses = []
    for row, target in enumerate(targets):
        kept = scores[row][~mask[row]]
        top = kept.max()
        log_sum = top + np.log(np.exp(kept - top).sum())
        losses.append(log_sum - scores[row, target])
    return float(np.mean(losses))


def _module(model: ColBERT, in_batch: bool, mask: bool) -> ColBERTModule:
    return ColBERTModule(
        model,
        optimizer=lambda params: AdamW(params),
        in_batch_negatives=in_batch,
        mask_false_negatives=mask,
    )


@pytest.mark.parametrize("in_batch", [True, False])
def test_loss_leaves_out_relevant_documents_on_cranfield_batches(cranfield, in_batch):
    lines, qrels, path = cranfield
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config(dim=16)).eval()
    collator = Collator(model.tokenizer, _relevance(qrels))
    checked = 0
    for seed in range(3):
        examples = _batch_examples(lines, path, seed)
        batch = collator(examples)
        expected = _expected_mask(examples, qrels, in_batch)
        with torch.no_grad():
            queries = model.encode_queries(batch.queries)
            documents = model.encode_documents(batch.documents)
            if in_batch:
                scores = maxsim(
                    queries.embeddings, queries.mask, documents.embeddings, documents.mask
                )
                targets = np.arange(len(examples)) * 2
            else:
                b, length, dim = len(examples), *documents.embeddings.shape[1:]
                scores = maxsim_grouped(
                    queries.embeddings,
                    queries.mask,
                    documents.embeddings.view(b, 2, length, dim),
                    documents.mask.view(b, 2, length),
                )
                targets = np.zeros(len(examples), dtype=int)
            result = _module(model, in_batch, mask=True).batch_loss(batch)
            unmasked = _module(model, in_batch, mask=False).batch_loss(batch)
        scores = scores.double().numpy()
        assert int(result.false_negatives) == int(expected.sum())
        assert result.loss.item() == pytest.approx(_loss_by_hand(scores, expected, targets), 1e-5)
        no_mask = np.zeros_like(expected)
        assert unmasked.loss.item() == pytest.approx(_loss_by_hand(scores, no_mask, targets), 1e-5)
        checked += int(expected.any())
    if in_batch:
        # Cranfield has ~7.5 relevant documents per query: batches of 32 hold false negatives
        assert checked == 3


def _relevance(qrels):
    return {q: [d for d, grade in grades.items() if grade > 0] for q, grades in qrels.items()}


def test_same_query_text_under_other_ids_is_masked():
    """Rows of one query (two ids, same words) never push each other's positives away."""
    model = ColBERT.from_config(tiny_config(dim=16)).eval()
    rows = [
        ("What is lift?", "lift is a force", "shock waves", "1", "d1", "d3"),
        ("what is LIFT", "wings make lift", "heat flux", "2", "d2", "d4"),
        ("boundary layers", "viscous flow", "lift is a force", "3", "d5", "d1"),
    ]
    examples = [
        TrainingExample(query, positive, (negative,), "", qid, pid, (nid,))
        for query, positive, negative, qid, pid, nid in rows
    ]
    batch = Collator(model.tokenizer)(examples)  # no qrels: only texts and own positives
    with torch.no_grad():
        result = _module(model, in_batch=True, mask=True).batch_loss(batch)
    # rows 0 and 1 each mask the other's positive (columns 2 and 0) and d1 again as row 2's
    # negative (column 5); row 2 masks nothing: d1 is relevant to the lift query, not to its
    assert int(result.false_negatives) == 4


def test_text_triples_without_ids_mask_copies_of_the_positive():
    model = ColBERT.from_config(tiny_config(dim=16)).eval()
    examples = [
        TrainingExample("lift", "lift is a force", ("shock waves",)),
        TrainingExample("shock", "shock waves", ("lift is a force",)),
    ]
    batch = Collator(model.tokenizer)(examples)
    with torch.no_grad():
        result = _module(model, in_batch=True, mask=True).batch_loss(batch)
    # row 0's positive is row 1's negative (column 3) and vice versa (column 1)
    assert int(result.false_negatives) == 2


def test_jsonl_ids_must_be_complete(tmp_path):
    path = tmp_path / "triples.jsonl"
    path.write_text("")
    reader = JsonlTextReader(str(path))
    line = json.dumps({"query": "q", "positive": "p", "negatives": ["n"], "qid": "1"})
    with pytest.raises(ValueError, match=r"triples.jsonl:3.*not all of 'qid', 'pid'"):
        reader.parse(line.encode(), 3)
    line = json.dumps(
        {"query": "q", "positive": "p", "negatives": ["n"], "qid": "1", "pid": "2", "neg_ids": []}
    )
    with pytest.raises(ValueError, match="'neg_ids' must be a list of 1 ids"):
        reader.parse(line.encode(), 1)


def test_dev_split_keeps_identical_queries_on_one_side():
    texts = {f"q{i}": f"query number {i // 2}" for i in range(40)}  # 20 pairs of twins
    texts.update({f"s{i}": f"single {i}" for i in range(40)})
    for seed in range(20):
        train, dev = split_dev_queries(list(texts), 15, seed, texts=texts)
        train_texts = {normalized_text(texts[q]) for q in train}
        assert not any(normalized_text(texts[q]) in train_texts for q in dev)
        assert 15 <= len(dev) <= 16


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")
def test_scifact_dev_queries_are_not_word_for_word_training_queries():
    queries = load_queries(SCIFACT / "queries.jsonl")
    judged = list(load_qrels(SCIFACT / "qrels" / "train.tsv"))
    train, dev = split_dev_queries(judged, 100, 0, texts=queries)
    train_texts = {normalized_text(queries[q]) for q in train}
    assert [q for q in dev if normalized_text(queries[q]) in train_texts] == []
    assert len(dev) >= 100
