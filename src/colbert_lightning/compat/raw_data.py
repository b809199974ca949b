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
- ``triples.jsonl``: the ``jsonl`` training format, one line per (query, positive, negative)
  triple, in a seeded random order: RAGatouille's triples. Each train query's negatives are its
  given ones plus ``num_new_negatives`` new ones (BM25 hard negatives from ranks
  ``min_rank..max_rank``, or random documents); a query with one positive makes one triple per
  negative, one with several positives 20 where it has that many pairs (see
  :func:`query_triples`). So 60 pairs with ``num_new_negatives=10`` make ~600 triples, one
  training example each (``data.nway=2``);
- ``manifest.json``: parameters and counts, written last.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from colbert_lightning.data.beir import write_qrels
from colbert_lightning.data.negatives import (
    bm25_windows,
    check_rank_window,
    split_dev_queries,
)

RawKind = Literal["pairs", "labelled_pairs", "triplets"]
TRIPLES_FILE = "triples.jsonl"
MAX_TRIPLES_PER_QUERY = 20
"""RAGatouille's triples for a query with several positives (see :func:`query_triples`)."""
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
        counts: ``queries``, ``train_queries``, ``dev_queries``, ``documents``, ``triples``
            (lines of the training file), ``pairs`` (the (query, positive)s they come from),
            ``given_negatives`` and ``new_negatives`` (over the train queries),
            ``skipped_no_negatives`` (positives of queries without a negative),
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


def query_triples(
    positives: Sequence[str], negatives: Sequence[str], rng: random.Random
) -> list[tuple[str, str]]:
    """One query's ``(positive, negative)`` pairs, as many as RAGatouille makes.

    With one positive, one pair per negative. With ``k > 1`` positives, each positive gets
    ``min(len(negatives), max(1, 20 // k))`` negatives sampled by ``rng``; then other distinct
    pairs, in ``rng``'s order, are added while there are fewer than 20 and some are left.

    Example:
        >>> len(query_triples(["p"], ["n1", "n2", "n3"], random.Random(0)))
        3
        >>> ten = [f"n{i}" for i in range(10)]
        >>> [len(query_triples(["p1", "p2", "p3"][:k], ten, random.Random(0))) for k in (2, 3)]
        [20, 20]
        >>> len(query_triples(["p1", "p2"], ["n1", "n2"], random.Random(0)))
        4
    """
    if not positives or not negatives:
        return []
    if len(positives) == 1:
        return [(positives[0], negative) for negative in negatives]
    per_positive = min(len(negatives), max(1, MAX_TRIPLES_PER_QUERY // len(positives)))
    pairs = [
        (positive, negative)
        for positive in positives
        for negative in rng.sample(list(negatives), per_positive)
    ]
    if len(pairs) < MAX_TRIPLES_PER_QUERY:
        chosen = set(pairs)
        others = [(p, n) for p in positives for n in negatives if (p, n) not in chosen]
        rng.shuffle(others)
        pairs += others[: MAX_TRIPLES_PER_QUERY - len(pairs)]
    return pairs


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
    """Write a BEIR folder and RAGatouille's training triples from raw examples.

    Args:
        raw_data: records of ``kind`` (see the module docstring).
        output_dir: where everything goes (created).
        kind: ``pairs``, ``labelled_pairs`` or ``triplets``.
        all_documents: the whole collection, the pool new negatives come from.
        num_new_negatives: new negatives per query, besides its given ones.
        mine_hard_negatives: draw them from BM25 ranks ``min_rank..max_rank`` (1-based,
            inclusive) of the query, leaving out its given passages; else from all documents.
        min_rank: first BM25 rank a hard negative may come from.
        max_rank: last BM25 rank a hard negative may come from.
        dev_queries: queries held out (a count, or a fraction below 1) for ``qrels/dev.tsv``.
        seed: seed of the dev split, the negative sampling and the order of the triples.
        positive_label: label of relevant passages in ``labelled_pairs``.
        negative_label: label of non-relevant passages in ``labelled_pairs``.
        show_progress: tqdm bars while mining.

    Returns:
        Paths and counts. A positive of a query with no negative at all is skipped and counted.
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
        root / "corpus.jsonl", ({"_id": i, "title": "", "text": t} for t, i in documents.items())
    )
    _write_jsonl(root / "queries.jsonl", ({"_id": i, "text": q} for q, i in query_ids.items()))
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

    mining = mine_hard_negatives and num_new_negatives > 0
    windows: dict[str, list[str]] = {}
    if mining:
        windows = bm25_windows(
            list(text_of),
            list(text_of.values()),
            {q: texts[q] for q in train_ids},
            min_rank,
            max_rank,
            show_progress=show_progress,
        )
    # random negatives (no mining) come from the documents with a text, drawn per query
    with_text = [] if mining else [doc for doc, text in text_of.items() if text.strip()]

    counts = dict.fromkeys(("pairs", "given_negatives", "new_negatives", "skipped_no_negatives"), 0)
    counts["skipped_empty_positives"] = 0
    triples: list[tuple[str, str, str]] = []  # (query id, positive id, negative id)
    for query_id in train_ids:
        passages = passages_of[query_id]
        positives = [documents[text] for text in passages.positives if text.strip()]
        counts["skipped_empty_positives"] += len(passages.positives) - len(positives)
        given = [documents[text] for text in passages.negatives]
        excluded = qrels[query_id]
        rng = random.Random(f"{seed}\t{query_id}")
        if mining:
            pool = [
                doc for doc in windows[query_id] if doc not in excluded and text_of[doc].strip()
            ]
            new = rng.sample(pool, min(num_new_negatives, len(pool)))
        else:  # enough draws that, once the query's judged documents are left out, none is short
            draws = rng.sample(with_text, min(len(with_text), num_new_negatives + len(excluded)))
            new = [doc for doc in draws if doc not in excluded][:num_new_negatives]
        negatives = given + new
        if not negatives:
            counts["skipped_no_negatives"] += len(positives)
            continue
        counts["pairs"] += len(positives)
        counts["given_negatives"] += len(given)
        counts["new_negatives"] += len(new)
        triples += [(query_id, p, n) for p, n in query_triples(positives, negatives, rng)]
    if not triples:
        raise ValueError("no training triple: no (query, positive) has a negative to pair with")
    # RAGatouille shuffles its triples once, when it writes them; the training stream shuffles too
    random.Random(seed).shuffle(triples)
    triples_path = output_dir / TRIPLES_FILE
    _write_jsonl(
        triples_path,
        (
            {
                "query": texts[query_id],
                "positive": text_of[positive],
                "negatives": [text_of[negative]],
                "qid": query_id,
                "pid": positive,
                "neg_ids": [negative],
            }
            for query_id, positive, negative in triples
        ),
    )
    counts.update(
        triples=len(triples),
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
    return RawDataResult(str(output_dir), str(root), str(triples_path), counts)


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as output:
        for record in records:
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
