"""Teacher scores for distillation: candidate lists scored by a teacher, written as training data.

``score_candidates`` reads candidate lists, a query with its positive first and then its
candidate negatives, from one of two sources:

- ``triples``: a training file (``prepare``'s ``triples.jsonl``, or any format ``make_reader``
  reads except ``crops``): each line's positive and all its negatives, its ids when it has them.
- ``run``: a TREC run (``qid Q0 docid rank score tag``) with a BEIR folder (corpus, queries,
  ``qrels/<split>.tsv``). For each query of the run and each document the qrels judge relevant
  to it (grade > 0, non-empty text), one list: that document first, then the run's candidates
  in rank order, leaving out every document judged relevant to the query and every empty one.
  A query of the run with no relevant document in the qrels gives no list (counted as
  ``no_relevant_document``); a judged query missing from the run gives none either (counted as
  ``judged_queries_not_in_run``).

It scores every (query, document) pair with a teacher (``retrieval/teachers.py``) in batches and
writes one line per list, the positive first whatever its score:

- ``scored_jsonl``: ``{"query", "documents", "scores"}``, plus ``"qid"`` and ``"doc_ids"`` when
  the lists have ids;
- ``colbert_ids``: colbert-ai's ``[qid, [pid, score], [pid, score], ...]`` (needs ids; train with
  the queries and collection the ids come from).

Both are training formats (``data.train.format``), read back by ``data/readers.py``.

Resumable: lines are written and flushed as they are scored, and ``<output>.state.json`` (written
before the output, atomically) records the settings and the inputs' fingerprints and, at the end,
``"complete": true`` with the counts. A rerun with the same settings and inputs keeps the complete
lines a killed run wrote (a torn last line is cut off and written again) and scores the rest.
The lists come in the same order every time and are batched at the same lines, so with the same
``batch_size`` and device the file ends up byte for byte an uninterrupted run's. A complete
output is returned at once; other settings or changed inputs are refused rather than mixed into
it (``batch_size`` and ``device`` are not settings: a resume may change them).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from colbert_lightning.data.beir import (
    find_beir_file,
    load_candidates,
    load_corpus,
    load_qrels,
    load_queries,
    qrels_path,
)
from colbert_lightning.data.crops import CROPS_FORMAT
from colbert_lightning.data.errors import BadLines, check_on_bad_line
from colbert_lightning.data.fingerprints import fingerprint, same_content
from colbert_lightning.data.lines import is_gzipped
from colbert_lightning.data.readers import (
    SCORED_JSONL_FORMAT,
    TRAIN_FORMATS,
    iter_examples,
    make_reader,
)
from colbert_lightning.data.text_store import TextStore
from colbert_lightning.modeling.checkpoints import write_atomically
from colbert_lightning.retrieval.teachers import (
    Teacher,
    TeacherSpec,
    load_teacher,
    teacher_files,
    teacher_kind,
)

log = logging.getLogger(__name__)

CandidateSource = Literal["triples", "run"]
CANDIDATE_SOURCES: tuple[str, ...] = ("triples", "run")
OutputFormat = Literal["scored_jsonl", "colbert_ids"]
OUTPUT_FORMATS: tuple[str, ...] = (SCORED_JSONL_FORMAT, "colbert_ids")
STATE_SUFFIX = ".state.json"
STATE_VERSION = 1


@dataclass
class CandidateSpec:
    """Where the candidate lists come from (``candidates`` of ``conf/score_candidates.yaml``).

    Attributes:
        source: ``triples`` (a training file) or ``run`` (a TREC run with a BEIR folder).
        path: the training file, or the run file.
        format: ``triples``: the training file's format (``jsonl`` for ``prepare``'s).
        queries: ``triples`` in an id format: the queries file.
        collection: ``triples`` in an id format: the collection file.
        root: ``run``: the BEIR folder (corpus, queries, qrels) the run's ids come from.
        split: ``run``: the qrels split whose relevant documents are the positives.
        on_bad_line: ``triples``: ``error`` stops at a malformed line, ``skip`` counts it.
    """

    source: str
    path: str
    format: str = "jsonl"
    queries: str | None = None
    collection: str | None = None
    root: str | None = None
    split: str = "train"
    on_bad_line: str = "error"

    def check(self) -> None:
        """Raise ValueError naming the ``candidates.*`` key of a value that cannot work."""
        if self.source not in CANDIDATE_SOURCES:
            raise ValueError(
                f"candidates.source={self.source!r}: expected one of {CANDIDATE_SOURCES}"
            )
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"candidates.path={self.path}: no such file")
        check_on_bad_line(self.on_bad_line)
        if self.source == "triples":
            if self.format not in TRAIN_FORMATS or self.format == CROPS_FORMAT:
                formats = [fmt for fmt in TRAIN_FORMATS if fmt != CROPS_FORMAT]
                raise ValueError(f"candidates.format={self.format!r}: expected one of {formats}")
        elif not self.root or not Path(self.root).is_dir():
            raise ValueError(f"candidates.root={self.root}: a run needs its BEIR folder")

    def input_files(self) -> dict[str, Path]:
        """The files the lists are read from, by name (their content keys a resume)."""
        files = {"candidates": Path(self.path)}
        if self.source == "run":
            root = Path(self.root)
            files["corpus"] = find_beir_file(root, "corpus")
            files["queries"] = find_beir_file(root, "queries")
            files["qrels"] = qrels_path(root, self.split)
        else:
            for name in ("queries", "collection"):
                if getattr(self, name):
                    files[name] = Path(getattr(self, name))
        return files


@dataclass(frozen=True)
class CandidateList:
    """A query and the documents to score for it, the positive first.

    Attributes:
        query: the query text.
        documents: the positive's text, then the candidate negatives' texts.
        source: where the list comes from (``file:line``, or the run and the query id).
        query_id: the query's id, when known.
        doc_ids: the documents' ids (aligned with ``documents``), when known.
    """

    query: str
    documents: tuple[str, ...]
    source: str
    query_id: str | None = None
    doc_ids: tuple[str, ...] | None = None


def keep_candidates(candidates: CandidateList, max_candidates: int | None) -> CandidateList:
    """The list with its first ``max_candidates`` negatives only (None: all); the positive stays.

    >>> full = CandidateList("q", ("pos", "n1", "n2", "n3"), "f:1", "q1", ("p", "a", "b", "c"))
    >>> kept = keep_candidates(full, 2)
    >>> kept.documents, kept.doc_ids
    (('pos', 'n1', 'n2'), ('p', 'a', 'b'))
    >>> keep_candidates(full, None) is full
    True
    """
    if max_candidates is None or len(candidates.documents) <= 1 + max_candidates:
        return candidates
    ids = candidates.doc_ids
    return replace(
        candidates,
        documents=candidates.documents[: 1 + max_candidates],
        doc_ids=None if ids is None else ids[: 1 + max_candidates],
    )


def float32_value(score: float) -> float:
    """``score`` with the 9 significant digits that spell a float32 exactly.

    A float32 read back from these digits is the same float32; the line is shorter than with
    the 17 digits of the double it was widened to.

    >>> float32_value(0.8999999761581421)
    0.899999976
    """
    return float(format(score, ".9g"))


def scored_line(
    candidates: CandidateList, scores: Sequence[float], output_format: str = SCORED_JSONL_FORMAT
) -> str:
    """One output line (with its newline): the list's documents and their scores, positive first.

    >>> lists = CandidateList("what", ("yes", "no"), "f:1", "q7", ("d1", "d2"))
    >>> print(scored_line(lists, [2.5, -1.0]), end="")  # doctest: +NORMALIZE_WHITESPACE
    {"query": "what", "documents": ["yes", "no"], "scores": [2.5, -1.0],
     "qid": "q7", "doc_ids": ["d1", "d2"]}
    >>> print(scored_line(lists, [2.5, -1.0], "colbert_ids"), end="")
    ["q7", ["d1", 2.5], ["d2", -1.0]]

    Raises:
        ValueError: not one score per document, an unknown format, or ``colbert_ids`` for a
            list without ids (naming its source).
    """
    if len(scores) != len(candidates.documents):
        raise ValueError(
            f"{candidates.source}: {len(scores)} scores for {len(candidates.documents)} documents"
        )
    check_ids(candidates, output_format)
    values = [float32_value(score) for score in scores]
    has_ids = candidates.query_id is not None and candidates.doc_ids is not None
    if output_format == SCORED_JSONL_FORMAT:
        record: dict[str, Any] = {
            "query": candidates.query,
            "documents": list(candidates.documents),
            "scores": values,
        }
        if has_ids:
            record["qid"] = candidates.query_id
            record["doc_ids"] = list(candidates.doc_ids)
        return json.dumps(record, ensure_ascii=False) + "\n"
    pairs = [[doc_id, value] for doc_id, value in zip(candidates.doc_ids, values, strict=True)]
    return json.dumps([candidates.query_id, *pairs], ensure_ascii=False) + "\n"


def check_ids(candidates: CandidateList, output_format: str) -> None:
    """Check that ``output_format`` can write the list: ``colbert_ids`` needs its ids.

    Raises:
        ValueError: an unknown format, or ``colbert_ids`` for a list without ids (naming its
            source).
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r}: expected one of {OUTPUT_FORMATS}")
    if output_format == "colbert_ids" and (
        candidates.query_id is None or candidates.doc_ids is None
    ):
        raise ValueError(
            f"output_format=colbert_ids writes ids, but {candidates.source} has none (a text "
            "training file without qid/pid/neg_ids): write scored_jsonl instead"
        )


# ---- candidate sources ------------------------------------------------------------------------


def candidates_from_triples(spec: CandidateSpec, bad_lines: BadLines) -> Iterator[CandidateList]:
    """One list per valid line of a training file: its positive, then all its negatives.

    Raises:
        DataFormatError: a bad line, under ``on_bad_line=error``.
    """
    queries = TextStore(spec.queries, bad_lines=bad_lines) if spec.queries else None
    collection = TextStore(spec.collection, bad_lines=bad_lines) if spec.collection else None
    reader = make_reader(spec.format, spec.path, queries, collection, min_negatives=1)
    for _, example in iter_examples(reader, bad_lines):
        ids = None
        if example.positive_id is not None and example.negative_ids is not None:
            ids = (example.positive_id, *example.negative_ids)
        yield CandidateList(
            example.query,
            (example.positive, *example.negatives),
            example.source,
            example.query_id if ids is not None else None,
            ids,
        )


def candidates_from_run(spec: CandidateSpec, skipped: Counter) -> list[CandidateList]:
    """One list per (query of the run, document judged relevant to it), in run order.

    See the module's docstring; ``skipped`` counts what gives no list, by reason.

    Raises:
        DataFormatError: a malformed line of the run, corpus, queries or qrels, or an id
            unknown to the corpus or queries.
    """
    files = spec.input_files()
    corpus = load_corpus(files["corpus"])
    texts = dict(zip(corpus.ids, corpus.texts, strict=True))
    queries = load_queries(files["queries"])
    qrels = load_qrels(files["qrels"], query_ids=set(queries), doc_ids=set(texts))
    run = load_candidates(spec.path, doc_ids=set(texts))
    lists = []
    for query_id, ranked in run.items():
        if query_id not in queries:
            raise ValueError(
                f"{spec.path}: query id {query_id!r} of the run is not in {files['queries']}"
            )
        relevant = [doc_id for doc_id, grade in qrels.get(query_id, {}).items() if grade > 0]
        if not relevant:
            skipped["no_relevant_document"] += 1
            continue
        negatives = [
            doc_id
            for doc_id in dict.fromkeys(ranked)  # a document listed twice is scored once
            if doc_id not in relevant and texts[doc_id].strip()
        ]
        for positive_id in relevant:
            if not texts[positive_id].strip():
                skipped["empty_positive"] += 1
                continue
            if not negatives:
                skipped["no_negatives"] += 1
                continue
            doc_ids = (positive_id, *negatives)
            lists.append(
                CandidateList(
                    queries[query_id],
                    tuple(texts[doc_id] for doc_id in doc_ids),
                    f"{spec.path} (query {query_id!r}, positive {positive_id!r})",
                    query_id,
                    doc_ids,
                )
            )
    judged = [q for q, grades in qrels.items() if any(grade > 0 for grade in grades.values())]
    skipped["judged_queries_not_in_run"] += sum(1 for query_id in judged if query_id not in run)
    return lists


# ---- resumable output -------------------------------------------------------------------------


def state_path(output: str | os.PathLike) -> Path:
    """The state file of an output: ``<output>.state.json``, beside it.

    >>> state_path("out/scored.jsonl").name
    'scored.jsonl.state.json'
    """
    output = Path(output)
    return output.with_name(output.name + STATE_SUFFIX)


def complete_lines(path: str | os.PathLike) -> int:
    """Count the complete lines of a partly written file, cutting off a torn last line.

    A line is complete when its newline was written: a process killed in the middle of a line
    leaves some of its bytes without one, which are removed.
    """
    path = Path(path)
    lines = offset = end_of_last_line = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk.rfind(b"\n")
            if last >= 0:
                end_of_last_line = offset + last + 1
            offset += len(chunk)
    if end_of_last_line < offset:
        log.info(
            "%s: a torn last line (%d bytes) is written again", path, offset - end_of_last_line
        )
        with open(path, "rb+") as file:
            file.truncate(end_of_last_line)
    return lines


@dataclass
class ScoringResult:
    """What ``score_candidates`` wrote.

    Attributes:
        output: the scored file.
        state: its state file (settings, input fingerprints, counts).
        output_format: ``scored_jsonl`` or ``colbert_ids``.
        lines: lines in the output: one per list.
        documents: documents scored in it (positives included).
        queries: distinct queries in it (by id when known, else by text).
        skipped: what gave no line, by reason (``bad_lines``, ``no_relevant_document``,
            ``empty_positive``, ``no_negatives``, ``judged_queries_not_in_run``).
        resumed_lines: complete lines an earlier, killed run had written (kept).
        scored_lines: lines scored by this run.
        cached: True when the output was already complete: nothing was done.
    """

    output: str
    state: str
    output_format: str
    lines: int
    documents: int
    queries: int
    skipped: dict[str, int] = field(default_factory=dict)
    resumed_lines: int = 0
    scored_lines: int = 0
    cached: bool = False

    def counts(self) -> dict[str, Any]:
        """The counts the state file records."""
        return {
            "lines": self.lines,
            "documents": self.documents,
            "queries": self.queries,
            "skipped": dict(self.skipped),
        }


def _settings(
    candidates: CandidateSpec,
    teacher: TeacherSpec,
    kind: str,
    output_format: str,
    max_candidates: int | None,
) -> dict[str, Any]:
    """What the output's content depends on, besides the inputs' content (batch size does not)."""

    def resolved(path: str | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    return {
        "candidates": {
            "source": candidates.source,
            "path": resolved(candidates.path),
            **(
                {"root": resolved(candidates.root), "split": candidates.split}
                if candidates.source == "run"
                else {
                    "format": candidates.format,
                    "queries": resolved(candidates.queries),
                    "collection": resolved(candidates.collection),
                    "on_bad_line": candidates.on_bad_line,
                }
            ),
        },
        "teacher": {
            "path": resolved(teacher.path),
            "kind": kind,
            **({"max_length": teacher.max_length} if kind == "cross_encoder" else {}),
        },
        "output_format": output_format,
        "max_candidates": max_candidates,
    }


def _input_paths(candidates: CandidateSpec, teacher: TeacherSpec) -> dict[str, Path]:
    paths = dict(candidates.input_files())
    for number, path in enumerate(teacher_files(teacher.path)):
        paths[f"teacher_{number}"] = path
    return paths


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: unreadable state file ({error}); remove it and the output"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state file of score_candidates; remove it and the output")
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(state, indent=2) + "\n").encode("utf-8"))


def _resume_point(
    output: Path,
    state_file: Path,
    settings: dict[str, Any],
    inputs: dict[str, Path],
) -> tuple[dict[str, Any] | None, int]:
    """Where to start: ``(state, lines)`` of a complete output, else ``(None, lines kept)``.

    The lines kept are the complete lines a killed run left (0 for a new output, whose state
    file is written here).

    Raises:
        ValueError: the output exists without a state file, or was written with other
            settings or from inputs that have changed since.
    """
    remove = f"remove {output} and {state_file}, or choose another output"
    if not state_file.is_file():
        if output.exists():
            raise ValueError(
                f"{output} exists but has no {state_file.name}: score_candidates did not write "
                f"it (or lost its state); {remove}"
            )
        _write_state(
            state_file,
            {
                "version": STATE_VERSION,
                "complete": False,
                "settings": settings,
                "inputs": {name: fingerprint(path) for name, path in inputs.items()},
            },
        )
        return None, 0
    state = _read_state(state_file)
    if state.get("version") != STATE_VERSION or state.get("settings") != settings:
        raise ValueError(f"{output} was written with other settings (see {state_file}); {remove}")
    recorded = state.get("inputs")
    if not isinstance(recorded, dict) or set(recorded) != set(inputs):
        raise ValueError(f"{output} was written from other input files; {remove}")
    for name, path in inputs.items():
        if same_content(recorded[name], path) is None:
            raise ValueError(f"{path} changed since {output} was written from it; {remove}")
    if state.get("complete"):
        return state, int(state["counts"]["lines"])
    if not output.exists():
        return None, 0
    return None, complete_lines(output)


def score_candidates(
    candidates: CandidateSpec,
    teacher: TeacherSpec,
    output: str | os.PathLike,
    output_format: str = SCORED_JSONL_FORMAT,
    max_candidates: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool = True,
    scorer: Teacher | None = None,
) -> ScoringResult:
    """Score every candidate list with a teacher and write them as a distillation file.

    See the module's docstring for the sources, formats and resuming.

    Args:
        candidates: where the lists come from.
        teacher: the scoring model.
        output: the file to write (``.jsonl``; its folder is created).
        output_format: ``scored_jsonl`` or ``colbert_ids``.
        max_candidates: negatives kept per list, the first ones in candidate order (file order
            for ``triples``, rank order for ``run``); None keeps them all.
        batch_size: (query, document) pairs per teacher call. Lists are grouped, in order,
            until they hold ``batch_size`` pairs; a group is scored in calls of ``batch_size``
            pairs, then its lines are written and flushed.
        device: where the teacher runs (``cpu``, ``cuda``...); None: CUDA when present.
        show_progress: a progress bar of the lines written.
        scorer: the teacher already loaded (tests), instead of loading ``teacher``.

    Returns:
        The counts of the output (the same whether the run was interrupted or not).

    Raises:
        ValueError: an impossible setting, an output of other settings or inputs, or
            ``colbert_ids`` for lists without ids.
        FileNotFoundError: a missing input or teacher.
        DataFormatError: a malformed input line (``triples`` under ``on_bad_line=error``).
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r}: expected one of {OUTPUT_FORMATS}")
    if max_candidates is not None and (
        isinstance(max_candidates, bool)
        or not isinstance(max_candidates, int)
        or max_candidates < 1
    ):
        raise ValueError(f"max_candidates must be null (all) or >= 1, got {max_candidates!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    candidates.check()
    kind = teacher_kind(teacher.path, teacher.kind)
    output = Path(output)
    state_file = state_path(output)
    settings = _settings(candidates, teacher, kind, output_format, max_candidates)
    output.parent.mkdir(parents=True, exist_ok=True)
    done, kept = _resume_point(output, state_file, settings, _input_paths(candidates, teacher))
    if done is not None:
        counts = done["counts"]
        log.info("%s is complete (%d lines): nothing to do", output, counts["lines"])
        return ScoringResult(
            str(output),
            str(state_file),
            output_format,
            counts["lines"],
            counts["documents"],
            counts["queries"],
            dict(counts["skipped"]),
            resumed_lines=counts["lines"],
            cached=True,
        )
    if kept:
        log.info("%s: resuming after the %d complete lines written before", output, kept)

    skipped: Counter = Counter()
    bad_lines = BadLines(candidates.on_bad_line)
    if candidates.source == "run":
        lists: Sequence[CandidateList] | Iterator[CandidateList] = candidates_from_run(
            candidates, skipped
        )
        total = len(lists)
    else:
        lists = candidates_from_triples(candidates, bad_lines)
        total = None if is_gzipped(candidates.path) else _line_count(candidates.path)
    if scorer is None:
        scorer = load_teacher(teacher, device)

    lines = documents = pending_pairs = 0
    queries: set[str] = set()
    # (line number, list) of the batch being filled. Batches are cut at the same lines whether
    # or not a run resumes, so a line kept from a killed run is scored again (not written) when
    # its batch is only partly written: every line is scored in the same company, padding and
    # all, as in an uninterrupted run.
    pending: list[tuple[int, CandidateList]] = []
    with (
        open(output, "a", encoding="utf-8") as file,
        tqdm(total=total, unit="line", desc="scoring", disable=not show_progress) as progress,
    ):

        def write_pending() -> None:
            if pending[-1][0] < kept:  # written whole by the killed run
                pending.clear()
                return
            pairs = [(item.query, text) for _, item in pending for text in item.documents]
            scores: list[float] = []
            for begin in range(0, len(pairs), batch_size):
                batch = pairs[begin : begin + batch_size]
                scored = scorer.score_pairs([q for q, _ in batch], [d for _, d in batch])
                scores += scored.tolist()
            start = 0
            for number, item in pending:
                end = start + len(item.documents)
                if number >= kept:
                    file.write(scored_line(item, scores[start:end], output_format))
                    progress.update(1)
                start = end
            file.flush()  # what is written survives a kill
            pending.clear()

        for number, item in enumerate(lists):
            item = keep_candidates(item, max_candidates)
            check_ids(item, output_format)
            lines += 1
            documents += len(item.documents)
            queries.add(item.query_id if item.query_id is not None else f"text:{item.query}")
            if number < kept:
                progress.update(1)
            pending.append((number, item))
            pending_pairs += len(item.documents)
            if pending_pairs >= batch_size:
                write_pending()
                pending_pairs = 0
        if pending:
            write_pending()
        os.fsync(file.fileno())
    if lines < kept:
        raise ValueError(
            f"{output} has {kept} lines but its inputs give {lines}: it was not written from "
            f"them; remove {output} and {state_file}"
        )
    if bad_lines.total:
        skipped["bad_lines"] += bad_lines.total
    result = ScoringResult(
        str(output),
        str(state_file),
        output_format,
        lines,
        documents,
        len(queries),
        dict(sorted(skipped.items())),
        resumed_lines=kept,
        scored_lines=lines - kept,
    )
    state = _read_state(state_file)
    _write_state(state_file, {**state, "complete": True, "counts": result.counts()})
    return result


def _line_count(path: str | os.PathLike) -> int:
    with open(path, "rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
