"""Build training triples with BM25 hard negatives, and a held-out dev split, from a BEIR folder.

Outputs in ``output_dir``:

- ``triples.jsonl``: one line per (train query, relevant document with text):
  ``{"query", "positive", "negatives": [...], "qid", "pid", "neg_ids": [...]}``.
- ``train_qrels.tsv`` / ``dev_qrels.tsv``: BEIR qrels (all grades) of the train / dev queries.
- ``manifest.json``: parameters, counts and the content fingerprints of the inputs (corpus,
  queries, the split's qrels: path, size, modification time, SHA-256); written last. Its presence
  with the same parameters, the same format version and inputs of the same content means the
  folder is complete and current, and ``prepare_triples`` returns at once; an input edited in
  place (even to the same size) makes it build again (see ``data/fingerprints.py``).

Every file is written to a temporary name beside it and renamed, so a killed run leaves no half
file under a final name; the temporaries a killed run left are removed by the next one.
Queries whose qrels have no relevant document go to neither split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from colbert_lightning.data.beir import (
    Qrels,
    find_beir_file,
    load_corpus,
    load_qrels,
    load_queries,
    normalized_text,
    qrels_path,
    write_qrels,
)
from colbert_lightning.data.fingerprints import fingerprint, same_content, stat_unchanged
from colbert_lightning.modeling.checkpoints import (
    remove_stale_temporaries,
    temporary_path,
    write_atomically,
)
from colbert_lightning.retrieval.bm25 import STOPWORDS, BM25Retriever

log = logging.getLogger(__name__)

# 2: queries with the same normalised text share a side; 3: keyed on the inputs' content
MANIFEST_VERSION = 3
TRIPLES_FILE = "triples.jsonl"
TRAIN_QRELS_FILE = "train_qrels.tsv"
DEV_QRELS_FILE = "dev_qrels.tsv"
MANIFEST_FILE = "manifest.json"


@dataclass
class PrepareResult:
    """Where ``prepare_triples`` wrote its files, and what they hold.

    Attributes:
        output_dir: the folder holding the files below.
        triples: path of ``triples.jsonl``.
        train_qrels: path of ``train_qrels.tsv``.
        dev_qrels: path of ``dev_qrels.tsv``.
        manifest: path of ``manifest.json``.
        counts: ``train_queries``, ``dev_queries``, ``unjudged_queries`` (no relevant document),
            ``triples``, ``skipped_empty_positives``, ``skipped_no_negatives``, ``empty_documents``.
        cached: True when an existing complete output was reused.
        inputs: ``corpus``, ``queries``, ``qrels``: the fingerprints of the files the output
            was built from (see :mod:`colbert_lightning.data.fingerprints`).
    """

    output_dir: str
    triples: str
    train_qrels: str
    dev_qrels: str
    manifest: str
    counts: dict[str, int]
    cached: bool
    inputs: dict[str, dict[str, Any]]


def split_dev_queries(
    query_ids: list[str],
    dev_queries: int | float,
    seed: int,
    texts: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Hold out dev queries by a seeded hash of their ids (independent of file order).

    Queries whose texts are the same after :func:`normalized_text` go to the same side: a dev
    query word for word a training query would measure memory, not retrieval. Groups are
    ordered by the hash of their first id (so a query without a twin is held out exactly as
    before grouping) and taken whole, so the dev side can exceed ``dev_queries`` by less than
    the size of its last group.

    Args:
        query_ids: the candidate queries.
        dev_queries: a count, or a fraction of ``query_ids`` when a float below 1.
        seed: changes which queries are held out.
        texts: query id -> text, to group identical queries; None: every query stands alone.

    Returns:
        ``(train_ids, dev_ids)``, each in the order of ``query_ids``.

    Example:
        >>> train, dev = split_dev_queries(["a", "b", "c", "d"], 0.5, seed=0)
        >>> len(dev), sorted(train + dev)
        (2, ['a', 'b', 'c', 'd'])
        >>> texts = {"a": "Same text", "b": "same  text!", "c": "other", "d": "more"}
        >>> train, dev = split_dev_queries(["a", "b", "c", "d"], 1, seed=0, texts=texts)
        >>> ("a" in dev) == ("b" in dev)
        True
    """
    if isinstance(dev_queries, bool) or not isinstance(dev_queries, (int, float)):
        raise ValueError(f"dev_queries must be an int or a float, got {dev_queries!r}")
    if isinstance(dev_queries, float) and not dev_queries.is_integer():
        if not 0 < dev_queries < 1:
            raise ValueError(f"a fractional dev_queries must be in (0, 1), got {dev_queries}")
        dev_count = round(dev_queries * len(query_ids))
    else:
        dev_count = int(dev_queries)
    if dev_count < 0 or dev_count > len(query_ids):
        raise ValueError(
            f"dev_queries={dev_queries!r} asks for {dev_count} dev queries, but only "
            f"{len(query_ids)} queries have a relevant document"
        )

    def order(query_id: str) -> str:
        return hashlib.sha256(f"{seed}\t{query_id}".encode()).hexdigest()

    groups: dict[str, list[str]] = {}
    for query_id in sorted(query_ids, key=order):
        key = normalized_text(texts[query_id]) if texts is not None else query_id
        groups.setdefault(key, []).append(query_id)
    held_out: set[str] = set()
    for group in groups.values():  # in the hash order of each group's first member
        if len(held_out) >= dev_count:
            break
        held_out.update(group)
    train = [query_id for query_id in query_ids if query_id not in held_out]
    dev = [query_id for query_id in query_ids if query_id in held_out]
    return train, dev


def _parameters(
    root: Path,
    split: str,
    negatives_per_positive: int,
    min_rank: int,
    max_rank: int,
    dev_queries: int | float,
    seed: int,
    k1: float,
    b: float,
) -> dict[str, Any]:
    return {
        "root": str(root.resolve()),
        "split": split,
        "negatives_per_positive": negatives_per_positive,
        "min_rank": min_rank,
        "max_rank": max_rank,
        "dev_queries": dev_queries,
        "seed": seed,
        "k1": k1,
        "b": b,
        "stopwords": STOPWORDS,
    }


def _cached_result(
    output_dir: Path, parameters: dict[str, Any], input_paths: dict[str, Path]
) -> PrepareResult | None:
    manifest = read_manifest(output_dir)
    if manifest is None:
        return None
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("parameters") != parameters:
        return None
    names = (TRIPLES_FILE, TRAIN_QRELS_FILE, DEV_QRELS_FILE)
    if not all((output_dir / name).is_file() for name in names):
        return None
    recorded = manifest.get("inputs")
    if not isinstance(recorded, dict) or set(recorded) != set(input_paths):
        return None
    current = {}
    for name, path in input_paths.items():
        current[name] = same_content(recorded[name], path)
        if current[name] is None:
            log.warning(
                "%s changed since %s was prepared from it: preparing again", path, output_dir
            )
            return None
    if current != recorded:  # a hash vouched for a new time: record it, to trust it next time
        _write_manifest(output_dir, {**manifest, "inputs": current})
    return _result(output_dir, manifest["counts"], current, cached=True)


def read_manifest(output_dir: str | Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of a prepared folder, or None when there is none (or unreadable)."""
    manifest_path = Path(output_dir) / MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) else None


def prepared_inputs(output_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """The input fingerprints a prepared folder's manifest records (None: none recorded)."""
    manifest = read_manifest(output_dir)
    return manifest.get("inputs") if manifest is not None else None


def _write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    write_atomically(output_dir / MANIFEST_FILE, text.encode("utf-8"))


def _result(
    output_dir: Path, counts: dict[str, int], inputs: dict[str, dict[str, Any]], cached: bool
) -> PrepareResult:
    return PrepareResult(
        output_dir=str(output_dir),
        triples=str(output_dir / TRIPLES_FILE),
        train_qrels=str(output_dir / TRAIN_QRELS_FILE),
        dev_qrels=str(output_dir / DEV_QRELS_FILE),
        manifest=str(output_dir / MANIFEST_FILE),
        counts=dict(counts),
        cached=cached,
        inputs=inputs,
    )


def check_rank_window(min_rank: int, max_rank: int) -> None:
    """Raise ValueError unless ``1 <= min_rank <= max_rank`` (1-based BM25 ranks)."""
    if not 1 <= min_rank <= max_rank:
        raise ValueError(
            f"need 1 <= min_rank <= max_rank (1-based BM25 ranks), got {min_rank}..{max_rank}"
        )


def bm25_windows(
    ids: Sequence[str],
    texts: Sequence[str],
    queries: Mapping[str, str],
    min_rank: int,
    max_rank: int,
    k1: float = 0.9,
    b: float = 0.4,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """Each query's BM25 ranks ``min_rank..max_rank`` (1-based, inclusive): its negatives pool.

    Args:
        ids: document ids.
        texts: their texts, aligned with ``ids``.
        queries: query id -> text.
        min_rank: first rank kept.
        max_rank: last rank kept.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        show_progress: show tqdm bars.

    Returns:
        Query id -> document ids, best first.
    """
    check_rank_window(min_rank, max_rank)
    retriever = BM25Retriever(ids, texts, k1=k1, b=b, show_progress=show_progress)
    rankings = retriever.search(dict(queries), k=max_rank)
    return {
        query_id: [doc_id for doc_id, _ in ranking[min_rank - 1 : max_rank]]
        for query_id, ranking in rankings.items()
    }


def sample_negatives(
    pool: Sequence[str], count: int, seed: int, query_id: str, positive_id: str
) -> list[str]:
    """Up to ``count`` of ``pool`` without replacement, seeded by ``(seed, query, positive)``."""
    rng = random.Random(f"{seed}\t{query_id}\t{positive_id}")
    return rng.sample(list(pool), min(count, len(pool)))


def prepare_triples(
    root: str | Path,
    split: str,
    output_dir: str | Path,
    negatives_per_positive: int = 8,
    min_rank: int = 10,
    max_rank: int = 100,
    dev_queries: int | float = 50,
    seed: int = 0,
    k1: float = 0.9,
    b: float = 0.4,
    show_progress: bool = True,
) -> PrepareResult:
    """Write BM25 hard-negative triples and a train/dev split of ``split``'s judged queries.

    The queries of ``qrels/<split>.tsv`` with at least one relevant document (grade > 0) are
    ordered by a hash of ``(seed, query id)``; the first ``dev_queries`` are held out. For each
    remaining query and each relevant document with non-empty text, ``negatives_per_positive``
    negatives are sampled without replacement (seeded by ``(seed, query, positive)``) from BM25
    ranks ``min_rank..max_rank`` (1-based, inclusive), leaving out every document judged relevant
    to the query and every empty document; fewer when the window has fewer.

    Args:
        root: BEIR-layout folder (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/``).
        split: qrels split to draw train and dev queries from.
        output_dir: where the files go (created if needed).
        negatives_per_positive: negatives per triple.
        min_rank: first BM25 rank negatives may come from.
        max_rank: last BM25 rank negatives may come from.
        dev_queries: held-out query count, or fraction when a float below 1.
        seed: seed of the dev split and the negative sampling.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        show_progress: show tqdm bars.

    Returns:
        The output paths, counts and input fingerprints; ``cached`` when a complete run with
        the same parameters, from inputs of the same content, was found in ``output_dir``.

    Raises:
        ValueError: bad arguments, or no train query left after the dev split.
        DataFormatError: a malformed input line.
        FileNotFoundError: a missing input file or split.
        RuntimeError: an input file changed while it was read.
    """
    if negatives_per_positive < 1:
        raise ValueError(f"negatives_per_positive must be >= 1, got {negatives_per_positive}")
    check_rank_window(min_rank, max_rank)
    root, output_dir = Path(root), Path(output_dir)
    parameters = _parameters(
        root, split, negatives_per_positive, min_rank, max_rank, dev_queries, seed, k1, b
    )
    corpus_path = find_beir_file(root, "corpus")
    queries_path = find_beir_file(root, "queries")
    split_path = qrels_path(root, split)
    input_paths = {"corpus": corpus_path, "queries": queries_path, "qrels": split_path}
    remove_stale_temporaries(output_dir)
    cached = _cached_result(output_dir, parameters, input_paths)
    if cached is not None:
        return cached

    inputs = {name: fingerprint(path) for name, path in input_paths.items()}
    corpus = load_corpus(corpus_path)
    queries = load_queries(queries_path)
    qrels = load_qrels(split_path, query_ids=set(queries), doc_ids=set(corpus.ids))

    judged = [query_id for query_id, grades in qrels.items() if any(g > 0 for g in grades.values())]
    train_ids, dev_ids = split_dev_queries(judged, dev_queries, seed, texts=queries)
    if not train_ids:
        raise ValueError(
            f"dev_queries={dev_queries!r} holds out all {len(judged)} judged queries of "
            f"split {split!r}; none is left for training"
        )

    windows = bm25_windows(
        corpus.ids,
        corpus.texts,
        {query_id: queries[query_id] for query_id in train_ids},
        min_rank,
        max_rank,
        k1=k1,
        b=b,
        show_progress=show_progress,
    )
    text_of = dict(zip(corpus.ids, corpus.texts, strict=True))

    output_dir.mkdir(parents=True, exist_ok=True)
    # A stale manifest must not vouch for the files about to be replaced.
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)

    triples = skipped_empty_positives = skipped_no_negatives = 0
    triples_path = output_dir / TRIPLES_FILE
    triples_tmp = temporary_path(triples_path)
    with open(triples_tmp, "w", encoding="utf-8") as output:
        for query_id in train_ids:
            relevant = {doc_id for doc_id, grade in qrels[query_id].items() if grade > 0}
            window = [
                doc_id
                for doc_id in windows[query_id]
                if doc_id not in relevant and text_of[doc_id].strip()
            ]
            for positive_id in (d for d, grade in qrels[query_id].items() if grade > 0):
                if not text_of[positive_id].strip():
                    skipped_empty_positives += 1
                    continue
                negative_ids = sample_negatives(
                    window, negatives_per_positive, seed, query_id, positive_id
                )
                if not negative_ids:
                    skipped_no_negatives += 1
                    continue
                record = {
                    "query": queries[query_id],
                    "positive": text_of[positive_id],
                    "negatives": [text_of[doc_id] for doc_id in negative_ids],
                    "qid": query_id,
                    "pid": positive_id,
                    "neg_ids": negative_ids,
                }
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
                triples += 1

    train_qrels_path, dev_qrels_path = output_dir / TRAIN_QRELS_FILE, output_dir / DEV_QRELS_FILE
    staged = [(triples_tmp, triples_path)]
    for path, query_ids in ((train_qrels_path, train_ids), (dev_qrels_path, dev_ids)):
        subset: Qrels = {query_id: qrels[query_id] for query_id in query_ids}
        write_qrels(temporary_path(path), subset)
        staged.append((temporary_path(path), path))
    # the manifest vouches for these files' inputs: they must be what was read
    for name, path in input_paths.items():
        if not stat_unchanged(inputs[name], path):
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            raise RuntimeError(f"{path} changed while prepare read it; run it again")
    for temporary, final in staged:
        os.replace(temporary, final)

    counts = {
        "train_queries": len(train_ids),
        "dev_queries": len(dev_ids),
        "unjudged_queries": len(qrels) - len(judged),
        "triples": triples,
        "skipped_empty_positives": skipped_empty_positives,
        "skipped_no_negatives": skipped_no_negatives,
        "empty_documents": corpus.empty_count,
    }
    manifest = {
        "version": MANIFEST_VERSION,
        "parameters": parameters,
        "counts": counts,
        "inputs": inputs,
        "files": {
            "triples": TRIPLES_FILE,
            "train_qrels": TRAIN_QRELS_FILE,
            "dev_qrels": DEV_QRELS_FILE,
        },
    }
    _write_manifest(output_dir, manifest)
    return _result(output_dir, counts, inputs, cached=False)


def result_as_dict(result: PrepareResult) -> dict[str, Any]:
    """Plain-dict form of a result (for printing or logging)."""
    return asdict(result)
