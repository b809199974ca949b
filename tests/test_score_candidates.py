"""``python -m colbert_lightning.score_candidates``: teacher scores of candidates (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.beir import write_qrels
from colbert_lightning.data.distillation import (
    CandidateSpec,
    score_candidates,
    state_path,
)
from colbert_lightning.data.negatives import prepare_triples
from colbert_lightning.data.readers import iter_examples, make_reader
from colbert_lightning.data.text_store import TextStore
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.checkpoints import write_checkpoint
from colbert_lightning.modeling.formats import write_folder
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.teachers import (
    CrossEncoderTeacher,
    TeacherSpec,
    load_teacher,
    teacher_kind,
)
from colbert_lightning.score_candidates import score, summary
from tests.conftest import tiny_config

DOCUMENTS = {
    "d1": "wings lift an aircraft through the air",
    "d2": "a wing stalls at a high angle of attack",
    "d3": "flutter shakes a wing at high speed",
    "d4": "rockets burn fuel to climb",
    "d5": "the boundary layer separates behind a shock",
    "d6": "",
    "d7": "heat transfer in a hypersonic flow",
    "d8": "lift and drag of a slender body",
}
QUERIES = {"q1": "how do wings give lift", "q2": "what is flutter", "q3": "hypersonic heat"}
QRELS = {"q1": {"d1": 1, "d2": 2, "d4": 0}, "q2": {"d3": 1}, "q3": {"d7": 1}}


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("beir")
    jsonl(folder / "corpus.jsonl", [{"_id": i, "text": t} for i, t in DOCUMENTS.items()])
    jsonl(folder / "queries.jsonl", [{"_id": i, "text": t} for i, t in QUERIES.items()])
    (folder / "qrels").mkdir()
    write_qrels(folder / "qrels" / "train.tsv", QRELS)
    return folder


@pytest.fixture(scope="module")
def triples(beir_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepare``'s BM25 triples of the tiny folder (qid, pid, neg_ids included)."""
    output = tmp_path_factory.mktemp("prepared")
    result = prepare_triples(
        beir_folder,
        "train",
        output,
        negatives_per_positive=4,
        min_rank=1,
        max_rank=8,
        dev_queries=0,
        show_progress=False,
    )
    return Path(result.triples)


@pytest.fixture(scope="module")
def colbert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return write_folder(
        ColBERT.from_config(tiny_config()), tmp_path_factory.mktemp("colbert"), "hf"
    )


def tiny_cross_encoder(folder: Path, num_labels: int = 1) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(resource_path("tokenizer/bert-base-uncased"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cross_encoder(tmp_path_factory.mktemp("cross_encoder"))


def read_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_spec(beir_folder: Path, run: Path) -> CandidateSpec:
    return CandidateSpec("run", str(run), root=str(beir_folder), split="train")


# ---------------------------------------------------------------- the two teachers


def test_colbert_teacher_scores_prepare_triples(
    triples: Path, colbert_folder: Path, tmp_path: Path
) -> None:
    output = tmp_path / "scored.jsonl"
    candidates = CandidateSpec("triples", str(triples))
    result = score_candidates(
        candidates, TeacherSpec(str(colbert_folder)), output, batch_size=4, show_progress=False
    )
    source = [json.loads(line) for line in triples.read_text().splitlines()]
    written = read_lines(output)
    assert result.lines == len(source) == len(written) == 4  # q1: d1, d2; q2: d3; q3: d7
    assert result.queries == 3 and result.skipped == {}
    assert result.documents == sum(1 + len(record["negatives"]) for record in source)
    model = ColBERT.load(colbert_folder)
    for record, line in zip(source, written, strict=True):
        # the positive first, then prepare's negatives, in order, with their ids
        assert line["documents"] == [record["positive"], *record["negatives"]]
        assert line["qid"] == record["qid"]
        assert line["doc_ids"] == [record["pid"], *record["neg_ids"]]
        for position in (0, len(line["documents"]) - 1):  # independent: one pair at a time
            expected = model.score_texts([line["query"]], [line["documents"][position]])
            assert line["scores"][position] == pytest.approx(float(expected[0, 0]), abs=1e-4)
    # read back as training data: the same texts and scores
    examples = [example for _, example in iter_examples(make_reader("scored_jsonl", output))]
    assert [list(example.scores) for example in examples] == [line["scores"] for line in written]
    assert [example.positive_id for example in examples] == [r["pid"] for r in source]


def test_cross_encoder_teacher(triples: Path, cross_encoder: Path, tmp_path: Path) -> None:
    assert teacher_kind(cross_encoder) == "cross_encoder"
    output = tmp_path / "scored.jsonl"
    score_candidates(
        CandidateSpec("triples", str(triples)),
        TeacherSpec(str(cross_encoder)),
        output,
        batch_size=5,
        show_progress=False,
    )
    model = BertForSequenceClassification.from_pretrained(cross_encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(cross_encoder)
    for line in read_lines(output)[:2]:
        for position in (0, 2):
            encoded = tokenizer(line["query"], line["documents"][position], return_tensors="pt")
            with torch.no_grad():
                expected = float(model(**encoded).logits[0, 0])
            assert line["scores"][position] == pytest.approx(expected, abs=1e-4)


def test_two_label_cross_encoder_scores_the_relevant_label(tmp_path: Path) -> None:
    folder = tiny_cross_encoder(tmp_path / "two", num_labels=2)
    teacher = CrossEncoderTeacher.load(folder, max_length=64, device="cpu")
    scores = teacher.score_pairs(["what is flutter"], ["flutter shakes a wing"])
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    encoded = AutoTokenizer.from_pretrained(folder)(
        "what is flutter", "flutter shakes a wing", return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**encoded).logits
    assert float(scores[0]) == pytest.approx(float(logits[0, 1]), abs=1e-5)


def test_teacher_kinds_by_folder(tmp_path: Path, colbert_folder: Path) -> None:
    assert teacher_kind(colbert_folder) == "colbert"
    encoder = tmp_path / "encoder"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(encoder)
    with pytest.raises(ValueError, match="cannot tell what model this folder holds"):
        teacher_kind(encoder)
    # told it is a cross-encoder, a folder without a classifier is refused, not scored at random
    with pytest.raises(ValueError, match="not a trained cross-encoder"):
        load_teacher(TeacherSpec(str(encoder), kind="cross_encoder"), device="cpu")
    with pytest.raises(ValueError, match="teacher.kind='bert'"):
        teacher_kind(encoder, "bert")
    with pytest.raises(FileNotFoundError, match="no such checkpoint or model folder"):
        teacher_kind(tmp_path / "missing")


def test_checkpoint_and_run_folder_teachers(
    tmp_path: Path, colbert_folder: Path, triples: Path
) -> None:
    model = ColBERT.load(colbert_folder)
    run = tmp_path / "run"
    checkpoint = {
        "colbert": model.checkpoint_metadata(),
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
    }
    write_checkpoint(checkpoint, run / "checkpoints" / "last.ckpt")
    assert teacher_kind(run) == "colbert"
    outputs = []
    for teacher in (run / "checkpoints" / "last.ckpt", run, colbert_folder):
        output = tmp_path / f"{len(outputs)}.jsonl"
        candidates = CandidateSpec("triples", str(triples))
        score_candidates(candidates, TeacherSpec(str(teacher)), output, show_progress=False)
        outputs.append([line["scores"] for line in read_lines(output)])
    assert outputs[0] == outputs[1]
    assert torch.allclose(torch.tensor(outputs[0]), torch.tensor(outputs[2]), atol=1e-5)


# ---------------------------------------------------------------- a run with a BEIR folder


class PairScorer:
    """A stand-in teacher: a pair's score is the number of words the two texts share.

    It records the pairs of each call, and raises (as a kill would stop the run) once it has
    answered ``fail_after`` calls.
    """

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.fail_after = fail_after

    def score_pairs(self, queries: list[str], documents: list[str]) -> torch.Tensor:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(list(zip(queries, documents, strict=True)))
        return torch.tensor(
            [
                float(len(set(q.split()) & set(d.split())))
                for q, d in zip(queries, documents, strict=True)
            ]
        )


def write_run(path: Path) -> Path:
    rows = [
        ("q1", "d4"),
        ("q1", "d1"),  # relevant: never a negative
        ("q1", "d6"),  # empty: left out
        ("q1", "d5"),
        ("q1", "d8"),
        ("q2", "d2"),
        ("q2", "d1"),
        ("q4", "d2"),  # q4 has no judgment: no line
    ]
    lines = [f"{q} Q0 {d} {rank} {10 - rank}.0 bm25" for rank, (q, d) in enumerate(rows, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def beir_with_q4(beir_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    folder.mkdir()
    for name in ("corpus.jsonl", "qrels"):
        (folder / name).symlink_to(beir_folder / name)
    queries = {**QUERIES, "q4": "an unjudged query"}
    jsonl(folder / "queries.jsonl", [{"_id": i, "text": t} for i, t in queries.items()])
    return folder


def test_run_candidates_with_judged_positives(beir_with_q4: Path, tmp_path: Path) -> None:
    output = tmp_path / "scored.jsonl"
    (tmp_path / "unused.ckpt").write_bytes(b"")  # never loaded: a scorer is given
    result = score_candidates(
        run_spec(beir_with_q4, write_run(tmp_path / "run.trec")),
        TeacherSpec(str(tmp_path / "unused.ckpt"), kind="colbert"),
        output,
        max_candidates=2,
        scorer=PairScorer(),
        show_progress=False,
    )
    lines = read_lines(output)
    assert [(line["qid"], line["doc_ids"]) for line in lines] == [
        ("q1", ["d1", "d4", "d5"]),  # each relevant document first, the run's others in rank
        ("q1", ["d2", "d4", "d5"]),  # order, relevant and empty ones left out, 2 kept
        ("q2", ["d3", "d2", "d1"]),
    ]
    assert lines[0]["documents"][0] == DOCUMENTS["d1"]
    assert lines[0]["scores"][0] == 2.0  # "wings" and "lift" shared with q1
    assert result.skipped == {"judged_queries_not_in_run": 1, "no_relevant_document": 1}
    assert (result.lines, result.queries, result.documents) == (3, 2, 9)


def test_colbert_ids_output_reads_back(beir_folder: Path, triples: Path, tmp_path: Path) -> None:
    (tmp_path / "unused.ckpt").write_bytes(b"")
    output = tmp_path / "distill.jsonl"
    score_candidates(
        CandidateSpec("triples", str(triples)),
        TeacherSpec(str(tmp_path / "unused.ckpt")),
        output,
        output_format="colbert_ids",
        scorer=PairScorer(),
        show_progress=False,
    )
    first = json.loads(output.read_text().splitlines()[0])
    assert isinstance(first[0], str) and all(len(pair) == 2 for pair in first[1:])
    stores = TextStore(beir_folder / "queries.jsonl"), TextStore(beir_folder / "corpus.jsonl")
    reader = make_reader("colbert_ids", output, *stores)
    for _, example in iter_examples(reader):
        documents = (example.positive, *example.negatives)
        expected = [float(len(set(example.query.split()) & set(d.split()))) for d in documents]
        assert list(example.scores) == expected


def test_colbert_ids_needs_ids(tmp_path: Path) -> None:
    (tmp_path / "unused.ckpt").write_bytes(b"")
    triples = jsonl(tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negatives": ["n"]}])
    with pytest.raises(ValueError, match=r"t.jsonl:1 has none .* write scored_jsonl instead"):
        score_candidates(
            CandidateSpec("triples", str(triples)),
            TeacherSpec(str(tmp_path / "unused.ckpt")),
            tmp_path / "out.jsonl",
            output_format="colbert_ids",
            scorer=PairScorer(),
            show_progress=False,
        )


# ---------------------------------------------------------------- resuming


def test_resume_after_a_kill_gives_the_same_file(triples: Path, tmp_path: Path) -> None:
    (tmp_path / "unused.ckpt").write_bytes(b"")
    candidates = CandidateSpec("triples", str(triples))
    teacher = TeacherSpec(str(tmp_path / "unused.ckpt"))
    options = {"batch_size": 10, "show_progress": False}  # 5 documents a line: 2 lines a call
    whole = tmp_path / "whole.jsonl"
    uninterrupted = PairScorer()
    score_candidates(candidates, teacher, whole, scorer=uninterrupted, **options)
    assert len(uninterrupted.calls) == 2
    whole_lines = whole.read_bytes().splitlines(keepends=True)

    # killed after the first call's lines were written; then cut inside its second line, as a
    # kill in the middle of writing it would leave the file
    killed = tmp_path / "killed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        score_candidates(candidates, teacher, killed, scorer=PairScorer(fail_after=1), **options)
    assert killed.read_bytes() == b"".join(whole_lines[:2])
    assert not json.loads(state_path(killed).read_text())["complete"]
    killed.write_bytes(whole_lines[0] + whole_lines[1][:20])
    resumed = PairScorer()
    result = score_candidates(candidates, teacher, killed, scorer=resumed, **options)
    assert killed.read_bytes() == whole.read_bytes()
    assert (result.resumed_lines, result.scored_lines, result.lines) == (1, 3, 4)
    # the kept line's batch is scored again as a whole (the same company, the same padding)
    assert resumed.calls == uninterrupted.calls

    # killed between batches: the written batch is not scored again
    between = tmp_path / "between.jsonl"
    with pytest.raises(KeyboardInterrupt):
        score_candidates(candidates, teacher, between, scorer=PairScorer(fail_after=1), **options)
    resumed = PairScorer()
    score_candidates(candidates, teacher, between, scorer=resumed, **options)
    assert between.read_bytes() == whole.read_bytes()
    assert resumed.calls == uninterrupted.calls[1:]

    # complete now: nothing is scored again
    again = score_candidates(
        candidates, teacher, killed, scorer=PairScorer(fail_after=0), **options
    )
    assert again.cached and again.lines == 4 and again.documents == result.documents
    # other settings are refused, not mixed into the file
    with pytest.raises(ValueError, match="written with other settings"):
        score_candidates(
            candidates, teacher, killed, max_candidates=1, scorer=PairScorer(), **options
        )
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("{}\n")
    with pytest.raises(ValueError, match="exists but has no foreign.jsonl.state.json"):
        score_candidates(candidates, teacher, foreign, scorer=PairScorer(), **options)


def test_changed_input_is_refused_on_resume(tmp_path: Path) -> None:
    (tmp_path / "unused.ckpt").write_bytes(b"")
    record = {"query": "q", "positive": "p", "negatives": ["n"]}
    triples = jsonl(tmp_path / "t.jsonl", [record])
    teacher = TeacherSpec(str(tmp_path / "unused.ckpt"))
    output = tmp_path / "out.jsonl"
    candidates = CandidateSpec("triples", str(triples))
    score_candidates(candidates, teacher, output, scorer=PairScorer(), show_progress=False)
    jsonl(triples, [record, record])
    with pytest.raises(ValueError, match="t.jsonl changed since"):
        score_candidates(candidates, teacher, output, scorer=PairScorer(), show_progress=False)


def test_bad_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "unused.ckpt").write_bytes(b"")
    good = {"query": "q", "positive": "p", "negatives": ["n"]}
    triples = tmp_path / "t.jsonl"
    triples.write_text(json.dumps(good) + "\n{broken\n" + json.dumps(good) + "\n")
    teacher = TeacherSpec(str(tmp_path / "unused.ckpt"))
    result = score_candidates(
        CandidateSpec("triples", str(triples), on_bad_line="skip"),
        teacher,
        tmp_path / "out.jsonl",
        scorer=PairScorer(),
        show_progress=False,
    )
    assert (result.lines, result.skipped) == (2, {"bad_lines": 1})


# ---------------------------------------------------------------- the command's config


def test_command_config(triples: Path, cross_encoder: Path, tmp_path: Path) -> None:
    register_resolvers()
    output = tmp_path / "scored.jsonl"
    overrides = [
        f"teacher.path={cross_encoder}",
        f"candidates.path={triples}",
        f"output={output}",
        "max_candidates=2",
        "batch_size=7",
        "device=cpu",
        "show_progress=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("score_candidates", overrides=overrides)
    result = score(cfg)
    assert result.lines == 4
    assert all(len(line["documents"]) == 3 for line in read_lines(output))
    assert "lines: 4" in summary(result) and "skipped: nothing" in summary(result)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        misspelt = compose("score_candidates", overrides=[*overrides, "+teacher.kindd=auto"])
    with pytest.raises(Exception, match="kindd"):
        score(misspelt)
