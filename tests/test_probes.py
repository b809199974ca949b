"""Training probes: each against an independent computation, the callback on its schedule.

The probe functions are checked on hand-made examples with a known answer and against plain
numpy loops; :func:`measure_probes` against the model's own scoring of each text apart; the
callback in a tiny training run on a slice of the shipped Cranfield (triples written from its
judgments, so that no BM25 negatives are mined; a dev corpus of a few batches); and
``summarize``'s probe figure on that run's folder.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.data.beir import DevSet, load_dev_set, write_qrels
from colbert_lightning.evaluation.curves import plot_probes, read_probe_curves
from colbert_lightning.evaluation.summary import summarize_sweep, write_summary
from colbert_lightning.evaluation.sweeps import load_sweep
from colbert_lightning.modeling import ColBERT, ColBERTConfig, ColBERTTokenizer
from colbert_lightning.modeling.colbert import inference
from colbert_lightning.resources import resource_path
from colbert_lightning.training import RetrievalEvaluation, TrainingProbes
from colbert_lightning.training.probes import (
    anisotropy,
    effective_rank,
    exact_match_share,
    gradient_norms,
    margin_statistics,
    measure_probes,
    query_word_mask,
    sample_probe_set,
)
from colbert_lightning.training.run import build_callbacks, train
from tests.conftest import tiny_config
from tests.helpers import REPO, TINY_OVERRIDES, compose_train, run_cli

PROBES = [
    "probe/anisotropy",
    "probe/effective_rank",
    "probe/positive_mean",
    "probe/hardest_negative_mean",
    "probe/margin_q10",
    "probe/margin_q50",
    "probe/margin_q90",
    "probe/exact_match_share",
]
# the tiny model's layers: one encoder layer
GRADIENT_NORMS = [f"probe/grad_norm/{group}" for group in ("embeddings", "layer_0", "projection")]


@pytest.fixture(scope="module")
def cranfield() -> DevSet:
    folder = Path(resource_path("cranfield"))
    return load_dev_set(
        folder / "corpus.jsonl.gz", folder / "queries.jsonl.gz", folder / "qrels" / "test.tsv"
    )


# ---- the probe functions ---------------------------------------------------------------------


def test_anisotropy_of_orthogonal_identical_and_random_vectors():
    assert anisotropy(torch.eye(6)) == pytest.approx(0.0, abs=1e-12)
    assert anisotropy(torch.tensor([[0.3, -2.0, 1.0]]).repeat(5, 1)) == pytest.approx(1.0)
    # opposite pairs cancel: +e0, -e0, +e1, -e1 -> 4 of 12 ordered pairs at -1, the rest 0
    signs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert anisotropy(signs) == pytest.approx(-4 / 12)
    vectors = np.random.default_rng(0).normal(size=(30, 5)) + 0.7  # not unit, not centred
    cosines = [
        vectors[i] @ vectors[j] / np.linalg.norm(vectors[i]) / np.linalg.norm(vectors[j])
        for i in range(30)
        for j in range(30)
        if i != j
    ]
    assert anisotropy(torch.tensor(vectors)) == pytest.approx(np.mean(cosines), rel=1e-10)


def test_effective_rank_counts_equal_directions_and_matches_numpy():
    for rank in (1, 3, 8):
        matrix = torch.zeros(20, 8)
        matrix[:rank, :rank] = 2.5 * torch.eye(rank)  # r equal singular values, the rest 0
        assert effective_rank(matrix) == pytest.approx(rank)
    matrix = np.random.default_rng(1).normal(size=(50, 6)) * np.array([5, 3, 2, 1, 0.5, 0.1])
    singular = np.linalg.svd(matrix, compute_uv=False)
    shares = singular / singular.sum()
    expected = np.exp(-np.sum(shares * np.log(shares)))
    assert effective_rank(torch.tensor(matrix)) == pytest.approx(expected, rel=1e-10)
    assert 1 < expected < 6


def test_margin_statistics_match_numpy_loops():
    generator = np.random.default_rng(2)
    scores = generator.normal(size=(40, 25)) * 3
    positives = generator.integers(0, 25, size=40)
    relevant = generator.random((40, 25)) < 0.2
    relevant[np.arange(40), positives] = True
    positive = [scores[q, positives[q]] for q in range(40)]
    hardest = [max(scores[q, d] for d in range(25) if not relevant[q, d]) for q in range(40)]
    margins = np.array(positive) - np.array(hardest)

    stats = margin_statistics(
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(positives),
        torch.tensor(relevant),
    )

    assert stats["positive_mean"] == pytest.approx(np.mean(positive), abs=1e-5)
    assert stats["hardest_negative_mean"] == pytest.approx(np.mean(hardest), abs=1e-5)
    for name, level in (("margin_q10", 0.1), ("margin_q50", 0.5), ("margin_q90", 0.9)):
        assert stats[name] == pytest.approx(np.quantile(margins, level), abs=1e-5), name
    with pytest.raises(ValueError, match="not relevant"):
        margin_statistics(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([[True, True]]))


def test_exact_match_share_on_a_hand_made_pair():
    e = torch.eye(4)
    # query: [CLS] marker a b [SEP]; only a (id 10) and b (id 11) count
    query = torch.stack([e[0], e[3], e[1], e[2], e[3]])[None]
    query_ids = torch.tensor([[101, 1, 10, 11, 102]])
    query_mask = torch.tensor([[False, False, True, True, False]])
    # document: [CLS] marker a c b; b is masked out (as punctuation would be)
    c = torch.nn.functional.normalize(0.6 * e[2] + 0.8 * e[3], dim=0)
    document = torch.stack([e[0], e[3], e[1], c, e[2]])[None]
    document_ids = torch.tensor([[101, 2, 10, 12, 11]])
    document_mask = torch.tensor([[True, True, True, True, False]])
    # a finds a; b's own token is masked, so it finds c (0.6): 1 of 2
    share = exact_match_share(query, query_ids, query_mask, document, document_ids, document_mask)
    assert share == 0.5


def test_exact_match_share_matches_a_plain_loop():
    generator = np.random.default_rng(3)
    pairs, query_length, document_length = 5, 7, 11
    queries = generator.normal(size=(pairs, query_length, 4))
    documents = generator.normal(size=(pairs, document_length, 4))
    query_ids = generator.integers(0, 6, size=(pairs, query_length))
    document_ids = generator.integers(0, 6, size=(pairs, document_length))
    query_mask = generator.random((pairs, query_length)) < 0.7
    document_mask = generator.random((pairs, document_length)) < 0.6
    document_mask[:, 0] = True
    matched = counted = 0
    for p in range(pairs):
        for i in range(query_length):
            if not query_mask[p, i]:
                continue
            scored = [j for j in range(document_length) if document_mask[p, j]]
            best = max(scored, key=lambda j, p=p, i=i: queries[p, i] @ documents[p, j])
            matched += int(document_ids[p, best] == query_ids[p, i])
            counted += 1
    share = exact_match_share(
        *(torch.tensor(a) for a in (queries, query_ids, query_mask)),
        *(torch.tensor(a) for a in (documents, document_ids, document_mask)),
    )
    assert share == pytest.approx(matched / counted)
    assert 0 < matched < counted


@pytest.mark.parametrize("augmentation", [True, False])
def test_query_word_mask_keeps_exactly_the_word_pieces(augmentation):
    tokenizer = ColBERTTokenizer.from_config(tiny_config(query_augmentation=augmentation))
    texts = ["what is colbert?", "lift and drag of a wing"]
    tokens = tokenizer.queries(texts)
    mask = query_word_mask(tokens, tokenizer)
    for row, text in enumerate(texts):
        pieces = tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokens.input_ids[row][mask[row]].tolist() == pieces


def test_gradient_norms_per_layer_equal_the_norms_of_the_gradients_set():
    model = ColBERT.from_config(tiny_config())
    generator = torch.Generator().manual_seed(4)
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    model.encoder.encoder.layer[0].output.dense.bias.grad = None  # left out, not an error
    prefixes = {
        "embeddings": "encoder.embeddings.",
        "layer_0": "encoder.encoder.layer.0.",
        "projection": "linear.",
    }
    named = dict(model.named_parameters())
    assert all(any(name.startswith(p) for p in prefixes.values()) for name in named)

    norms = gradient_norms(model.named_parameters())

    def norm_of(names):
        grads = [named[n].grad.flatten() for n in names if named[n].grad is not None]
        return float(torch.linalg.vector_norm(torch.cat(grads).double()))

    assert list(norms) == [*prefixes, "total"]
    for group, prefix in prefixes.items():
        in_group = [name for name in named if name.startswith(prefix)]
        assert norms[group] == pytest.approx(norm_of(in_group), rel=1e-5), group
    assert norms["total"] == pytest.approx(norm_of(named), rel=1e-5)
    for parameter in model.parameters():
        parameter.grad = None
    assert gradient_norms(model.named_parameters()) == {}


# ---- the dev sample and one probe pass ---------------------------------------------------------


def test_the_probe_set_is_a_fixed_draw_of_judged_queries_and_their_relevant_documents(cranfield):
    tokenizer = ColBERTTokenizer.from_config(tiny_config())
    probe_set = sample_probe_set(cranfield, tokenizer, queries=8, documents=20, seed=5)
    again = sample_probe_set(cranfield, tokenizer, queries=8, documents=20, seed=5)
    other = sample_probe_set(cranfield, tokenizer, queries=8, documents=20, seed=6)
    assert (probe_set.query_ids, probe_set.document_ids) == (again.query_ids, again.document_ids)
    assert probe_set.query_ids != other.query_ids
    positives = {probe_set.document_ids[int(row)] for row in probe_set.positives}
    assert len(probe_set.query_ids) == len(set(probe_set.query_ids)) == 8
    assert len(probe_set.document_ids) == len(set(probe_set.document_ids)) == len(positives) + 20
    for row, query in enumerate(probe_set.query_ids):
        positive = probe_set.document_ids[int(probe_set.positives[row])]
        assert cranfield.qrels[query][positive] > 0
        for column, document in enumerate(probe_set.document_ids):
            judged = cranfield.qrels[query].get(document, 0) > 0
            assert bool(probe_set.relevant[row, column]) == judged


def test_a_query_without_a_negative_candidate_is_left_out():
    tokenizer = ColBERTTokenizer.from_config(tiny_config())
    dev_set = DevSet(
        corpus_ids=["d1", "d2"],
        corpus_texts=["lift of a wing", "drag of a wing"],
        queries={"every": "wing", "one": "lift"},
        qrels={"every": {"d1": 1, "d2": 2}, "one": {"d1": 1, "d2": 0}},
    )
    probe_set = sample_probe_set(dev_set, tokenizer, queries=2, documents=5)
    assert probe_set.query_ids == ["one"]
    assert probe_set.relevant.tolist() == [[probe_set.document_ids[i] == "d1" for i in (0, 1)]]
    dev_set.qrels["one"]["d2"] = 1
    with pytest.raises(ValueError, match="every candidate document is relevant"):
        sample_probe_set(dev_set, tokenizer, queries=2, documents=5)


def test_measure_probes_equals_each_text_scored_apart_and_leaves_the_run_alone(cranfield):
    config: ColBERTConfig = tiny_config()  # BERT's default dropout (0.1): train mode matters
    model = ColBERT.from_config(config)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    weights = copy.deepcopy(model.state_dict())
    model.train()

    probe_set = sample_probe_set(cranfield, model.tokenizer, queries=6, documents=10, seed=7)
    values = measure_probes(model, probe_set, batch_size=4)  # several batches of each kind

    # back in train mode, weights, gradients and the random state untouched
    assert all(module.training for module in model.modules())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert np.array_equal(states[2], np.random.get_state()[1])

    # independently: every text encoded alone, in eval mode, and numpy on the results
    queries = [cranfield.queries[query] for query in probe_set.query_ids]
    corpus = dict(zip(cranfield.corpus_ids, cranfield.corpus_texts, strict=True))
    documents = [corpus[document] for document in probe_set.document_ids]
    scores = model.score_texts(queries, documents).numpy()  # (Q, D)
    relevant = np.array(
        [
            [cranfield.qrels[q].get(d, 0) > 0 for d in probe_set.document_ids]
            for q in probe_set.query_ids
        ]
    )
    positive = scores[np.arange(len(queries)), probe_set.positives.numpy()]
    hardest = np.where(relevant, -np.inf, scores).max(axis=1)
    assert values["positive_mean"] == pytest.approx(positive.mean(), abs=1e-4)
    assert values["hardest_negative_mean"] == pytest.approx(hardest.mean(), abs=1e-4)
    assert values["margin_q50"] == pytest.approx(np.median(positive - hardest), abs=1e-4)

    hf_tokenizer = model.tokenizer.tokenizer
    special = {
        hf_tokenizer.cls_token_id,
        hf_tokenizer.sep_token_id,
        hf_tokenizer.mask_token_id,
        hf_tokenizer.pad_token_id,
        model.tokenizer.query_token_id,
    }
    tokens, matched, counted = [], 0, 0
    with inference(model):
        encoded = {}
        for text in documents:
            document = model.tokenizer.documents([text])
            embeddings = model.encode_documents(document)
            encoded[text] = (document, embeddings)
            tokens.append(embeddings.embeddings[0][embeddings.mask[0]].double().numpy())
        for row, text in enumerate(queries):
            query = model.tokenizer.queries([text])
            query_embeddings = model.encode_queries(query).embeddings[0]
            positive_text = documents[int(probe_set.positives[row])]
            document, embeddings = encoded[positive_text]
            scored = embeddings.mask[0].nonzero().flatten().tolist()
            for position, token in enumerate(query.input_ids[0].tolist()):
                if token in special:
                    continue
                similarity = embeddings.embeddings[0] @ query_embeddings[position]
                best = max(scored, key=lambda j, s=similarity: float(s[j]))
                matched += int(document.input_ids[0, best] == token)
                counted += 1
    assert values["exact_match_share"] == pytest.approx(matched / counted)
    matrix = np.concatenate(tokens)
    gram = matrix @ matrix.T
    pairs = len(matrix) * (len(matrix) - 1)
    assert values["anisotropy"] == pytest.approx((gram.sum() - np.trace(gram)) / pairs, abs=1e-5)
    singular = np.linalg.svd(matrix, compute_uv=False)
    shares = singular / singular.sum()
    erank = np.exp(-np.sum(shares * np.log(shares)))
    assert values["effective_rank"] == pytest.approx(erank, rel=1e-4)


# ---- the callback in a training run ------------------------------------------------------------


@pytest.fixture(scope="module")
def small_cranfield(tmp_path_factory, cranfield) -> Path:
    """A slice of the shipped Cranfield: 40 judged queries, their judged documents and 100
    others as the dev set (an evaluation of a few batches), and triples from its judgments."""
    folder = tmp_path_factory.mktemp("small_cranfield")
    rng = random.Random(0)
    queries = sorted(cranfield.queries)[:40]
    judged = sorted({document for query in queries for document in cranfield.qrels[query]})
    others = [document for document in cranfield.corpus_ids if document not in set(judged)]
    kept = set(judged) | set(rng.sample(others, 100))
    corpus = dict(zip(cranfield.corpus_ids, cranfield.corpus_texts, strict=True))
    with (folder / "corpus.jsonl").open("w") as handle:
        for document in sorted(kept):
            record = {"_id": document, "title": "", "text": corpus[document]}
            handle.write(json.dumps(record) + "\n")
    with (folder / "queries.jsonl").open("w") as handle:
        for query in queries:
            handle.write(json.dumps({"_id": query, "text": cranfield.queries[query]}) + "\n")
    (folder / "qrels").mkdir()
    write_qrels(folder / "qrels" / "test.tsv", {query: cranfield.qrels[query] for query in queries})
    with (folder / "train.jsonl").open("w") as handle:
        for query in queries:
            relevant = sorted(d for d, grade in cranfield.qrels[query].items() if grade > 0)
            triple = {
                "query": cranfield.queries[query],
                "positive": corpus[relevant[0]],
                "negatives": [corpus[rng.choice(sorted(kept))]],
            }
            handle.write(json.dumps(triple) + "\n")
    return folder


def _overrides(folder: Path, probes: bool = True) -> list[str]:
    switched_on = [
        "callbacks.probes.enabled=true",
        "callbacks.probes.queries=8",
        "callbacks.probes.documents=16",
    ]
    return [
        *TINY_OVERRIDES,
        "data=triples",
        f"data.train.path={folder / 'train.jsonl'}",
        f"data.dev.corpus={folder / 'corpus.jsonl'}",
        f"data.dev.queries={folder / 'queries.jsonl'}",
        f"data.dev.qrels={folder / 'qrels' / 'test.tsv'}",
        "data.num_workers=0",
        "data.batch_size=4",
        "logger=csv",
        "trainer.max_steps=6",
        "trainer.enable_progress_bar=false",
        "callbacks.evaluation.schedule.first=2",
        "callbacks.evaluation.schedule.interval=4",
        *(switched_on if probes else []),
    ]


def test_the_probes_share_the_evaluations_schedule_object_and_are_off_by_default(
    tmp_path, small_cranfield
):
    cfg = compose_train(tmp_path, tmp_path / "cache", _overrides(small_cranfield))
    callbacks = build_callbacks(cfg)
    (evaluation,) = [c for c in callbacks if isinstance(c, RetrievalEvaluation)]
    (probes,) = [c for c in callbacks if isinstance(c, TrainingProbes)]
    assert probes.schedule is evaluation.schedule
    assert (probes.queries, probes.documents) == (8, 16)
    default = compose_train(tmp_path, tmp_path / "cache", _overrides(small_cranfield, probes=False))
    assert not any(isinstance(c, TrainingProbes) for c in build_callbacks(default))
    alone = compose_train(
        tmp_path, tmp_path / "c", [*_overrides(small_cranfield), "~callbacks.evaluation"]
    )
    with pytest.raises(ConfigError, match="needs callbacks.evaluation"):
        build_callbacks(alone)


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, small_cranfield) -> Path:
    """A 6-step tiny run on Cranfield with the probes on, evaluated at steps 0, 2, 4 and 6."""
    folder = tmp_path_factory.mktemp("probed")
    train(compose_train(folder / "run", folder / "cache", _overrides(small_cranfield)))
    return folder / "run"


def test_every_probe_is_logged_at_exactly_the_evaluation_steps(probed_run):
    with (probed_run / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    def steps_of(column):
        return [int(row["step"]) for row in rows if row.get(column)]

    assert steps_of("val/ndcg@10") == [0, 2, 4, 6]
    for name in PROBES:
        assert steps_of(name) == [0, 2, 4, 6], name
    # the gradient of each evaluated step's weights; none after the last step
    for name in [*GRADIENT_NORMS, "probe/grad_norm/total"]:
        assert steps_of(name) == [0, 2, 4], name
    logged = {column for column in rows[0] if column.startswith("probe/")}
    assert logged == {*PROBES, *GRADIENT_NORMS, "probe/grad_norm/total"}
    curves = read_probe_curves(probed_run / "csv" / "metrics.csv")
    assert [step for step, _ in curves["probe/anisotropy"]] == [0, 2, 4, 6]
    for step, value in curves["probe/grad_norm/total"]:
        layers = [dict(curves[name])[step] for name in GRADIENT_NORMS]
        assert value == pytest.approx(np.sqrt(np.sum(np.square(layers))), rel=1e-5)


def test_summarize_draws_the_probes_only_for_runs_that_logged_them(probed_run, tmp_path):
    pytest.importorskip("matplotlib")
    sweep = load_sweep(probed_run)
    paths = write_summary(sweep, tmp_path / "summary", summarize_sweep(sweep, bm25=False))
    assert paths["curves_probes"] == tmp_path / "summary" / "curves_probes.png"
    assert paths["curves_probes"].read_bytes().startswith(b"\x89PNG")
    assert paths["curves_probes"].stat().st_size > 20_000
    # the same run without its probe columns: no figure
    plain = tmp_path / "plain"
    shutil.copytree(probed_run, plain)
    metrics = plain / "csv" / "metrics.csv"
    with metrics.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [column for column in rows[0] if not column.startswith("probe/")]
    with metrics.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, kept, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(row for row in rows if any(row[c] for c in kept if c != "step"))
    plain_sweep = load_sweep(plain)
    assert plot_probes(plain_sweep) is None
    written = write_summary(plain_sweep, tmp_path / "s2", summarize_sweep(plain_sweep, bm25=False))
    assert "curves_probes" not in written and not (tmp_path / "s2" / "curves_probes.png").exists()


@pytest.mark.slow
def test_probes_under_ddp_on_two_cpu_processes(tmp_path, small_cranfield):
    completed = run_cli(
        [
            "trainer=ddp_cpu",
            *_overrides(small_cranfield),
            "trainer.max_steps=2",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=REPO,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    curves = read_probe_curves(tmp_path / "ddp" / "csv" / "metrics.csv")
    assert [step for step, _ in curves["probe/margin_q50"]] == [0, 2]
    assert [step for step, _ in curves["probe/grad_norm/total"]] == [0]
