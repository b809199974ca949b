"""Read a BEIR-layout collection: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Every file may be plain or gzipped (``.gz``) and is read by ``lines.text_lines``, like every
other line-oriented file in ``data/``: invalid UTF-8, a blank line before the end or bytes that
cannot be decompressed are an error naming the file and the line; a byte-order mark may start
a file. The collections this reads are evaluation-sized (up to about 100k
documents), so everything is held in memory.

Qrels keep every grade, 0 included; a document is *relevant* to a query when its score is > 0.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.lines import json_value, record_id, text_lines

QRELS_HEADER = ("query-id", "corpus-id", "score")
_NON_WORD = re.compile(r"[\W_]+")

Qrels = dict[str, dict[str, int]]
"""Query id -> document id -> graded relevance (relevant when > 0)."""


@dataclass
class Corpus:
    """The documents of a collection, in file order.

    Attributes:
        ids: document ids.
        texts: ``title + " " + text`` when the title is non-empty, else ``text``; may be empty.
        path: the file the corpus was read from.
    """

    ids: list[str]
    texts: list[str]
    path: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def empty_count(self) -> int:
        """Number of documents whose text is empty (kept, but never a useful positive)."""
        return sum(1 for text in self.texts if not text.strip())

    def index_of(self) -> dict[str, int]:
        """Map each document id to its row."""
        return {doc_id: row for row, doc_id in enumerate(self.ids)}

    def require_text(self, is_empty: Callable[[str], bool]) -> None:
        """Refuse a corpus in which no document has any text to search.

        Args:
            is_empty: whether a text is empty, e.g. ``ColBERTTokenizer.is_empty``, which also
                counts a text of only characters the tokeniser drops (NULs, zero-width spaces,
                control characters) as empty.

        Raises:
            ValueError: every document is empty (or there is none).
        """
        if all(is_empty(text) for text in self.texts):
            raise ValueError(
                f"{self.path}: none of its {len(self)} documents has any text (each is blank or "
                "only characters the tokenizer drops, such as NULs, zero-width spaces and "
                "control characters): there is nothing to search"
            )


@dataclass
class DevSet:
    """A corpus, the judged queries and their judgments, ready for evaluation.

    Attributes:
        corpus_ids: document ids.
        corpus_texts: document texts, aligned with ``corpus_ids``.
        queries: query id -> text, only the queries that appear in ``qrels``.
        qrels: query id -> document id -> grade (all grades, 0 included).
        candidates: for rerank evaluation, query id -> candidate document ids; else None.
    """

    corpus_ids: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]
    qrels: Qrels
    candidates: dict[str, list[str]] | None = None


def normalized_text(text: str) -> str:
    """The form in which two query texts count as the same query.

    Unicode-normalised (NFKC), lower-cased, every run of non-word characters one space.

    Example:
        >>> normalized_text("  What is  ColBERT?") == normalized_text("what is colbert")
        True
    """
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def text_key(text: str) -> int:
    """A stable 62-bit key of a string, the same in every process and run (unlike ``hash``).

    Example:
        >>> text_key("a") == text_key("a") != text_key("b")
        True
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**62 - 1)


def find_beir_file(root: str | Path, stem: str) -> Path:
    """Find ``<root>/<stem>.jsonl`` or ``<root>/<stem>.jsonl.gz``.

    Args:
        root: the collection's folder.
        stem: ``corpus`` or ``queries``.

    Returns:
        The path of the one that exists (the plain file when both do).

    Raises:
        FileNotFoundError: neither exists.
        IsADirectoryError: the first that exists is a folder.
    """
    root = Path(root)
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        candidate = root / name
        if candidate.is_file():
            return candidate
        if candidate.exists():
            raise IsADirectoryError(f"{candidate} is a folder, not a {stem} file")
    raise FileNotFoundError(f"{root} has neither {stem}.jsonl nor {stem}.jsonl.gz")


def join_title(title: str, text: str) -> str:
    """A document's text with its title: ``title + " " + text``, or ``text`` if the title is blank.

    >>> join_title("Wings", "lift and drag"), join_title(" ", "shock waves")
    ('Wings lift and drag', 'shock waves')
    """
    return f"{title} {text}" if title.strip() else text


class BeirRecord(NamedTuple):
    """One line of a BEIR ``corpus.jsonl`` or ``queries.jsonl``.

    Attributes:
        id: the record's id (a JSON integer id ``7`` is ``"7"``).
        title: the title; ``""`` when absent or null.
        text: the text; may be empty.
    """

    id: str
    title: str
    text: str

    @property
    def titled_text(self) -> str:
        """The title joined in front of the text (see ``join_title``)."""
        return join_title(self.title, self.text)


def parse_beir_record(line: str) -> BeirRecord:
    """Parse and check one BEIR record ``{"_id", "title", "text"}`` (other fields are ignored).

    The one rule for BEIR lines, used by ``load_corpus``, ``load_queries`` and ``TextStore``:
    ``_id`` is a non-empty string or an integer; ``text`` is a string; ``title`` is a string,
    null or absent.

    >>> parse_beir_record('{"_id": 7, "title": null, "text": "lift"}')
    BeirRecord(id='7', title='', text='lift')

    Args:
        line: the decoded line (see ``lines.decode_line``).

    Raises:
        ValueError: the problem, naming the field; callers add the file and the line.
    """
    record = json_value(line)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for name in ("_id", "text"):
        if name not in record:
            raise ValueError(f"missing field {name!r}")
    text, title = record["text"], record.get("title")
    if not isinstance(text, str):
        raise ValueError(f"field 'text' must be a string, got {type(text).__name__}")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"field 'title' must be a string, got {type(title).__name__}")
    return BeirRecord(record_id(record["_id"], "field '_id'"), title or "", text)


def _read_records(path: Path) -> Iterator[tuple[int, BeirRecord]]:
    """Yield ``(line_number, record)`` for every line of a BEIR JSON-lines file, 1-based."""
    for line_number, line in text_lines(path):
        try:
            record = parse_beir_record(line)
        except ValueError as error:
            raise DataFormatError(str(path), line_number, str(error)) from None
        yield line_number, record


def _check_first(
    key: Hashable, first_seen: dict, path: Path, line_number: int, repeated: str
) -> None:
    """Record where ``key`` first appears; a second appearance is an error saying ``repeated``."""
    if key in first_seen:
        raise DataFormatError(
            str(path), line_number, f"{repeated} (first at line {first_seen[key]})"
        )
    first_seen[key] = line_number


def load_corpus(path: str | Path) -> Corpus:
    """Read a BEIR ``corpus.jsonl[.gz]`` (records ``{"_id", "title", "text"}``).

    Records are checked by ``parse_beir_record``; a missing or null ``title`` counts as empty;
    documents with empty text are kept (see ``Corpus.empty_count``).

    Raises:
        DataFormatError: a malformed line or record (see ``lines.text_lines`` and
            ``parse_beir_record``), or a duplicate id.
    """
    path = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    first_seen: dict[str, int] = {}
    for line_number, record in _read_records(path):
        _check_first(record.id, first_seen, path, line_number, f"duplicate id {record.id!r}")
        ids.append(record.id)
        texts.append(record.titled_text)
    return Corpus(ids=ids, texts=texts, path=str(path))


def load_queries(path: str | Path) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl[.gz]`` (records ``{"_id", "text"}``) into id -> text.

    Records are checked by ``parse_beir_record``; a query's title, if it has one, is not used.

    Raises:
        DataFormatError: a malformed line or record (see ``lines.text_lines`` and
            ``parse_beir_record``), or a duplicate id.
    """
    path = Path(path)
    queries: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_number, record in _read_records(path):
        _check_first(record.id, first_seen, path, line_number, f"duplicate id {record.id!r}")
        queries[record.id] = record.text
    return queries


def _read_qrels_lines(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """Yield ``(line_number, query_id, doc_id, score)``, checking the header and columns."""
    for line_number, line in text_lines(path):
        columns = line.split("\t")
        if line_number == 1:
            if tuple(column.strip() for column in columns) != QRELS_HEADER:
                raise DataFormatError(
                    str(path),
                    line_number,
                    f"expected the header {'<TAB>'.join(QRELS_HEADER)!r}, got {line!r}",
                )
            continue
        if len(columns) != 3:
            raise DataFormatError(
                str(path), line_number, f"expected 3 tab-separated columns, got {len(columns)}"
            )
        query_id, doc_id, score_text = (column.strip() for column in columns)
        try:
            score = int(score_text)
        except ValueError:
            raise DataFormatError(
                str(path), line_number, f"score must be an integer, got {score_text!r}"
            ) from None
        yield line_number, query_id, doc_id, score


def load_qrels(
    path: str | Path,
    query_ids: set[str] | None = None,
    doc_ids: set[str] | None = None,
) -> Qrels:
    """Read a BEIR qrels TSV (header ``query-id corpus-id score``) with every grade, 0 included.

    Args:
        path: the ``qrels/<split>.tsv`` file.
        query_ids: when given, a query id outside this set is an error.
        doc_ids: when given, a document id outside this set is an error.

    Returns:
        Query id -> document id -> grade.

    Raises:
        DataFormatError: a malformed line (see ``lines.text_lines``), a wrong header, a wrong
            column count, a non-integer score, an unknown query or document id, or the same pair
            judged twice.
    """
    path = Path(path)
    qrels: Qrels = {}
    first_seen: dict[tuple[str, str], int] = {}
    for line_number, query_id, doc_id, score in _read_qrels_lines(path):
        if query_ids is not None and query_id not in query_ids:
            raise DataFormatError(str(path), line_number, f"unknown query id {query_id!r}")
        if doc_ids is not None and doc_id not in doc_ids:
            raise DataFormatError(str(path), line_number, f"unknown corpus id {doc_id!r}")
        repeated = f"pair ({query_id!r}, {doc_id!r}) judged twice"
        _check_first((query_id, doc_id), first_seen, path, line_number, repeated)
        qrels.setdefault(query_id, {})[doc_id] = score
    return qrels


def qrels_path(root: str | Path, split: str) -> Path:
    """``<root>/qrels/<split>.tsv``, checked to be a file.

    Raises:
        FileNotFoundError: no such split; the message lists the splits there are.
        IsADirectoryError: the split's path is a folder.
    """
    path = Path(root) / "qrels" / f"{split}.tsv"
    if path.is_dir():
        raise IsADirectoryError(f"the qrels of split {split!r}, {path}, is a folder, not a file")
    if not path.is_file():
        folder = Path(root) / "qrels"
        splits = (
            sorted(p.stem for p in folder.glob("*.tsv") if p.is_file()) if folder.is_dir() else []
        )
        raise FileNotFoundError(f"no qrels for split {split!r} at {path}; splits found: {splits}")
    return path


def write_qrels(path: str | Path, qrels: Qrels) -> None:
    """Write qrels in BEIR's TSV format (with header), queries and documents in given order."""
    with open(path, "w", encoding="utf-8") as output:
        output.write("\t".join(QRELS_HEADER) + "\n")
        for query_id, judged in qrels.items():
            for doc_id, score in judged.items():
                output.write(f"{query_id}\t{doc_id}\t{score}\n")


def load_candidates(path: str | Path, doc_ids: set[str] | None = None) -> dict[str, list[str]]:
    """Read rerank candidates: a TREC run or a ``qid<TAB>pid`` TSV.

    A TREC run line is ``qid Q0 docid rank score tag`` (whitespace-separated); candidates are
    ordered by rank. A two-column TSV keeps file order.

    Args:
        path: the candidates file.
        doc_ids: when given, a document id outside this set is an error.

    Returns:
        Query id -> candidate document ids.

    Raises:
        DataFormatError: a malformed line (see ``lines.text_lines``), a line that is neither
            format, a non-integer rank, or an unknown id.
    """
    path = Path(path)
    ranked: dict[str, list[tuple[int, str]]] = {}
    for line_number, line in text_lines(path):
        columns = line.split()
        if len(columns) == 6:
            query_id, _, doc_id, rank_text = columns[:4]
            try:
                rank = int(rank_text)
            except ValueError:
                raise DataFormatError(
                    str(path), line_number, f"rank must be an integer, got {rank_text!r}"
                ) from None
        elif len(columns) == 2:
            query_id, doc_id = columns
            rank = len(ranked.get(query_id, ()))
        else:
            raise DataFormatError(
                str(path),
                line_number,
                f"expected a TREC run line (6 columns) or qid<TAB>pid, got {len(columns)}",
            )
        if doc_ids is not None and doc_id not in doc_ids:
            raise DataFormatError(str(path), line_number, f"unknown corpus id {doc_id!r}")
        ranked.setdefault(query_id, []).append((rank, doc_id))
    return {
        query_id: [doc_id for _, doc_id in sorted(pairs, key=lambda pair: pair[0])]
        for query_id, pairs in ranked.items()
    }


def load_dev_set(
    corpus: str | Path,
    queries: str | Path,
    qrels: str | Path,
    candidates: str | Path | None = None,
    *,
    is_empty: Callable[[str], bool] | None = None,
) -> DevSet:
    """Load a corpus, its queries and one qrels file, keeping only the judged queries.

    Args:
        corpus: path of ``corpus.jsonl[.gz]``.
        queries: path of ``queries.jsonl[.gz]``.
        qrels: path of a qrels TSV; every id it names must exist in the corpus and queries.
        candidates: optional rerank candidates (see ``load_candidates``), kept for judged
            queries only.
        is_empty: when given, a corpus in which every text is empty is refused
            (``Corpus.require_text``); the model's ``ColBERTTokenizer.is_empty``.

    Raises:
        DataFormatError: any malformed line, or qrels or candidates naming an unknown id.
        ValueError: every document is empty (with ``is_empty``).
    """
    loaded_corpus = load_corpus(corpus)
    if is_empty is not None:
        loaded_corpus.require_text(is_empty)
    all_queries = load_queries(queries)
    doc_ids = set(loaded_corpus.ids)
    judgments = load_qrels(qrels, query_ids=set(all_queries), doc_ids=doc_ids)
    loaded_candidates = None
    if candidates is not None:
        loaded_candidates = {
            query_id: ranked
            for query_id, ranked in load_candidates(candidates, doc_ids).items()
            if query_id in judgments
        }
    return DevSet(
        corpus_ids=loaded_corpus.ids,
        corpus_texts=loaded_corpus.texts,
        queries={query_id: all_queries[query_id] for query_id in judgments},
        qrels=judgments,
        candidates=loaded_candidates,
    )
