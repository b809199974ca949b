"""Distillation: the KL loss against a hand computation, and the module's mix of the two terms."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from colbert_lightning.data.collate import Collator
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.losses import distillation_kl, group_scores
from colbert_lightning.modeling import ColBERT
from colbert_lightning.scoring import maxsim, maxsim_grouped
from colbert_lightning.training import ColBERTModule
from colbert_lightning.training.run import train
from tests.conftest import tiny_config
from tests.helpers import TINY_OVERRIDES, compose_train, triples_with_cranfield_dev

EXAMPLES = [
    TrainingExample("lift on wings", "wings make lift in flow", ("heat flux", "shock tubes")),
    TrainingExample("shock waves", "a normal shock wave", ("boundary layers", "lift on plates")),
    TrainingExample("heat transfer", "heat flux at the wall", ("wing lift", "shock fronts")),
]
TEACHER = torch.tensor([[3.0, 1.0, -1.0], [0.5, 2.0, 0.0], [1.0, 1.0, 4.0]])


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(value) for value in row]
    return [value / sum(exps) for value in exps]


def _kl_by_hand(student: list[list[float]], teacher: list[list[float]]) -> float:
    total = 0.0
    for student_row, teacher_row in zip(student, teacher, strict=True):
        p, q = _softmax(teacher_row), _softmax(student_row)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total / len(student)


def test_distillation_kl_equals_a_hand_computation_with_temperatures():
    student = [[1.0, 0.0, 2.0], [0.3, -0.2, 0.1]]
    teacher = [[4.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    expected = _kl_by_hand(
        [[value / 0.5 for value in row] for row in student],
        [[value / 2.0 for value in row] for row in teacher],
    )
    loss = distillation_kl(torch.tensor(student), torch.tensor(teacher), 0.5, 2.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_distillation_kl_is_zero_only_for_the_teachers_distribution():
    teacher = torch.tensor([[4.0, 1.0, 0.0]])
    # the student's scores shifted by a constant give the same softmax
    assert distillation_kl(teacher / 2 + 7.0, teacher, 1.0, 2.0).item() == pytest.approx(
        0, abs=1e-6
    )
    assert distillation_kl(teacher, teacher, 1.0, 2.0).item() > 0.05


def test_group_scores_are_the_grouped_maxsim_of_each_querys_own_documents():
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(3, 4, 8), dim=-1)
    documents = F.normalize(torch.randn(3 * 2, 5, 8), dim=-1)
    query_mask = torch.ones(3, 4, dtype=torch.bool)
    doc_mask = torch.rand(6, 5) > 0.3
    doc_mask[:, 0] = True
    full = maxsim(queries, query_mask, documents, doc_mask)  # (3, 6)
    grouped = maxsim_grouped(
        queries, query_mask, documents.view(3, 2, 5, 8), doc_mask.view(3, 2, 5)
    )
    assert torch.allclose(group_scores(full, nway=2), grouped, atol=1e-6)


def _module(**options) -> ColBERTModule:
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config()).eval()
    return ColBERTModule(model, optimizer=torch.optim.AdamW, **options)


def _scores(module: ColBERTModule, batch) -> torch.Tensor:
    """(B, B * nway) MaxSim of every query against every document, by the model's own score."""
    queries = module.model.encode_queries(batch.queries)
    documents = module.model.encode_documents(batch.documents)
    return module.model.score(queries, documents)


@pytest.mark.parametrize("in_batch", [True, False])
def test_distillation_alone_is_the_kl_over_each_querys_nway_documents(in_batch):
    module = _module(
        in_batch_negatives=in_batch,
        contrastive_weight=0.0,
        distillation_weight=1.0,
        teacher_temperature=0.5,
    )
    batch = replace(Collator(module.model.tokenizer)(EXAMPLES), teacher_scores=TEACHER)
    with torch.no_grad():
        result = module.batch_loss(batch)
        scores = _scores(module, batch)
    student = [[scores[i, i * 3 + j].item() for j in range(3)] for i in range(3)]
    teacher = [[value / 0.5 for value in row] for row in TEACHER.tolist()]
    assert result.loss.item() == pytest.approx(_kl_by_hand(student, teacher), abs=1e-5)
    assert result.contrastive is None
    assert result.positive_scores.tolist() == pytest.approx([row[0] for row in student], abs=1e-5)


def test_both_terms_add_with_their_weights():
    module = _module(contrastive_weight=0.3, distillation_weight=2.0, mask_false_negatives=False)
    batch = replace(Collator(module.model.tokenizer)(EXAMPLES), teacher_scores=TEACHER)
    with torch.no_grad():
        result = module.batch_loss(batch)
        scores = _scores(module, batch)
    cross_entropy = F.cross_entropy(scores, torch.tensor([0, 3, 6])).item()
    student = [[scores[i, i * 3 + j].item() for j in range(3)] for i in range(3)]
    kl = _kl_by_hand(student, TEACHER.tolist())
    assert result.contrastive.item() == pytest.approx(cross_entropy, abs=1e-5)
    assert result.distillation.item() == pytest.approx(kl, abs=1e-5)
    assert result.loss.item() == pytest.approx(0.3 * cross_entropy + 2.0 * kl, abs=1e-5)


def test_the_teacher_decides_even_where_the_cross_entropy_masks():
    # query q0's first negative is judged relevant: out of the cross-entropy, not of the KL
    examples = [
        replace(example, query_id=f"q{i}", positive_id=f"p{i}", negative_ids=(f"n{i}", f"m{i}"))
        for i, example in enumerate(EXAMPLES)
    ]
    module = _module(distillation_weight=1.0)
    batch = Collator(module.model.tokenizer, {"q0": ["n0"]})(examples)
    batch = replace(batch, teacher_scores=TEACHER)
    with torch.no_grad():
        masked = module.batch_loss(batch)
        module.mask_false_negatives = False
        unmasked = module.batch_loss(batch)
    assert masked.false_negatives.item() == 1
    assert masked.contrastive.item() != pytest.approx(unmasked.contrastive.item(), abs=1e-4)
    assert masked.distillation.item() == pytest.approx(unmasked.distillation.item(), abs=1e-7)


def test_distillation_without_teacher_scores_says_how_to_get_them():
    module = _module(distillation_weight=1.0)
    batch = Collator(module.model.tokenizer)(EXAMPLES)
    with pytest.raises(ValueError, match="score_candidates"):
        module.batch_loss(batch)


def test_teacher_scores_of_the_wrong_shape_are_refused():
    module = _module(distillation_weight=1.0)
    batch = replace(Collator(module.model.tokenizer)(EXAMPLES), teacher_scores=TEACHER[:, :2])
    with pytest.raises(ValueError, match="3 queries x 3 documents"):
        module.batch_loss(batch)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"contrastive_weight": 0.0, "distillation_weight": 0.0}, "both 0"),
        ({"distillation_weight": -1.0}, "distillation_weight must be"),
        ({"contrastive_weight": float("nan")}, "contrastive_weight must be"),
        ({"teacher_temperature": 0.0}, "teacher_temperature must be > 0"),
        ({"cache_chunk_size": 0}, "cache_chunk_size must be"),
    ],
)
def test_bad_loss_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        _module(**options)


def test_cached_distillation_with_fp16_is_refused():
    module = _module(cached=True)
    module._trainer = SimpleNamespace(world_size=1, precision="16-mixed")
    with pytest.raises(ValueError, match="bf16-mixed"):
        module.setup("fit")


def test_a_run_trains_on_teacher_scores_cached(tmp_path):
    """train() on a scored_jsonl file: KL alone, GradCache on, both terms logged apart."""
    topics = ["lift", "shock", "heat", "drag", "flutter", "nozzle"]
    with open(tmp_path / "scored.jsonl", "w") as file:
        for i, topic in enumerate(topics * 2):
            documents = [f"{topic} in wind tunnels {i}", f"notes on {topics[i % 5 + 1]}", "tables"]
            record = {"query": f"{topic} {i}", "documents": documents, "scores": [5.0, 1.0, -i]}
            file.write(json.dumps(record) + "\n")
    overrides = [
        *TINY_OVERRIDES,
        *triples_with_cranfield_dev(tmp_path / "scored.jsonl"),
        "data.train.format=scored_jsonl",
        "data.nway=3",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "module.distillation_weight=1",
        "module.contrastive_weight=0.5",
        "module.cached=true",
        "module.cache_chunk_size=3",
        "callbacks=none",
        "logger=csv",
    ]
    results = train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    assert results["steps"] == 3
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/contrastive_loss", "train/distillation_loss"} <= set(header)
