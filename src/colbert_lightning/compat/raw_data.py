"""RAGatouille-style raw training data turned into this project's training files.

Three kinds of ``raw_data`` (RAGatouille's ``prepare_training_data``), where each passage field
may be one string or a list of strings:

- ``pairs``: ``(query, relevant passage(s))``;
- ``labelled_pairs``: ``(query, passage(s), label)`` with ``label`` equal to ``positive_label``
  or ``negative_label``;
- ``triplets``: ``(query, positive(s), negative(s))``.

Written to ``output_dir``:

- ``beir/``: ``corpus.jsonl`` (``all_documents`` and every passage, each text once),
  ``queries.jsonl``, ``qrels/train.tsv`` and ``qrels/dev.tsv`` (positives grade 1, given
  negatives grade 0), so that ``evaluate``, ``index`` and ``search`` read it as any BEIR folder;
- ``triples.jsonl``: the ``jsonl`` training format, one line per (train query, positive): the
  given negatives of the query, then ``num_new_negatives`` new ones (BM25 hard negatives from
  ranks ``min_rank..max_rank``, the same sampling as ``prepare``; or random documents);
- ``manifest.json``: parameters and counts, written last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from colbert_lightning.data.beir import write_qrels
from colbert_lightning.data.negatives import (
    bm25_windows,
    check_rank_window,
    sample_negatives,
    split_dev_queries,
)

RawKind = Literal["pairs", "labelled_pairs", "triplets"]
TRIPLES_FILE = "triples.jsonl"
MANIFEST_FILE = "manifest.json"


@dataclass
class QueryPassages:
    """The passages given for one query, each text once, in the order first given.

    Attributes:
        positives: relevant passages.
        negatives: passages given as not relevant.
    """

    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)


@dataclass
class RawDataResult:
    """What :func:`write_training_data` wrote.

    Attributes:
        output_dir: the folder.
        root: the BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``).
        triples: the training file (``jsonl`` format).
        counts: ``queries``, ``train_queries``, ``dev_queries``, ``documents``, ``triples``,
            ``given_negatives``, ``new_negatives``, ``skipped_no_negatives``,
            ``skipped_empty_positives``.
    """

    output_dir: str
    root: str
    triples: str
    counts: dict[str, int]


def raw_kind(raw_data: Sequence[Sequence[Any]], pairs_with_labels: bool = False) -> RawKind:
    """Which kind ``raw_data`` is, from its first record (as RAGatouille decides).

    Example:
        >>> raw_kind([("q", "p")]), raw_kind([("q", "p", 1)], pairs_with_labels=True)
        ('pairs', 'labelled_pairs')
    """
    if not raw_data:
        raise ValueError("raw_data is empty")
    size = len(raw_data[0])
    if size == 2 and not pairs_with_labels:
        return "pairs"
    if size == 3:
        return "labelled_pairs" if pairs_with_labels else "triplets"
    expected = "(query, passage, label)" if pairs_with_labels else "pairs or triplets"
    raise ValueError(f"raw_data records must be {expected}; the first has {size} fields")


def group_by_query(
    raw_data: Sequence[Sequence[Any]],
    kind: RawKind,
    positive_label: int | str = 1,
    negative_label: int | str = 0,
) -> dict[str, QueryPassages]:
    """Gather each query's positives and negatives from records of one ``kind``.

    Raises:
        ValueError: a record of the wrong size, a label that is neither label, or a text that
            is not a string.
    """
    grouped: dict[str, QueryPassages] = {}
    size = 2 if kind == "pairs" else 3
    for number, record in enumerate(raw_data, start=1):
        if len(record) != size:
            raise ValueError(
                f"raw_data record {number}: {kind} have {size} fields, not {len(record)}"
            )
        query = _text(record[0], number, "query")
        passages = grouped.setdefault(query, QueryPassages())
        if kind == "pairs":
            positives, negatives = record[1], []
        elif kind == "triplets":
            positives, negatives = record[1], record[2]
        elif record[2] == positive_label:
            positives, negatives = record[1], []
        elif record[2] == negative_label:
            positives, negatives = [], record[1]
        else:
            raise ValueError(
                f"raw_data record {number}: label {record[2]!r} is neither positive_label "
                f"{positive_label!r} nor negative_label {negative_label!r}"
            )
        for text in _texts(positives, number, "positive"):
            if text not in passages.positives:
                passages.positives.append(text)
        for text in _texts(negatives, number, "negative"):
            if text not in passages.negatives:
                passages.negatives.append(text)
    for query, passages in grouped.items():
        # a passage given as both is a positive
        passages.negatives = [text for text in passages.negatives if text not in passages.positives]
        if not passages.positives and not passages.negatives:
            raise ValueError(f"query {query!r} has no passage")
    return grouped


def _text(value: Any, number: int, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"raw_data record {number}: the {what} must be a string, got {value!r}")
    return value


def _texts(value: Any, number: int, what: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    return [_text(item, number, what) for item in values]


def write_training_data(
    raw_data: Sequence[Sequence[Any]],
    output_dir: str | Path,
    kind: RawKind = "pairs",
    all_documents: Sequence[str] | None = None,
    num_new_negatives: int = 10,
    mine_hard_negatives: bool = True,
    min_rank: int = 10,
    max_rank: int = 100,
    dev_queries: int | float = 0,
    seed: int = 0,
    positive_label: int | str = 1,
    negative_label: int | str = 0,
    show_progress: bool = True,
) -> RawDataResult:
    """Write a BEIR folder and BM25 hard-negative training triples from raw examples.

    Args:
        raw_data: records of ``kind`` (see the module docstring).
        output_dir: where everything goes (created).
        kind: ``pairs``, ``labelled_pairs`` or ``triplets``.
        all_documents: the whole collection, the pool new negatives come from.
        num_new_negatives: new negatives per (query, positive), besides the given ones.
        mine_hard_negatives: draw them from BM25 ranks ``min_rank..max_rank`` (1-based,
            inclusive) of the query, leaving out its given passages; else from all documents.
        min_rank: first BM25 rank a hard negative may come from.
        max_rank: last BM25 rank a hard negative may come from.
        dev_queries: queries held out (a count, or a fraction below 1) for ``qrels/dev.tsv``.
        seed: seed of the dev split and the negative sampling.
        positive_label: label of relevant passages in ``labelled_pairs``.
        negative_label: label of non-relevant passages in ``labelled_pairs``.
        show_progress: tqdm bars while mining.

    Returns:
        Paths and counts. A (query, positive) with no negative at all is skipped and counted.
    """
    if num_new_negatives < 0:
        raise ValueError(f"num_new_negatives must be >= 0, got {num_new_negatives}")
    check_rank_window(min_rank, max_rank)
    grouped = group_by_query(raw_data, kind, positive_label, negative_label)
    documents: dict[str, str] = {}  # text -> id, in first-seen order
    for text in all_documents or []:
        documents.setdefault(_text(text, 0, "document of all_documents"), f"d{len(documents)}")
    for passages in grouped.values():
        for text in (*passages.positives, *passages.negatives):
            documents.setdefault(text, f"d{len(documents)}")
    text_of = {doc_id: text for text, doc_id in documents.items()}
    query_ids = {query: f"q{number}" for number, query in enumerate(grouped)}
    judged = [query_ids[query] for query, passages in grouped.items() if passages.positives]
    texts = {query_id: query for query, query_id in query_ids.items()}
    train_ids, dev_ids = split_dev_queries(judged, dev_queries, seed, texts=texts)
    if not train_ids:
        raise ValueError(f"dev_queries={dev_queries!r} leaves no query with a positive to train on")

    output_dir = Path(output_dir)
    root = output_dir / "beir"
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)
    _write_jsonl(
        root / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for t, i in documents.items()]
    )
    _write_jsonl(root / "queries.jsonl", [{"_id": i, "text": q} for q, i in query_ids.items()])
    passages_of = {query_ids[query]: passages for query, passages in grouped.items()}
    qrels = {
        query_id: {
            **{documents[text]: 0 for text in passages.negatives},
            **{documents[text]: 1 for text in passages.positives},
        }
        for query_id, passages in passages_of.items()
    }
    write_qrels(root / "qrels" / "train.tsv", {q: qrels[q] for q in train_ids})
    write_qrels(root / "qrels" / "dev.tsv", {q: qrels[q] for q in dev_ids})

    query_text = {query_id: query for query, query_id in query_ids.items()}
    windows: dict[str, list[str]] = {}
    if mine_hard_negatives and num_new_negatives:
        windows = bm25_windows(
            list(text_of),
            list(text_of.values()),
            {q: query_text[q] for q in train_ids},
            min_rank,
            max_rank,
            show_progress=show_progress,
        )

    counts = dict.fromkeys(
        ("triples", "given_negatives", "new_negatives", "skipped_no_negatives"), 0
    )
    counts["skipped_empty_positives"] = 0
    lines = []
    for query_id in train_ids:
        passages = passages_of[query_id]
        given = [documents[text] for text in passages.negatives]
        excluded = set(qrels[query_id])
        pool = windows[query_id] if query_id in windows else list(text_of)
        pool = [doc for doc in pool if doc not in excluded and text_of[doc].strip()]
        for positive in passages.positives:
            if not positive.strip():
                counts["skipped_empty_positives"] += 1
                continue
            new = sample_negatives(pool, num_new_negatives, seed, query_id, documents[positive])
            negative_ids = given + new
            if not negative_ids:
                counts["skipped_no_negatives"] += 1
                continue
            counts["triples"] += 1
            counts["given_negatives"] += len(given)
            counts["new_negatives"] += len(new)
            lines.append(
                {
                    "query": query_text[query_id],
                    "positive": positive,
                    "negatives": [text_of[doc] for doc in negative_ids],
                    "qid": query_id,
                    "pid": documents[positive],
                    "neg_ids": negative_ids,
                }
            )
    if not lines:
        raise ValueError("no training triple: no (query, positive) has a negative to pair with")
    triples = output_dir / TRIPLES_FILE
    _write_jsonl(triples, lines)
    counts.update(
        queries=len(grouped),
        train_queries=len(train_ids),
        dev_queries=len(dev_ids),
        documents=len(documents),
    )
    manifest = {
        "kind": kind,
        "parameters": {
            "num_new_negatives": num_new_negatives,
            "mine_hard_negatives": mine_hard_negatives,
            "min_rank": min_rank,
            "max_rank": max_rank,
            "dev_queries": dev_queries,
            "seed": seed,
        },
        "counts": counts,
    }
    (output_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return RawDataResult(str(output_dir), str(root), str(triples), counts)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as output:
        for record in records:
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
