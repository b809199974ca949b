"""Retrieval at scale: token embeddings on disk, an IVF index for candidates, exact MaxSim rerank.

:func:`build_index` encodes a collection in batches and appends each document's *scored* token
embeddings (padding and skiplisted punctuation left out) to one fp16 file, memory-mapped when
read; a faiss IVF index (inner product) over all token embeddings generates candidates.
:class:`Retriever` searches in three steps per query:

1. every scored query token fetches its ``candidates_per_token`` nearest document tokens from
   ``nprobe`` IVF lists;
2. the documents owning them are ranked by an approximate MaxSim (each query token's best
   *fetched* similarity per document, summed; a token that fetched nothing of a document adds 0);
3. the best ``rerank_depth`` of them are scored exactly, MaxSim over all their stored tokens.

An index grows and shrinks in place (:meth:`Retriever.add_documents`,
:meth:`Retriever.delete_documents`), and the retriever that changed it searches the new
collection at once:

- added documents are encoded as :func:`build_index` encoded the first ones (same model, same
  ``doc_maxlen``), their tokens appended to the fp16 file and added to the IVF lists of the
  existing quantizer (not retrained: after the collection has grown many times over, or changed
  topic, rebuild for the best lists);
- deleted documents are marked in a tombstone mask (``deleted.npy``), which every search
  honours, and their tokens are removed from the IVF lists; their rows and stored embeddings
  stay (rebuild to reclaim the space), and their ids may be used again by new documents.

Every file an update changes is written beside itself and renamed into place, and the manifest
last: the counts it records are the index. Arrays only grow at their end, so a reader takes the
first ``documents`` / ``tokens`` entries of each and ignores what an interrupted update appended;
IVF entries beyond ``tokens`` or of deleted documents are dropped on loading.

Scoring given documents against a query needs no index: see
:func:`colbert_lightning.retrieval.exact.rerank_texts`.

Folder written by :func:`build_index`::

    manifest.json    model source and fingerprint, settings (doc_maxlen), counts
    embeddings.f16   (tokens, dim) float16, raw
    doc_starts.npy   (documents,) int64: first row of each document's tokens
    doc_lengths.npy  (documents,) int64: its token count
    token_docs.npy   (tokens,) int32: the document row of each token
    doc_ids.json     document ids, by row
    deleted.npy      (documents,) bool: deleted documents (absent: none)
    ivf.faiss        the faiss index; its ids are rows of embeddings.f16
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from colbert_lightning.modeling import ColBERT, inference
from colbert_lightning.modeling.checkpoints import temporary_path, write_atomically
from colbert_lightning.modeling.tokenization import ColBERTTokenizer
from colbert_lightning.retrieval.encode import (
    check_batch_size,
    encode_documents_by_length,
    encode_queries,
    encoder_device,
)
from colbert_lightning.retrieval.exact import RerankedDocument, check_k, rerank_texts
from colbert_lightning.scoring import keep_top_k, packed_maxsim

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.f16"
DOC_STARTS = "doc_starts.npy"
DOC_LENGTHS = "doc_lengths.npy"
TOKEN_DOCS = "token_docs.npy"
DOC_IDS = "doc_ids.json"
DELETED = "deleted.npy"
IVF = "ivf.faiss"
CODECS = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}
"""IVF list encodings: exact float32 vectors, float16, or 8-bit scalar quantisation."""
VERSION = 2
"""2 added ``doc_maxlen``, ``deleted`` and ``deleted.npy``; version 1 folders read as before."""
ADD_CHUNK = 65_536
"""Token embeddings converted to float32 and added to the IVF index at a time."""


@dataclass
class SearchHit:
    """One search result.

    Attributes:
        doc_id: the document's id.
        score: its exact MaxSim score.
        rank: 1 for the best.
    """

    doc_id: str
    score: float
    rank: int


def model_fingerprint(model: ColBERT) -> str:
    """A short hash of the projection weights: tells a search which model built an index."""
    weights = model.linear.weight.detach().cpu().float().contiguous().numpy()
    return hashlib.sha256(weights.tobytes()).hexdigest()[:16]


def default_nlist(tokens: int) -> int:
    """IVF lists for ``tokens`` vectors: the power of 2 nearest ``4 * sqrt(tokens)``.

    Example:
        >>> default_nlist(815_632), default_nlist(10)
        (4096, 16)
    """
    return 2 ** max(0, round(math.log2(4 * math.sqrt(max(tokens, 1)))))


def max_document_tokens(model: ColBERT) -> int | None:
    """The longest ``doc_maxlen`` the model's encoder and tokenizer take, or None if unknown.

    The smaller of the encoder's position embeddings and the tokenizer's ``model_max_length``
    (a huge placeholder there means "unset" and is ignored).
    """
    limits = [
        getattr(model.encoder.config, "max_position_embeddings", None),
        model.tokenizer.tokenizer.model_max_length,
    ]
    usable = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(usable) if usable else None


def with_doc_maxlen(model: ColBERT, doc_maxlen: int) -> ColBERT:
    """``model`` encoding documents truncated to ``doc_maxlen`` tokens instead of its own.

    The result shares the encoder and projection (same weights, same fingerprint, same device and
    mode); only the config and the tokeniser differ. ``model`` itself is unchanged. Use it to
    encode, never to train or to assign submodules: it shares ``model``'s module registry.

    Raises:
        ValueError: ``doc_maxlen`` is longer than the encoder takes (:func:`max_document_tokens`).
    """
    if doc_maxlen == model.config.doc_maxlen:
        return model
    limit = max_document_tokens(model)
    if limit is not None and doc_maxlen > limit:
        raise ValueError(f"doc_maxlen={doc_maxlen}: the encoder takes at most {limit} tokens")
    config = dataclasses.replace(model.config, doc_maxlen=doc_maxlen)
    # a shallow copy shares the submodules (no new weights, no random numbers drawn)
    variant = copy.copy(model)
    variant.config = config
    variant.tokenizer = ColBERTTokenizer(model.tokenizer.tokenizer, config)
    return variant


def build_index(
    model: ColBERT,
    doc_ids: list[str],
    texts: list[str],
    folder: str | os.PathLike,
    nlist: int | None = None,
    train_sample: int = 262_144,
    codec: str = "flat",
    batch_size: int = 64,
    seed: int = 0,
    model_source: str | None = None,
    show_progress: bool = True,
    doc_maxlen: int | None = None,
) -> dict[str, Any]:
    """Encode ``texts`` to fp16 token embeddings on disk and build the IVF index over them.

    Args:
        model: the ColBERT; encodes on its own device, in eval mode (its mode is restored).
        doc_ids: document ids, aligned with ``texts``, unique.
        texts: document texts.
        folder: where the index files go (created; existing index files are replaced).
        nlist: IVF lists; default :func:`default_nlist` of the token count, capped so that each
            list has at least 39 training vectors (fewer only when there are fewer tokens).
        train_sample: token embeddings k-means is trained on (at least ``39 * nlist`` are used).
        codec: how IVF lists store vectors: ``flat`` (float32), ``fp16`` or ``sq8``.
        batch_size: documents per encoder call.
        seed: seed of the training sample and of k-means.
        model_source: the checkpoint or folder the model came from, recorded for ``search``.
        show_progress: tqdm bars while encoding and indexing.
        doc_maxlen: truncate documents to this many tokens (default: the model's
            ``doc_maxlen``); recorded, and used again for documents added later.

    Returns:
        The manifest written to ``manifest.json``.
    """
    _check_new_documents(doc_ids, texts)
    if not texts:
        raise ValueError("cannot index an empty collection")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    check_batch_size(batch_size)
    encoder = with_doc_maxlen(model, model.config.doc_maxlen if doc_maxlen is None else doc_maxlen)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an index is complete only with its manifest
    (folder / DELETED).unlink(missing_ok=True)  # a previous index's tombstones
    dim = model.config.dim

    # new files, never rewritten in place: a retriever still reading the old index (memory-
    # mapped) keeps its old files until it lets them go
    (folder / EMBEDDINGS).unlink(missing_ok=True)
    with open(folder / EMBEDDINGS, "wb") as output:
        starts, lengths, token_docs = _append_embeddings(
            encoder, texts, output, 0, 0, batch_size, show_progress
        )
    written = int(lengths.sum())
    _save_array(folder / DOC_STARTS, starts)
    _save_array(folder / DOC_LENGTHS, lengths)
    _save_array(folder / TOKEN_DOCS, token_docs)
    _save_json(folder / DOC_IDS, list(doc_ids))

    embeddings = np.memmap(folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(written, dim))
    nlist = nlist or max(1, min(default_nlist(written), written // 39))
    index = _train_ivf(embeddings, nlist, codec, train_sample, seed, show_progress)
    _add_to_ivf(index, embeddings, 0, show_progress)
    _save_faiss(folder / IVF, index)

    manifest = {
        "version": VERSION,
        "model": model_source,
        "model_fingerprint": model_fingerprint(model),
        "model_config": model.config.to_dict(),
        "doc_maxlen": encoder.config.doc_maxlen,
        "documents": len(texts),
        "deleted": 0,
        "tokens": written,
        "dim": dim,
        "nlist": nlist,
        "codec": codec,
    }
    _save_json(folder / MANIFEST, manifest, indent=2)
    return manifest


def _check_new_documents(doc_ids: Sequence[str], texts: Sequence[str]) -> None:
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("document ids must be unique")


def _append_embeddings(
    model: ColBERT,
    texts: list[str],
    output: BinaryIO,
    first_row: int,
    first_token: int,
    batch_size: int,
    show_progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode ``texts`` and write their scored tokens, fp16, to ``output`` in row order.

    Batches are encoded by length (less padding) but written in the order of ``texts``, so row
    ``first_row + i`` holds ``texts[i]``'s tokens from ``first_token + starts[i]``.

    Returns:
        ``starts`` and ``lengths`` (int64, one per text; starts are token rows of the file) and
        ``token_docs`` (int32, the document row of each token written).
    """
    starts = np.zeros(len(texts), dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    token_docs: list[np.ndarray] = []
    written = first_token
    with inference(model):
        for rows, encoded in encode_documents_by_length(
            model, texts, batch_size, encoder_device(model), show_progress, "encoding documents"
        ):
            for position, row in enumerate(rows):
                scored = encoded.embeddings[position][encoded.mask[position]]  # (n, dim)
                output.write(scored.to(torch.float16).cpu().numpy().tobytes())
                starts[row], lengths[row] = written, scored.shape[0]
                token_docs.append(np.full(scored.shape[0], first_row + row, dtype=np.int32))
                written += scored.shape[0]
    output.flush()
    os.fsync(output.fileno())
    return starts, lengths, np.concatenate(token_docs) if token_docs else np.zeros(0, np.int32)


def _train_ivf(
    embeddings: np.ndarray,
    nlist: int,
    codec: str,
    train_sample: int,
    seed: int,
    show_progress: bool,
) -> faiss.Index:
    tokens, dim = embeddings.shape
    index = faiss.index_factory(dim, f"IVF{nlist},{CODECS[codec]}", faiss.METRIC_INNER_PRODUCT)
    sample_size = min(tokens, max(train_sample, 39 * nlist))
    rows = np.sort(np.random.default_rng(seed).choice(tokens, size=sample_size, replace=False))
    sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    ivf.verbose = False
    if show_progress:
        print(f"training {nlist} IVF lists on {sample_size:,} of {tokens:,} token embeddings")
    index.train(sample)
    return index


def _add_to_ivf(
    index: faiss.Index, embeddings: np.ndarray, first_token: int, show_progress: bool
) -> None:
    """Add token embeddings to the IVF lists; their ids are their rows, ``first_token`` on."""
    count = len(embeddings)
    for start in tqdm(
        range(0, count, ADD_CHUNK), desc="indexing tokens", unit="chunk", disable=not show_progress
    ):
        chunk = np.ascontiguousarray(embeddings[start : start + ADD_CHUNK], dtype=np.float32)
        ids = np.arange(first_token + start, first_token + start + len(chunk), dtype=np.int64)
        index.add_with_ids(chunk, ids)


# ---- files, replaced atomically ---------------------------------------------------------------


def _save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getbuffer())


def _save_json(path: Path, value: Any, indent: int | None = None) -> None:
    write_atomically(path, (json.dumps(value, indent=indent) + "\n").encode("utf-8"))


def _save_faiss(path: Path, index: faiss.Index) -> None:
    temporary = temporary_path(path)
    try:
        faiss.write_index(index, str(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _token_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every token row of the documents with these starts and lengths, int64."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(starts, lengths) + offsets).astype(np.int64)


class Retriever:
    """Search an index built by :func:`build_index`: IVF candidates, then exact MaxSim.

    Args:
        folder: the index folder.
        model: the ColBERT that built the index; default: load the checkpoint it records.
        nprobe: IVF lists searched per query token.
        candidates_per_token: document tokens fetched per query token.
        rerank_depth: candidate documents scored exactly per query.
        batch_size: queries encoded (and searched) together.

    Attributes:
        doc_ids: the id of every row, deleted ones included (see :attr:`deleted`).
        deleted: (rows,) True for deleted documents.

    Raises:
        ValueError: the index is incomplete or damaged, or ``model`` is not the model that
            built it.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        model: ColBERT | None = None,
        nprobe: int = 32,
        candidates_per_token: int = 128,
        rerank_depth: int = 256,
        batch_size: int = 64,
    ) -> None:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise ValueError(f"{folder} holds no complete index (no {MANIFEST})")
        self.folder = folder
        self.manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if self.manifest.get("version", 1) > VERSION:
            raise ValueError(
                f"{folder}: index version {self.manifest['version']} is newer than this "
                f"colbert-lightning reads ({VERSION})"
            )
        if model is None:
            if not self.manifest.get("model"):
                raise ValueError(f"{folder}: the index records no model; pass one")
            model = ColBERT.load(self.manifest["model"]).eval()
        if model_fingerprint(model) != self.manifest["model_fingerprint"]:
            raise ValueError(f"{folder} was built by another model ({self.manifest['model']})")
        _check_settings(nprobe, candidates_per_token, rerank_depth)
        check_batch_size(batch_size)
        self.model = model
        self.nprobe = nprobe
        self.candidates_per_token = candidates_per_token
        self.rerank_depth = rerank_depth
        self.batch_size = batch_size
        self.doc_maxlen: int = self.manifest.get(
            "doc_maxlen", self.manifest["model_config"]["doc_maxlen"]
        )
        tokens, documents = self.manifest["tokens"], self.manifest["documents"]
        dim = self.manifest["dim"]
        # an interrupted update may have appended to the arrays: the manifest's counts hold
        self.embeddings = np.memmap(
            folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(tokens, dim)
        )
        self.doc_starts = np.load(folder / DOC_STARTS)[:documents]
        self.doc_lengths = np.load(folder / DOC_LENGTHS)[:documents]
        self.token_docs = np.load(folder / TOKEN_DOCS, mmap_mode="r")[:tokens]
        doc_ids = json.loads((folder / DOC_IDS).read_text(encoding="utf-8"))
        self.doc_ids: list[str] = doc_ids[:documents]
        self.deleted = np.zeros(documents, dtype=bool)
        if (folder / DELETED).is_file():
            stored = np.load(folder / DELETED)[:documents]
            self.deleted[: len(stored)] = stored
        if len(self.doc_ids) != documents or len(self.doc_starts) != documents:
            raise ValueError(f"{folder}: the index files hold fewer documents than its manifest")
        self.index = faiss.read_index(str(folder / IVF))
        self._drop_stale_ivf_entries()
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        self._rows: dict[str, int] | None = None

    @property
    def tokens(self) -> int:
        """Token embeddings stored, deleted documents' included."""
        return len(self.embeddings)

    def __len__(self) -> int:
        """Documents that searches can return (deleted ones left out)."""
        return len(self.doc_ids) - int(self.deleted.sum())

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._live_rows()

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """The ``k`` best documents for one query, best first."""
        return self.search_batch([query], k)[0]

    @torch.inference_mode()
    def search_batch(
        self,
        queries: list[str],
        k: int = 10,
        show_progress: bool = False,
        *,
        nprobe: int | None = None,
        candidates_per_token: int | None = None,
        rerank_depth: int | None = None,
    ) -> list[list[SearchHit]]:
        """:meth:`search` for many queries, encoded and searched ``batch_size`` at a time.

        ``nprobe``, ``candidates_per_token`` and ``rerank_depth`` override the retriever's
        settings for this call.
        """
        check_k(k)
        nprobe = self.nprobe if nprobe is None else nprobe
        candidates = (
            self.candidates_per_token if candidates_per_token is None else candidates_per_token
        )
        depth = self.rerank_depth if rerank_depth is None else rerank_depth
        _check_settings(nprobe, candidates, depth)
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        results: list[list[SearchHit]] = []
        for start in tqdm(
            range(0, len(queries), self.batch_size),
            desc="searching",
            unit="batch",
            disable=not show_progress,
        ):
            embeddings, mask = self._encode(queries[start : start + self.batch_size])
            scored = embeddings[mask]  # (tokens of the batch, dim)
            # (tokens, C) inner products and token rows; -1 where a probe found fewer than C
            similarities, token_ids = self.index.search(scored.numpy(), candidates)
            owner = np.repeat(np.arange(len(embeddings)), mask.sum(dim=1).numpy())
            for row in range(len(embeddings)):
                mine = owner == row
                rows = self._approximate_top(token_ids[mine], similarities[mine], depth)
                results.append(self._exact_top(embeddings[row], mask[row], rows, k))
        return results

    @torch.inference_mode()
    def exact_search_batch(
        self,
        queries: list[str],
        k: int = 10,
        documents_per_pass: int = 64,
        *,
        doc_ids: Sequence[str] | None = None,
    ) -> list[list[SearchHit]]:
        """Brute force over every stored document: exact MaxSim, no IVF (the reference).

        Args:
            queries: query texts.
            k: results per query.
            documents_per_pass: documents scored together.
            doc_ids: search only these documents (default: all that are not deleted).

        Raises:
            KeyError: a document of ``doc_ids`` is not in the index (or deleted).
        """
        check_k(k)
        if doc_ids is None:
            order = np.flatnonzero(~self.deleted)
        else:
            order = np.asarray(sorted(set(self._rows_of(doc_ids))), dtype=np.int64)
        results: list[list[SearchHit]] = []
        for start in range(0, len(queries), self.batch_size):
            embeddings, mask = self._encode(queries[start : start + self.batch_size])
            best_scores = torch.full((len(embeddings), 0), float("-inf"))
            best_rows = torch.zeros((len(embeddings), 0), dtype=torch.long)
            for first in range(0, len(order), documents_per_pass):
                rows = order[first : first + documents_per_pass]
                scores = self._score_stored(embeddings, mask, rows)  # (Qb, D)
                best_scores, best_rows = keep_top_k(
                    best_scores, best_rows, scores, torch.from_numpy(rows), k
                )
            for scores, rows in zip(best_scores.tolist(), best_rows.tolist(), strict=True):
                results.append(self._hits(rows, scores))
        return results

    def rerank(
        self, query: str, documents: list[str], k: int | None = None
    ) -> list[RerankedDocument]:
        """:func:`~colbert_lightning.retrieval.exact.rerank_texts` with this retriever's model."""
        return rerank_texts(self.model, query, documents, k=k, batch_size=self.batch_size)

    # ---- updates ---------------------------------------------------------------------------

    def add_documents(
        self,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> dict[str, Any]:
        """Encode ``texts`` and add them to the index; searches return them from now on.

        They are encoded as the index's first documents were (``doc_maxlen`` of the manifest),
        appended to the stored embeddings, and added to the IVF lists of the existing
        quantizer. The folder is updated in place (see the module docstring).

        Args:
            doc_ids: their ids: unique, and not the id of a document in the index (a deleted
                document's id may be used again).
            texts: their texts, aligned with ``doc_ids``.
            batch_size: documents per encoder call; default the retriever's ``batch_size``.
            show_progress: tqdm bars while encoding and indexing.

        Returns:
            The updated manifest.

        Raises:
            ValueError: ids and texts differ in number, or an id repeats or is in the index.
        """
        doc_ids, texts = list(doc_ids), list(texts)
        _check_new_documents(doc_ids, texts)
        taken = [doc_id for doc_id in doc_ids if doc_id in self._live_rows()]
        if taken:
            raise ValueError(f"documents already in the index: {taken[:5]}")
        if not texts:
            return self.manifest
        batch_size = self.batch_size if batch_size is None else batch_size
        check_batch_size(batch_size)
        folder, dim = self.folder, self.manifest["dim"]
        first_row, first_token = len(self.doc_ids), self.tokens
        with open(folder / EMBEDDINGS, "r+b") as output:
            output.truncate(first_token * dim * 2)  # what an interrupted update appended
            output.seek(0, os.SEEK_END)
            starts, lengths, token_docs = _append_embeddings(
                with_doc_maxlen(self.model, self.doc_maxlen),
                texts,
                output,
                first_row,
                first_token,
                batch_size,
                show_progress,
            )
        tokens = first_token + int(lengths.sum())
        embeddings = np.memmap(folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(tokens, dim))
        doc_starts = np.concatenate([self.doc_starts, starts])
        doc_lengths = np.concatenate([self.doc_lengths, lengths])
        all_token_docs = np.concatenate([np.asarray(self.token_docs), token_docs])
        deleted = np.concatenate([self.deleted, np.zeros(len(texts), dtype=bool)])
        all_ids = self.doc_ids + doc_ids
        _save_array(folder / DOC_STARTS, doc_starts)
        _save_array(folder / DOC_LENGTHS, doc_lengths)
        _save_array(folder / TOKEN_DOCS, all_token_docs)
        _save_array(folder / DELETED, deleted)
        _save_json(folder / DOC_IDS, all_ids)
        try:
            _add_to_ivf(self.index, embeddings[first_token:], first_token, show_progress)
            _save_faiss(folder / IVF, self.index)
        except BaseException:
            # the lists in memory back to what the folder holds: no half-added document
            self.index = faiss.read_index(str(folder / IVF))
            self._drop_stale_ivf_entries()
            raise
        manifest = {**self.manifest, "documents": len(all_ids), "tokens": tokens}
        manifest["deleted"] = int(deleted.sum())
        manifest["version"] = VERSION
        _save_json(folder / MANIFEST, manifest, indent=2)
        self.manifest, self.embeddings = manifest, embeddings
        self.doc_starts, self.doc_lengths, self.token_docs = doc_starts, doc_lengths, all_token_docs
        self.deleted, self.doc_ids = deleted, all_ids
        if self._rows is not None:
            self._rows.update((doc_id, first_row + i) for i, doc_id in enumerate(doc_ids))
        return manifest

    def delete_documents(self, doc_ids: Sequence[str]) -> dict[str, Any]:
        """Delete documents: searches never return them again, this retriever's included.

        Their rows are marked in ``deleted.npy`` (written first: from then on they are gone)
        and their tokens removed from the IVF lists; their stored embeddings stay.

        Returns:
            The updated manifest.

        Raises:
            KeyError: an id is not in the index (or was deleted already); nothing is deleted.
        """
        rows = sorted(set(self._rows_of(doc_ids)))
        if not rows:
            return self.manifest
        deleted = self.deleted.copy()
        deleted[rows] = True
        _save_array(self.folder / DELETED, deleted)
        self.deleted = deleted
        live = self._live_rows()
        for row in rows:
            live.pop(self.doc_ids[row], None)
        targets = np.asarray(rows, dtype=np.int64)
        self.index.remove_ids(_token_rows(self.doc_starts[targets], self.doc_lengths[targets]))
        _save_faiss(self.folder / IVF, self.index)
        manifest = {**self.manifest, "deleted": int(deleted.sum()), "version": VERSION}
        _save_json(self.folder / MANIFEST, manifest, indent=2)
        self.manifest = manifest
        return manifest

    # ---- steps ----------------------------------------------------------------------------

    def _live_rows(self) -> dict[str, int]:
        """Document id -> row, for documents not deleted (built on first use)."""
        if self._rows is None:
            self._rows = {
                doc_id: row for row, doc_id in enumerate(self.doc_ids) if not self.deleted[row]
            }
        return self._rows

    def _rows_of(self, doc_ids: Sequence[str]) -> list[int]:
        if isinstance(doc_ids, str):
            raise TypeError("doc_ids must be a sequence of ids, not one string")
        live = self._live_rows()
        unknown = [doc_id for doc_id in doc_ids if doc_id not in live]
        if unknown:
            raise KeyError(f"documents not in the index (or deleted): {unknown[:5]}")
        return [live[doc_id] for doc_id in doc_ids]

    def _drop_stale_ivf_entries(self) -> None:
        """Remove IVF entries the manifest does not vouch for: beyond ``tokens``, or deleted.

        Only an update interrupted between its files leaves such entries; they are removed in
        memory, and the next update writes the cleaned lists.
        """
        dead = np.flatnonzero(self.deleted)
        expected = self.tokens - int(self.doc_lengths[dead].sum())
        if self.index.ntotal == expected:
            return
        self.index.remove_ids(faiss.IDSelectorRange(self.tokens, np.iinfo(np.int64).max))
        self.index.remove_ids(_token_rows(self.doc_starts[dead], self.doc_lengths[dead]))
        if self.index.ntotal != expected:
            raise ValueError(
                f"{self.folder}: the IVF index holds {self.index.ntotal} tokens, the manifest "
                f"{expected}; rebuild the index"
            )

    def _encode(self, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # the model may have been handed over in train mode: search never encodes with dropout
        with inference(self.model):
            embeddings, mask = encode_queries(self.model, list(queries), encoder_device(self.model))
        return embeddings.float().cpu(), mask.bool().cpu()  # (Qb, Lq, dim), (Qb, Lq)

    def _approximate_top(
        self, token_ids: np.ndarray, similarities: np.ndarray, depth: int
    ) -> np.ndarray:
        """The ``depth`` documents with the best approximate MaxSim, from fetched tokens.

        Args:
            token_ids: (Lq, C) fetched token rows of one query (-1: none).
            similarities: (Lq, C) their similarity with the query token.
            depth: documents kept.

        Returns:
            Document rows, best first; deleted documents never.
        """
        valid = (token_ids >= 0) & (token_ids < self.tokens)
        owners = np.zeros(token_ids.shape, dtype=np.int64)
        owners[valid] = self.token_docs[token_ids[valid]]
        valid &= ~self.deleted[owners]
        query_tokens = np.broadcast_to(np.arange(len(token_ids))[:, None], token_ids.shape)[valid]
        documents, slots = np.unique(owners[valid], return_inverse=True)
        best = np.full((len(token_ids), len(documents)), -np.inf, dtype=np.float32)
        np.maximum.at(best, (query_tokens, slots), similarities[valid])
        approximate = np.where(np.isfinite(best), best, 0.0).sum(axis=0)
        keep = min(depth, len(documents))
        top = np.argpartition(-approximate, keep - 1)[:keep] if keep else np.zeros(0, dtype=int)
        return documents[top[np.argsort(-approximate[top], kind="stable")]]

    def _stored(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored tokens of documents ``rows``, packed (no padding).

        Returns:
            (N, dim) float32 embeddings and (N,) the position in ``rows`` each token belongs to.
        """
        lengths = self.doc_lengths[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        token_rows = _token_rows(self.doc_starts[rows], lengths)
        tokens = np.asarray(self.embeddings[token_rows], np.float32)
        return torch.from_numpy(tokens), torch.from_numpy(owner)

    def _score_stored(
        self, queries: torch.Tensor, query_mask: torch.Tensor, rows: np.ndarray
    ) -> torch.Tensor:
        """Exact MaxSim of queries (Q, Lq, dim) against stored documents ``rows``: (Q, D)."""
        tokens, owner = self._stored(rows)
        return packed_maxsim(
            queries, query_mask, tokens, owner, len(rows), self.model.config.similarity
        )

    def _exact_top(
        self, query: torch.Tensor, query_mask: torch.Tensor, rows: np.ndarray, k: int
    ) -> list[SearchHit]:
        if len(rows) == 0:
            return []
        scores = self._score_stored(query[None], query_mask[None], rows)[0]  # (D,)
        best, positions = scores.topk(min(k, len(rows)))
        return self._hits(rows[positions.numpy()].tolist(), best.tolist())

    def _hits(self, rows: list[int], scores: list[float]) -> list[SearchHit]:
        return [
            SearchHit(self.doc_ids[row], score, rank)
            for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1)
        ]


def _check_settings(nprobe: int, candidates_per_token: int, rerank_depth: int) -> None:
    for name, value in (
        ("nprobe", nprobe),
        ("candidates_per_token", candidates_per_token),
        ("rerank_depth", rerank_depth),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
