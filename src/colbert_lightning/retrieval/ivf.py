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

Scoring given documents against a query needs no index: see
:func:`colbert_lightning.retrieval.exact.rerank_texts`.

Folder written by :func:`build_index`::

    manifest.json    model source and fingerprint, settings, counts
    embeddings.f16   (tokens, dim) float16, raw
    doc_starts.npy   (documents,) int64: first row of each document's tokens
    doc_lengths.npy  (documents,) int64: its token count
    token_docs.npy   (tokens,) int32: the document row of each token
    doc_ids.json     document ids, by row
    ivf.faiss        the faiss index; its ids are rows of embeddings.f16
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from colbert_lightning.modeling import ColBERT, inference
from colbert_lightning.retrieval.encode import (
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
IVF = "ivf.faiss"
CODECS = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}
"""IVF list encodings: exact float32 vectors, float16, or 8-bit scalar quantisation."""
VERSION = 1


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

    Returns:
        The manifest written to ``manifest.json``.
    """
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")
    if not texts:
        raise ValueError("cannot index an empty collection")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("document ids must be unique")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an index is complete only with its manifest
    device = encoder_device(model)
    dim = model.config.dim

    starts = np.zeros(len(texts), dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    token_docs: list[np.ndarray] = []
    written = 0
    with open(folder / EMBEDDINGS, "wb") as output, inference(model):
        for rows, encoded in encode_documents_by_length(
            model, texts, batch_size, device, show_progress, "encoding documents"
        ):
            for position, row in enumerate(rows):
                scored = encoded.embeddings[position][encoded.mask[position]]  # (n, dim)
                output.write(scored.to(torch.float16).cpu().numpy().tobytes())
                starts[row], lengths[row] = written, scored.shape[0]
                token_docs.append(np.full(scored.shape[0], row, dtype=np.int32))
                written += scored.shape[0]
    np.save(folder / DOC_STARTS, starts)
    np.save(folder / DOC_LENGTHS, lengths)
    np.save(folder / TOKEN_DOCS, np.concatenate(token_docs))
    (folder / DOC_IDS).write_text(json.dumps(doc_ids) + "\n", encoding="utf-8")

    embeddings = np.memmap(folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(written, dim))
    nlist = nlist or max(1, min(default_nlist(written), written // 39))
    index = _train_ivf(embeddings, nlist, codec, train_sample, seed, show_progress)
    chunk = 65_536
    for start in tqdm(
        range(0, written, chunk), desc="indexing tokens", unit="chunk", disable=not show_progress
    ):
        index.add(np.ascontiguousarray(embeddings[start : start + chunk], dtype=np.float32))
    faiss.write_index(index, str(folder / IVF))

    manifest = {
        "version": VERSION,
        "model": model_source,
        "model_fingerprint": model_fingerprint(model),
        "model_config": model.config.to_dict(),
        "documents": len(texts),
        "tokens": written,
        "dim": dim,
        "nlist": nlist,
        "codec": codec,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


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


class Retriever:
    """Search an index built by :func:`build_index`: IVF candidates, then exact MaxSim.

    Args:
        folder: the index folder.
        model: the ColBERT that built the index; default: load the checkpoint it records.
        nprobe: IVF lists searched per query token.
        candidates_per_token: document tokens fetched per query token.
        rerank_depth: candidate documents scored exactly per query.
        batch_size: queries encoded (and searched) together.

    Raises:
        ValueError: the index is incomplete, or ``model`` is not the model that built it.
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
        if model is None:
            if not self.manifest.get("model"):
                raise ValueError(f"{folder}: the index records no model; pass one")
            model = ColBERT.load(self.manifest["model"]).eval()
        if model_fingerprint(model) != self.manifest["model_fingerprint"]:
            raise ValueError(f"{folder} was built by another model ({self.manifest['model']})")
        for name, value in (
            ("nprobe", nprobe),
            ("candidates_per_token", candidates_per_token),
            ("rerank_depth", rerank_depth),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.model = model
        self.nprobe = nprobe
        self.candidates_per_token = candidates_per_token
        self.rerank_depth = rerank_depth
        self.batch_size = batch_size
        tokens, dim = self.manifest["tokens"], self.manifest["dim"]
        self.embeddings = np.memmap(
            folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(tokens, dim)
        )
        self.doc_starts = np.load(folder / DOC_STARTS)
        self.doc_lengths = np.load(folder / DOC_LENGTHS)
        self.token_docs = np.load(folder / TOKEN_DOCS, mmap_mode="r")
        self.doc_ids: list[str] = json.loads((folder / DOC_IDS).read_text(encoding="utf-8"))
        self.index = faiss.read_index(str(folder / IVF))
        faiss.extract_index_ivf(self.index).nprobe = nprobe

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """The ``k`` best documents for one query, best first."""
        return self.search_batch([query], k)[0]

    @torch.inference_mode()
    def search_batch(
        self, queries: list[str], k: int = 10, show_progress: bool = False
    ) -> list[list[SearchHit]]:
        """:meth:`search` for many queries, encoded and searched ``batch_size`` at a time."""
        check_k(k)
        faiss.extract_index_ivf(self.index).nprobe = self.nprobe
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
            similarities, token_ids = self.index.search(scored.numpy(), self.candidates_per_token)
            similarities = np.where(token_ids >= 0, similarities, -np.inf)
            owner = np.repeat(np.arange(len(embeddings)), mask.sum(dim=1).numpy())
            for row in range(len(embeddings)):
                mine = owner == row
                candidates = self._approximate_top(token_ids[mine], similarities[mine])
                results.append(self._exact_top(embeddings[row], mask[row], candidates, k))
        return results

    @torch.inference_mode()
    def exact_search_batch(
        self, queries: list[str], k: int = 10, documents_per_pass: int = 64
    ) -> list[list[SearchHit]]:
        """Brute force over every stored document: exact MaxSim, no IVF (the reference)."""
        check_k(k)
        order = np.arange(len(self.doc_ids))
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

    # ---- steps ----------------------------------------------------------------------------

    def _encode(self, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # the model may have been handed over in train mode: search never encodes with dropout
        with inference(self.model):
            embeddings, mask = encode_queries(self.model, list(queries), encoder_device(self.model))
        return embeddings.float().cpu(), mask.bool().cpu()  # (Qb, Lq, dim), (Qb, Lq)

    def _approximate_top(self, token_ids: np.ndarray, similarities: np.ndarray) -> np.ndarray:
        """The ``rerank_depth`` documents with the best approximate MaxSim, from fetched tokens.

        Args:
            token_ids: (Lq, C) fetched token rows of one query (-1: none).
            similarities: (Lq, C) their similarity with the query token (-inf: none).

        Returns:
            Document rows, best first.
        """
        valid = token_ids >= 0
        query_tokens = np.broadcast_to(np.arange(len(token_ids))[:, None], token_ids.shape)[valid]
        documents, slots = np.unique(self.token_docs[token_ids[valid]], return_inverse=True)
        best = np.full((len(token_ids), len(documents)), -np.inf, dtype=np.float32)
        np.maximum.at(best, (query_tokens, slots), similarities[valid])
        approximate = np.where(np.isfinite(best), best, 0.0).sum(axis=0)
        keep = min(self.rerank_depth, len(documents))
        top = np.argpartition(-approximate, keep - 1)[:keep] if keep else np.zeros(0, dtype=int)
        return documents[top[np.argsort(-approximate[top], kind="stable")]]

    def _stored(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored tokens of documents ``rows``, packed (no padding).

        Returns:
            (N, dim) float32 embeddings and (N,) the position in ``rows`` each token belongs to.
        """
        lengths = self.doc_lengths[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        # token row = the document's start + the token's offset within the document
        offsets = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        tokens = np.asarray(self.embeddings[self.doc_starts[rows][owner] + offsets], np.float32)
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
