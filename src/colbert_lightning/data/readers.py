"""Readers that turn one line of a training file into a ``TrainingExample``.

Each reader parses a single line's bytes, so the streaming dataset can shard a file by line and
never hold it whole. Formats, by their ``data.train.format`` name:

- ``jsonl``: ``{"query": str, "positive": str, "negatives": [str, ...]}``, optionally with the
  ids ``"qid"``, ``"pid"`` and ``"neg_ids"`` (as ``prepare`` writes them)
- ``colbert_ids``: colbert-ai's ``[qid, pid_pos, pid_neg, ...]``, or its distillation lines
  ``[qid, [pid, score], [pid, score], ...]``: teacher scores, every passage with one (the first
  passage is the positive, the one cross-entropy targets, as colbert-ai's ``labels=0``)
- ``scored_jsonl``: ``{"query": str, "documents": [str, ...], "scores": [number, ...]}``, teacher
  scores of texts, the first document the positive; optionally ``"qid"`` and ``"doc_ids"``
- ``msmarco_ids``: ``qid<TAB>pid_pos<TAB>pid_neg``
- ``msmarco_text``: ``query<TAB>positive<TAB>negative``
- ``crops``: a corpus, one document a line (a BEIR ``corpus.jsonl[.gz]`` or plain text), each
  document cropped into a new example every pass (``CropReader`` of ``data/crops.py``)

The id formats look texts up in a queries and a collection ``TextStore``; ids are compared as
strings (a JSON integer id ``7`` is ``"7"``). Teacher scores (``TrainingExample.scores``) are
finite numbers within float32's range, one per document.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from colbert_lightning.data.crops import CROPS_FORMAT, CropReader, CropSpec
from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.lines import (
    decode_line,
    json_value,
    numbered_lines,
    open_binary,
    record_id,
)
from colbert_lightning.data.text_store import TextStore, UnknownIdError
from colbert_lightning.data.types import TrainingExample

TrainFormat = Literal[
    "jsonl", "scored_jsonl", "colbert_ids", "msmarco_ids", "msmarco_text", "crops"
]
SCORED_JSONL_FORMAT = "scored_jsonl"
TRAIN_FORMATS: tuple[str, ...] = (
    "jsonl",
    SCORED_JSONL_FORMAT,
    "colbert_ids",
    "msmarco_ids",
    "msmarco_text",
    CROPS_FORMAT,
)
T = TypeVar("T")

_ID_FORMATS = ("colbert_ids", "msmarco_ids")
_ONE_NEGATIVE_FORMATS = ("msmarco_ids", "msmarco_text")


EmptyTest = Callable[[str], bool]
"""Whether a text gives no token (``ColBERTTokenizer.is_empty``)."""


class TripleReader(Protocol):
    """Parses one line of a training file.

    Attributes:
        path: the file the lines come from, named in every error.
        min_negatives: fewest negatives a line may have.
    """

    path: str
    min_negatives: int

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The example on ``line`` (raw bytes, line ending included), 1-based ``line_number``.

        Raises:
            DataFormatError: the line is malformed, names an unknown id, has an empty text or
                too few negatives.
        """
        ...


def iter_examples(
    reader: TripleReader, bad_lines: BadLines | None = None
) -> Iterator[tuple[int, TrainingExample]]:
    """Yield ``(line_number, example)`` for every line of the reader's file, in file order.

    Args:
        reader: parses each line.
        bad_lines: what to do with a bad line; ``None`` raises on the first.

    Raises:
        DataFormatError: a bad line, under the ``error`` policy.
    """
    bad_lines = BadLines() if bad_lines is None else bad_lines
    with open_binary(reader.path) as file:
        for line_number, _, line in numbered_lines(file):
            try:
                example = reader.parse(line, line_number)
            except DataFormatError as error:
                bad_lines.handle(error)
                continue
            yield line_number, example


def _text_of(path: str, line: bytes, line_number: int) -> str:
    try:
        return decode_line(line, first=line_number == 1)
    except ValueError as error:
        raise DataFormatError(path, line_number, str(error)) from None


def _json_of(path: str, line: bytes, line_number: int) -> object:
    text = _text_of(path, line, line_number)
    try:
        return json_value(text)
    except ValueError as error:
        raise DataFormatError(path, line_number, str(error)) from None


def _columns_of(path: str, line: bytes, line_number: int, names: tuple[str, ...]) -> list[str]:
    columns = _text_of(path, line, line_number).split("\t")
    if len(columns) != len(names):
        raise DataFormatError(
            path,
            line_number,
            f"expected {len(names)} tab-separated columns ({', '.join(names)}), "
            f"found {len(columns)}",
        )
    return columns


def _in_line(
    path: str, line_number: int, read: Callable[[object, str], T], value: object, what: str
) -> T:
    """``read(value, what)``, its ValueError raised as the line's DataFormatError."""
    try:
        return read(value, what)
    except ValueError as error:
        raise DataFormatError(path, line_number, str(error)) from None


def _id_of(path: str, line_number: int, value: object, what: str) -> str:
    return _in_line(path, line_number, record_id, value, what)


FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: teacher scores travel as float32 tensors."""


def teacher_score(value: object, what: str) -> float:
    """A teacher score read from JSON: a finite number (not a boolean) within float32's range.

    >>> teacher_score(3, "the score"), teacher_score(-0.5, "the score")
    (3.0, -0.5)
    >>> teacher_score("0.5", "the score of element 2")
    Traceback (most recent call last):
    ...
    ValueError: the score of element 2 must be a number, got '0.5'

    Raises:
        ValueError: ``<what> must be a number, got ...``, or ``... must be finite`` (NaN and
            infinities, which Python's JSON reader accepts, and numbers beyond float32).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    score = float(value)
    if not math.isfinite(score) or abs(score) > FLOAT32_MAX:
        raise ValueError(f"{what} must be finite (within float32's range), got {value!r}")
    return score


def _id_list(
    path: str, line_number: int, value: object, field: str, count: int, each: str
) -> list[str]:
    """Field ``field``'s ids: a list of ``count``, one per ``each`` (a negative, a document)."""
    if not isinstance(value, list) or len(value) != count:
        problem = f"field {field!r} must be a list of {count} ids, one per {each}"
        raise DataFormatError(path, line_number, problem)
    return [
        _id_of(path, line_number, element, f"{field} element {position + 1}")
        for position, element in enumerate(value)
    ]


def _score_of(path: str, line_number: int, value: object, what: str) -> float:
    return _in_line(path, line_number, teacher_score, value, what)


def require_negatives(path: str, line_number: int, negatives: int, needed: int) -> None:
    """Check that a line has at least ``needed`` negatives.

    Raises:
        DataFormatError: ``needs at least <needed> negatives, has <negatives>``.
    """
    if negatives < needed:
        problem = f"needs at least {needed} negatives, has {negatives}"
        raise DataFormatError(path, line_number, problem)


def _lookup(path: str, line_number: int, store: TextStore, record_id: str, what: str) -> str:
    try:
        return store[record_id]
    except UnknownIdError:
        raise DataFormatError(
            path, line_number, f"unknown {what} id {record_id!r} (not in {store.path})"
        ) from None


def _example(
    path: str,
    line_number: int,
    texts: tuple[str, str, list[str]],
    labels: tuple[str, str, list[str]],
    min_negatives: int,
    ids: tuple[str, str, list[str]] | None = None,
    is_empty: EmptyTest | None = None,
    scores: list[float] | None = None,
) -> TrainingExample:
    """Check the texts and build the example; ``labels`` name each text in error messages.

    ``ids``, when the line names them: the query's, the positive's and the negatives' ids.
    ``is_empty``: the tokenizer's test of a text that gives no token (NULs, zero-width spaces);
    such a text is refused like a blank one. ``scores``: the teacher scores of the positive and
    the negatives, in that order, when the line has them.
    """
    query, positive, negatives = texts
    query_label, positive_label, negative_labels = labels
    require_negatives(path, line_number, len(negatives), min_negatives)
    for text, label in zip(
        (query, positive, *negatives), (query_label, positive_label, *negative_labels), strict=True
    ):
        if not text.strip() or (is_empty is not None and is_empty(text)):
            raise DataFormatError(path, line_number, f"empty text for the {label}")
    query_id, positive_id, negative_ids = ids if ids is not None else (None, None, None)
    return TrainingExample(
        query,
        positive,
        tuple(negatives),
        source=f"{path}:{line_number}",
        query_id=query_id,
        positive_id=positive_id,
        negative_ids=None if negative_ids is None else tuple(negative_ids),
        scores=None if scores is None else tuple(scores),
    )


@dataclass
class JsonlTextReader:
    """``{"query": str, "positive": str, "negatives": [str, ...]}`` per line.

    Attributes:
        path: the training file.
        min_negatives: fewest negatives a line may have.
        is_empty: the tokenizer's test of a text that gives no token, or None.
    """

    path: str
    min_negatives: int = 1
    is_empty: EmptyTest | None = None

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The example on one line; see ``TripleReader.parse``."""
        record = _json_of(self.path, line, line_number)
        if not isinstance(record, dict):
            problem = f"expected a JSON object, got {type(record).__name__}"
            raise DataFormatError(self.path, line_number, problem)
        for name in ("query", "positive", "negatives"):
            if name not in record:
                raise DataFormatError(self.path, line_number, f"missing field {name!r}")
        query, positive, negatives = record["query"], record["positive"], record["negatives"]
        for name, value in (("query", query), ("positive", positive)):
            if not isinstance(value, str):
                problem = f"field {name!r} must be a string, got {type(value).__name__}"
                raise DataFormatError(self.path, line_number, problem)
        if not isinstance(negatives, list) or not all(isinstance(text, str) for text in negatives):
            problem = "field 'negatives' must be a list of strings"
            raise DataFormatError(self.path, line_number, problem)
        labels = ("query", "positive", [f"negative #{i + 1}" for i in range(len(negatives))])
        ids = self._ids(record, len(negatives), line_number)
        return _example(
            self.path,
            line_number,
            (query, positive, negatives),
            labels,
            self.min_negatives,
            ids,
            self.is_empty,
        )

    def _ids(
        self, record: dict, negatives: int, line_number: int
    ) -> tuple[str, str, list[str]] | None:
        """``qid``, ``pid`` and ``neg_ids`` when the line has them (all three, or none)."""
        present = [name for name in ("qid", "pid", "neg_ids") if name in record]
        if not present:
            return None
        if len(present) != 3:
            problem = f"has {', '.join(present)} but not all of 'qid', 'pid' and 'neg_ids'"
            raise DataFormatError(self.path, line_number, problem)
        query_id = _id_of(self.path, line_number, record["qid"], "field 'qid'")
        positive_id = _id_of(self.path, line_number, record["pid"], "field 'pid'")
        negative_ids = _id_list(
            self.path, line_number, record["neg_ids"], "neg_ids", negatives, "negative"
        )
        return query_id, positive_id, negative_ids


@dataclass
class ScoredJsonlReader:
    """Teacher-scored texts, ``{"query": str, "documents": [str, ...], "scores": [number, ...]}``.

    The first document is the positive (the one cross-entropy targets), the others its
    negatives; ``scores`` are a teacher's, one per document in the same order. Optional ids:
    ``"qid"`` and ``"doc_ids"`` (one per document), both or neither, fill the example's
    ``query_id``, ``positive_id`` and ``negative_ids`` as the ``jsonl`` format's do.

    Attributes:
        path: the training file.
        min_negatives: fewest negatives (documents after the first) a line may have.
        is_empty: the tokenizer's test of a text that gives no token, or None.
    """

    path: str
    min_negatives: int = 1
    is_empty: EmptyTest | None = None

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The example on one line; see ``TripleReader.parse``."""
        path = self.path
        record = _json_of(path, line, line_number)
        if not isinstance(record, dict):
            problem = f"expected a JSON object, got {type(record).__name__}"
            raise DataFormatError(path, line_number, problem)
        for name in ("query", "documents", "scores"):
            if name not in record:
                raise DataFormatError(path, line_number, f"missing field {name!r}")
        query, documents, scores = record["query"], record["documents"], record["scores"]
        if not isinstance(query, str):
            problem = f"field 'query' must be a string, got {type(query).__name__}"
            raise DataFormatError(path, line_number, problem)
        if not isinstance(documents, list) or not all(isinstance(text, str) for text in documents):
            problem = "field 'documents' must be a list of strings (the positive first)"
            raise DataFormatError(path, line_number, problem)
        if len(documents) < 2:
            problem = (
                f"field 'documents' needs the positive and at least one negative, has "
                f"{len(documents)} document{'s' if len(documents) != 1 else ''}"
            )
            raise DataFormatError(path, line_number, problem)
        if not isinstance(scores, list) or len(scores) != len(documents):
            problem = f"field 'scores' must be a list of {len(documents)} numbers, one per document"
            raise DataFormatError(path, line_number, problem)
        scores = [
            _score_of(path, line_number, value, f"scores element {position + 1}")
            for position, value in enumerate(scores)
        ]
        positive, *negatives = documents
        labels = (
            "query",
            "positive (document 1)",
            [f"document {position + 2}" for position in range(len(negatives))],
        )
        ids = self._ids(record, len(documents), line_number)
        return _example(
            path,
            line_number,
            (query, positive, negatives),
            labels,
            self.min_negatives,
            ids,
            self.is_empty,
            scores,
        )

    def _ids(
        self, record: dict, documents: int, line_number: int
    ) -> tuple[str, str, list[str]] | None:
        """``qid`` and ``doc_ids`` when the line has them (both, or neither)."""
        present = [name for name in ("qid", "doc_ids") if name in record]
        if not present:
            return None
        if len(present) != 2:
            missing = "doc_ids" if present == ["qid"] else "qid"
            problem = f"has {present[0]!r} but not {missing!r} (give both, or neither)"
            raise DataFormatError(self.path, line_number, problem)
        query_id = _id_of(self.path, line_number, record["qid"], "field 'qid'")
        doc_ids = _id_list(
            self.path, line_number, record["doc_ids"], "doc_ids", documents, "document"
        )
        return query_id, doc_ids[0], doc_ids[1:]


@dataclass
class ColbertIdsReader:
    """colbert-ai's JSONL of ids, ``[qid, pid_pos, pid_neg, ...]``, or with teacher scores.

    colbert-ai's distillation lines pair every passage with a teacher score,
    ``[qid, [pid, score], [pid, score], ...]``; the scores are kept (``TrainingExample.scores``).
    The first passage is the positive either way: colbert-ai's cross-entropy targets it
    (``labels=0``), whatever its score. A line pairs every passage with a score, or none.

    Attributes:
        path: the training file.
        queries: the queries file, by query id.
        collection: the collection file, by passage id.
        min_negatives: fewest negatives a line may have.
        is_empty: the tokenizer's test of a text that gives no token, or None.
    """

    path: str
    queries: TextStore
    collection: TextStore
    min_negatives: int = 1
    is_empty: EmptyTest | None = None

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The example on one line; see ``TripleReader.parse``."""
        record = _json_of(self.path, line, line_number)
        if not isinstance(record, list) or len(record) < 2:
            problem = "expected a JSON list [qid, positive_pid, negative_pid, ...]"
            raise DataFormatError(self.path, line_number, problem)
        query_id = _id_of(self.path, line_number, record[0], "the query id")
        passage_ids, scores, paired, bare = [], [], [], []
        for position, element in enumerate(record[1:], start=1):
            # colbert-ai's distillation files pair each passage with a teacher score.
            if isinstance(element, list):
                if len(element) != 2:
                    problem = (
                        f"element {position} must be a passage id or a [pid, score] pair, "
                        f"got a list of {len(element)}"
                    )
                    raise DataFormatError(self.path, line_number, problem)
                element, score = element
                what = f"the score of element {position}"
                scores.append(_score_of(self.path, line_number, score, what))
                paired.append(position)
            else:
                bare.append(position)
            passage_ids.append(_id_of(self.path, line_number, element, f"element {position}"))
        if paired and bare:
            problem = (
                f"element {paired[0]} is a [pid, score] pair but element {bare[0]} is a bare "
                "passage id: give every passage a teacher score, or none"
            )
            raise DataFormatError(self.path, line_number, problem)
        return _examples_from_ids(
            self,
            line_number,
            query_id,
            passage_ids[0],
            passage_ids[1:],
            scores if paired else None,
        )


@dataclass
class MsmarcoIdsReader:
    """MS MARCO's ``qid<TAB>pid_pos<TAB>pid_neg`` per line.

    Attributes:
        path: the training file.
        queries: the queries file, by query id.
        collection: the collection file, by passage id.
        min_negatives: fewest negatives a line may have (at most 1 for this format).
        is_empty: the tokenizer's test of a text that gives no token, or None.
    """

    path: str
    queries: TextStore
    collection: TextStore
    min_negatives: int = 1
    is_empty: EmptyTest | None = None

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The example on one line; see ``TripleReader.parse``."""
        names = ("qid", "positive pid", "negative pid")
        query_id, positive_id, negative_id = _columns_of(self.path, line, line_number, names)
        for value, name in zip((query_id, positive_id, negative_id), names, strict=True):
            if not value:
                raise DataFormatError(self.path, line_number, f"empty {name}")
        return _examples_from_ids(self, line_number, query_id, positive_id, [negative_id])


def _examples_from_ids(
    reader: ColbertIdsReader | MsmarcoIdsReader,
    line_number: int,
    query_id: str,
    positive_id: str,
    negative_ids: list[str],
    scores: list[float] | None = None,
) -> TrainingExample:
    path = reader.path
    # Checked before the look-ups too, so a short line is reported as short, not by a missing id.
    require_negatives(path, line_number, len(negative_ids), reader.min_negatives)
    query = _lookup(path, line_number, reader.queries, query_id, "query")
    positive = _lookup(path, line_number, reader.collection, positive_id, "passage")
    negatives = [
        _lookup(path, line_number, reader.collection, passage_id, "passage")
        for passage_id in negative_ids
    ]
    labels = (
        f"query {query_id!r}",
        f"positive passage {positive_id!r}",
        [f"negative passage {passage_id!r}" for passage_id in negative_ids],
    )
    ids = (query_id, positive_id, negative_ids)
    return _example(
        path,
        line_number,
        (query, positive, negatives),
        labels,
        reader.min_negatives,
        ids,
        reader.is_empty,
        scores,
    )


@dataclass
class MsmarcoTextReader:
    """MS MARCO's ``query<TAB>positive<TAB>negative`` per line, as texts.

    Attributes:
        path: the training file.
        min_negatives: fewest negatives a line may have (at most 1 for this format).
        is_empty: the tokenizer's test of a text that gives no token, or None.
    """

    path: str
    min_negatives: int = 1
    is_empty: EmptyTest | None = None

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The example on one line; see ``TripleReader.parse``."""
        names = ("query", "positive", "negative")
        query, positive, negative = _columns_of(self.path, line, line_number, names)
        return _example(
            self.path,
            line_number,
            (query, positive, [negative]),
            ("query", "positive", ["negative"]),
            self.min_negatives,
            None,
            self.is_empty,
        )


def make_reader(
    fmt: str,
    path: str | os.PathLike,
    queries: TextStore | None = None,
    collection: TextStore | None = None,
    min_negatives: int = 1,
    is_empty: EmptyTest | None = None,
    crops: CropSpec | None = None,
) -> TripleReader:
    """The reader for a training file in format ``fmt`` (one of ``TRAIN_FORMATS``).

    Args:
        fmt: ``jsonl``, ``scored_jsonl``, ``colbert_ids``, ``msmarco_ids``, ``msmarco_text`` or
            ``crops``.
        path: the training file (may be ``.gz``).
        queries: query id -> text; needed by the id formats, refused by the text formats.
        collection: passage id -> text; needed by the id formats, refused by the text formats.
        min_negatives: fewest negatives a line may have (``nway - 1``).
        is_empty: the tokenizer's test of a text that gives no token
            (``ColBERTTokenizer.is_empty``); such texts are refused like blank ones. None: only
            blank texts are.
        crops: the cropping of format ``crops`` (None: ``CropSpec()``); refused by the others.

    Raises:
        ValueError: an unknown format, stores missing (id formats) or given (text formats), more
            negatives asked of a format that has one per line, a cropping given to a format
            that does not crop, or (``crops``) a corpus of too few documents.
        FileNotFoundError: ``path`` does not exist.
    """
    if fmt not in TRAIN_FORMATS:
        raise ValueError(f"unknown training data format {fmt!r}; expected one of {TRAIN_FORMATS}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such training file: {path}")
    # A bound on the lines a reader accepts, not on nway: 0 (read every line) is a valid reader,
    # though ColBERTDataModule, which checks nway once (``check_nway``), always asks for >= 1.
    if min_negatives < 0:
        raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
    if fmt in _ONE_NEGATIVE_FORMATS and min_negatives > 1:
        raise ValueError(
            f"format {fmt!r} has one negative per line, but {min_negatives} are needed "
            f"(nway={min_negatives + 1}); use nway=2 or a format with more negatives"
        )
    has_stores = queries is not None or collection is not None
    if fmt in _ID_FORMATS and (queries is None or collection is None):
        raise ValueError(
            f"format {fmt!r} holds ids; it needs both a queries and a collection file to look "
            "the texts up"
        )
    if fmt not in _ID_FORMATS and has_stores:
        raise ValueError(f"format {fmt!r} holds texts; it takes no queries or collection file")
    if fmt != CROPS_FORMAT and crops is not None:
        raise ValueError(f"format {fmt!r} is not cropped; data.crops is for format 'crops'")
    path = str(path)
    if fmt == CROPS_FORMAT:
        return CropReader(path, crops or CropSpec(), min_negatives, is_empty)
    if fmt == "jsonl":
        return JsonlTextReader(path, min_negatives, is_empty)
    if fmt == SCORED_JSONL_FORMAT:
        return ScoredJsonlReader(path, min_negatives, is_empty)
    if fmt == "msmarco_text":
        return MsmarcoTextReader(path, min_negatives, is_empty)
    if fmt == "colbert_ids":
        return ColbertIdsReader(path, queries, collection, min_negatives, is_empty)
    return MsmarcoIdsReader(path, queries, collection, min_negatives, is_empty)
