"""RAGatouille's ``RAGPretrainedModel`` on this project's model and index: change the import only.

RAGatouille 0.0.9's documented calls run as they are::

    from colbert_lightning import RAGPretrainedModel   # was: from ragatouille import ...

    RAG = RAGPretrainedModel.from_pretrained("path/to/trained/model")   # or a hub name
    index_path = RAG.index(collection=documents, document_ids=ids, document_metadatas=metadatas,
                           index_name="my_index", max_document_length=256, split_documents=True)
    RAG.search("a query", k=5)                  # [{"content", "score", "rank", "document_id",
                                                #   "passage_id", "document_metadata"?}, ...]
    RAG = RAGPretrainedModel.from_index(index_path)
    RAG.add_to_index(new_documents, new_document_ids=new_ids)
    RAG.delete_from_index(["an id"])
    RAG.rerank("a query", documents, k=3)       # [{"content", "score", "rank", "result_index"}]
    RAG.encode(documents); RAG.search_encoded_docs("a query", k=3); RAG.clear_encoded_docs()

``from_pretrained`` reads whatever :meth:`ColBERT.load` reads: a training checkpoint (``.ckpt``),
an exported folder, a colbert-ai / RAGatouille folder or a PyLate folder; a name that is no local
path is fetched from the Hugging Face hub. The index is this project's
(:mod:`colbert_lightning.retrieval.ivf`: fp16 token embeddings, faiss IVF candidates, exact MaxSim
rerank), in ``<index_root>/colbert/indexes/<index_name>`` (``index_root`` default
``.ragatouille``), with the passages, their documents' ids and metadata in ``ragatouille.json``.

Deliberate differences from RAGatouille 0.0.9:

- **Index**: no PLAID compression (``nbits``); token embeddings are stored in fp16 and every
  returned score is exact MaxSim over them. ``use_faiss`` is accepted and changes nothing
  (candidates always come from a faiss IVF); ``bsize`` is the encoder's batch size.
- **Splitting**: :mod:`colbert_lightning.compat.passages`, windows of at most
  ``max_document_length`` word pieces *of the model's tokenizer* (RAGatouille counts OpenAI
  tokens with llama-index), overlapping by ``min(max_document_length // 4, 64)``, cut at sentence
  ends or word boundaries. The index encodes ``max_document_length + 3`` tokens per passage
  ([CLS], marker, [SEP] on top), so no passage is truncated; ``max_document_length`` is lowered
  (with a warning) to what the encoder takes. ``document_splitter_fn`` may still be a
  RAGatouille-style function ``fn(documents, document_ids, chunk_size=...)`` returning
  ``[{"document_id", "content"}, ...]``; ``None`` (or ``split_documents=False``) indexes whole
  documents, truncated to ``max_document_length`` word pieces.
- **add_to_index / delete_from_index** change the index in place and the very next ``search``
  sees the change, no reload (RAGatouille rebuilds or needs a reload). Adding a document id
  that is already in the index is an error (RAGatouille silently skips it); so is deleting an
  unknown id (RAGatouille ignores it). Deleted documents' texts leave ``ragatouille.json``;
  their token embeddings stay on disk until the index is rebuilt.
- **Return shapes**: a list of queries always gives a list of result lists, even for one query
  (RAGatouille returns a flat list then). Ranks start at 1 in every method (RAGatouille's
  ``rerank`` starts at 0); ``zero_index_ranks=True`` starts them at 0.
- **Errors instead of prints**: searching with no index, ``k`` below 1, mismatched ids or
  metadata raise with a message (RAGatouille prints and returns None). ``k`` larger than the
  collection returns the whole collection.
- ``rerank`` and ``encode`` truncate documents to the model's ``doc_maxlen`` (``encode``'s
  ``max_document_length=N`` to ``N`` word pieces); RAGatouille guesses a length from the
  documents.
- ``clear_encoded_docs()`` clears at once and logs a warning unless ``force=True`` (RAGatouille
  waits 10 seconds first).
- ``n_gpu``: 0 runs on the CPU, anything else on one GPU when there is one (more than one is
  noted in the log and one is used), else on the CPU.
- No LangChain wrappers (``as_langchain_retriever``, ``as_langchain_document_compressor``
  raise ``NotImplementedError``).

Arguments RAGatouille accepts but this project cannot honour are accepted and logged once per
process; any other unknown argument is a ``TypeError`` (no ``**kwargs``).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from colbert_lightning.compat.passages import split_documents as split_into_passages
from colbert_lightning.modeling import ColBERT, inference
from colbert_lightning.modeling.checkpoints import write_atomically
from colbert_lightning.retrieval.encode import (
    encode_documents_by_length,
    encode_queries,
    encoder_device,
)
from colbert_lightning.retrieval.exact import rerank
from colbert_lightning.retrieval.ivf import (
    MANIFEST,
    Retriever,
    SearchHit,
    build_index,
    max_document_tokens,
    with_doc_maxlen,
)
from colbert_lightning.scoring import packed_maxsim

log = logging.getLogger(__name__)

PASSAGES = "ragatouille.json"
"""The passages of an index (by row), their documents' ids and the documents' metadata."""
PASSAGES_VERSION = 1
SPECIAL_TOKENS = 3
"""[CLS], the document marker and [SEP]: the tokens a passage is encoded with on top of its own."""
TOKEN_WINDOWS = "token_windows"
"""``document_splitter_fn`` default: :func:`colbert_lightning.compat.passages.split_documents`."""
DEFAULT_INDEX_ROOT = ".ragatouille"
AUTO = "auto"

Splitter = Callable[..., list[dict[str, Any]]]
"""RAGatouille's splitter: ``fn(documents, document_ids, chunk_size=...)`` -> passage dicts."""
Preprocessor = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
"""RAGatouille's preprocessing: passage dicts (``document_id``, ``content``) in and out."""
Overwrite = bool | Literal["reuse", "force_silent_overwrite"]

_noted: set[str] = set()


def _note_once(key: str, message: str, *args: Any) -> None:
    """Log ``message`` once per process for ``key`` (arguments accepted but not honoured)."""
    if key not in _noted:
        _noted.add(key)
        log.warning(message, *args)


@dataclass
class _Passages:
    """What an index holds besides token embeddings: row ``i`` of the index is passage ``i``.

    Attributes:
        max_document_length: the word pieces a passage may hold (the index's chunk size).
        document_ids: the document of each passage.
        contents: each passage's text ("" once its document is deleted).
        metadata: document id -> metadata, for the documents that were given some.
    """

    max_document_length: int
    document_ids: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        value = {
            "version": PASSAGES_VERSION,
            "max_document_length": self.max_document_length,
            "document_ids": self.document_ids,
            "contents": self.contents,
            "metadata": self.metadata,
        }
        write_atomically(folder / PASSAGES, (json.dumps(value) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, folder: Path, rows: int) -> _Passages:
        """The passages of the ``rows`` rows of the index in ``folder``.

        An add interrupted after this file was written and before the index was leaves
        passages beyond ``rows``: they were never indexed and are dropped.
        """
        path = folder / PASSAGES
        if not path.is_file():
            if (folder / "pid_docid_map.json").is_file():
                raise ValueError(
                    f"{folder} is a RAGatouille (colbert-ai PLAID) index; rebuild it with "
                    "RAGPretrainedModel.index (its texts are in collection.json)"
                )
            raise ValueError(
                f"{folder} has no {PASSAGES}: not an index built by RAGPretrainedModel "
                "(search a bare index with colbert_lightning.retrieval.ivf.Retriever)"
            )
        value = json.loads(path.read_text(encoding="utf-8"))
        if value.get("version", 1) > PASSAGES_VERSION:
            raise ValueError(f"{path}: version {value['version']} is newer than this code reads")
        if len(value["contents"]) < rows or len(value["document_ids"]) < rows:
            raise ValueError(f"{path} holds fewer passages than the index has rows ({rows})")
        return cls(
            value["max_document_length"],
            value["document_ids"][:rows],
            value["contents"][:rows],
            value["metadata"],
        )


@dataclass
class _Encoded:
    """Documents encoded in memory by :meth:`RAGPretrainedModel.encode`.

    Attributes:
        texts: the documents.
        metadatas: one per document (None where none was given), or None if none ever was.
        tokens: (N, dim) every document's scored token embeddings, one after another, on CPU.
        lengths: (D,) each document's token count.
    """

    texts: list[str]
    metadatas: list[Any] | None
    tokens: torch.Tensor
    lengths: torch.Tensor


class RAGPretrainedModel:
    """RAGatouille's ``RAGPretrainedModel`` calls on a ColBERT of this project (module docstring).

    Build one with :meth:`from_pretrained` or :meth:`from_index`.

    Args:
        model: the ColBERT (its device is where everything runs).
        model_source: where it was loaded from, recorded in indexes for :meth:`from_index`.
        indexes_folder: where :meth:`index` puts ``<index_name>/``.
        verbose: 0: quiet; 1 or more: progress bars and information in the log.

    Attributes:
        model: the ColBERT.
        index_name: the name of the index searched by default (None before one is built or
            loaded).
        index_path: its folder.
    """

    def __init__(
        self,
        model: ColBERT,
        model_source: str | None,
        indexes_folder: str | os.PathLike,
        verbose: int = 1,
    ) -> None:
        self.model = model
        self.model_source = model_source
        self.indexes_folder = Path(indexes_folder)
        self.verbose = verbose
        self.index_name: str | None = None
        self.index_path: Path | None = None
        self._retriever: Retriever | None = None
        self._passages: _Passages | None = None
        self._encoded: _Encoded | None = None

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        n_gpu: int = -1,
        verbose: int = 1,
        index_root: str | os.PathLike | None = None,
    ) -> RAGPretrainedModel:
        """Load a model: a checkpoint or model folder :meth:`ColBERT.load` reads, or a hub name.

        Args:
            pretrained_model_name_or_path: a local ``.ckpt`` file or folder (this project's
                exports, colbert-ai / RAGatouille, PyLate), or a Hugging Face hub name.
            n_gpu: GPUs to use: -1 (all, or none without a GPU) or more run on one GPU if
                there is one; 0 runs on the CPU.
            verbose: 0: quiet; 1 or more: progress bars.
            index_root: indexes go to ``<index_root>/colbert/indexes/<index_name>``; default
                ``.ragatouille``.

        Raises:
            FileNotFoundError: no such local path, and no such model on the hub (or offline).
        """
        folder = _model_path(pretrained_model_name_or_path)
        device = _device(n_gpu)
        model = ColBERT.load(folder).to(device).eval()
        root = Path(DEFAULT_INDEX_ROOT if index_root is None else index_root)
        return cls(model, str(folder.resolve()), root / "colbert" / "indexes", verbose)

    @classmethod
    def from_index(
        cls, index_path: str | os.PathLike, n_gpu: int = -1, verbose: int = 1
    ) -> RAGPretrainedModel:
        """Load an index built by :meth:`index` and the model it records (its ``model`` path).

        Other indexes are then looked for beside it (``index_name`` arguments).

        Raises:
            ValueError: the folder holds no complete index of this kind.
            FileNotFoundError: the model the index records is gone.
        """
        index_path = Path(index_path)
        retriever = Retriever(index_path)
        retriever.model.to(_device(n_gpu)).eval()
        instance = cls(retriever.model, retriever.manifest["model"], index_path.parent, verbose)
        instance._open(index_path, retriever)
        return instance

    @property
    def retriever(self) -> Retriever:
        """The current index's :class:`~colbert_lightning.retrieval.ivf.Retriever`.

        Its ``nprobe``, ``candidates_per_token`` and ``rerank_depth`` tune :meth:`search`.

        Raises:
            ValueError: no index is built or loaded.
        """
        return self._current(None)[0]

    def _open(self, folder: Path, retriever: Retriever | None = None) -> None:
        """Make the index in ``folder`` the one searched by default."""
        if retriever is None:
            if not (folder / MANIFEST).is_file():
                raise ValueError(f"no index at {folder} (build it with RAGPretrainedModel.index)")
            retriever = Retriever(folder, model=self.model)
        self._passages = _Passages.load(folder, len(retriever.doc_ids))
        self._retriever = retriever
        self.index_name, self.index_path = folder.name, folder

    def _current(self, index_name: str | None) -> tuple[Retriever, _Passages]:
        """The index to work on: ``index_name`` (opened unless current), else the current one."""
        if index_name is not None and index_name != self.index_name:
            self._open(self.indexes_folder / index_name)
        if self._retriever is None or self._passages is None:
            raise ValueError(
                "no index: build one with index(...), load one with "
                "RAGPretrainedModel.from_index(path), or pass index_name"
            )
        return self._retriever, self._passages

    # ---- indexing --------------------------------------------------------------------------

    def index(
        self,
        collection: Sequence[str],
        document_ids: Sequence[str] | None = None,
        document_metadatas: Sequence[Any] | None = None,
        index_name: str | None = None,
        overwrite_index: Overwrite = True,
        max_document_length: int = 256,
        split_documents: bool = True,
        document_splitter_fn: Splitter | Literal["token_windows"] | None = TOKEN_WINDOWS,
        preprocessing_fn: Preprocessor | Sequence[Preprocessor] | None = None,
        bsize: int = 32,
        use_faiss: bool = False,
    ) -> str:
        """Split ``collection`` into passages and build an index of them.

        Args:
            collection: the documents' texts.
            document_ids: unique, non-blank string ids; default: a random UUID each.
            document_metadatas: one JSON-serialisable value (a dict) per document, returned
                with its passages as ``document_metadata``.
            index_name: the index's folder name under the index root; default
                ``<model folder name>_new_index``.
            overwrite_index: True (replace an existing index, with a warning),
                ``"force_silent_overwrite"`` (the same, silently), ``"reuse"`` (keep an
                existing index and index nothing) or False (an existing index is an error).
            max_document_length: the most word pieces of a passage (module docstring).
            split_documents: False indexes whole documents (truncated).
            document_splitter_fn: ``"token_windows"`` (this project's splitter), None (no
                splitting) or a RAGatouille-style splitter.
            preprocessing_fn: function(s) applied to the passage dicts after splitting.
            bsize: documents per encoder call.
            use_faiss: accepted for RAGatouille's scripts; the index always uses faiss.

        Returns:
            The index folder.

        Raises:
            ValueError: bad ids, metadata, lengths or arguments; FileExistsError: the index
                exists and ``overwrite_index`` is False.
        """
        texts = _texts(collection, "collection")
        ids = _document_ids(document_ids, len(texts), "document_ids")
        metadata = _metadata(ids, document_metadatas, "document_metadatas")
        _check_int("bsize", bsize)
        if overwrite_index not in (True, False, "reuse", "force_silent_overwrite"):
            raise ValueError(
                "overwrite_index must be True, False, 'reuse' or 'force_silent_overwrite', "
                f"got {overwrite_index!r}"
            )
        self._note_use_faiss(use_faiss)
        max_document_length = self._passage_length(max_document_length)
        if index_name is None:
            index_name = f"{Path(self.model_source or 'colbert').name}_new_index"
            log.warning("no index_name given: using %r", index_name)
        _check_index_name(index_name)
        folder = self.indexes_folder / index_name
        if (folder / MANIFEST).is_file():
            if overwrite_index == "reuse":
                log.info("index %s exists: reused, nothing indexed", folder)
                self._open(folder)
                return str(folder)
            if overwrite_index is False:
                raise FileExistsError(
                    f"index {folder} exists; pass overwrite_index=True to replace it "
                    "or 'reuse' to keep it"
                )
            if overwrite_index is True:
                log.warning("replacing the index in %s", folder)
        passages = self._split(
            texts, ids, split_documents, document_splitter_fn, preprocessing_fn,
            max_document_length,
        )  # fmt: skip
        if not passages:
            raise ValueError("the documents gave no passage to index")
        # drop what searches the old index first: its files are about to be replaced
        self._retriever = self._passages = None
        self.index_name = self.index_path = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # incomplete until build_index ends
        store = _Passages(
            max_document_length,
            [document_id for document_id, _ in passages],
            [content for _, content in passages],
            metadata,
        )
        store.save(folder)
        build_index(
            self.model,
            [str(row) for row in range(len(passages))],
            store.contents,
            folder,
            batch_size=bsize,
            model_source=self.model_source,
            show_progress=self.verbose > 0,
            doc_maxlen=max_document_length + SPECIAL_TOKENS,
        )
        self._open(folder)
        log.info("indexed %d documents as %d passages in %s", len(texts), len(passages), folder)
        return str(folder)

    def add_to_index(
        self,
        new_collection: Sequence[str],
        new_document_ids: Sequence[str] | None = None,
        new_document_metadatas: Sequence[Any] | None = None,
        index_name: str | None = None,
        split_documents: bool = True,
        document_splitter_fn: Splitter | Literal["token_windows"] | None = TOKEN_WINDOWS,
        preprocessing_fn: Preprocessor | Sequence[Preprocessor] | None = None,
        bsize: int = 32,
        use_faiss: bool = False,
    ) -> None:
        """Add documents to the index (split as the index was); the next search finds them.

        Args:
            new_collection: the new documents' texts.
            new_document_ids: their ids (default: random UUIDs); none may be in the index.
            new_document_metadatas: one value per new document.
            index_name: the index to add to (default: the current one).
            split_documents: see :meth:`index`.
            document_splitter_fn: see :meth:`index`.
            preprocessing_fn: see :meth:`index`.
            bsize: documents per encoder call.
            use_faiss: accepted for RAGatouille's scripts; changes nothing.

        Raises:
            ValueError: no index, bad ids or metadata, or an id already in the index.
        """
        retriever, store = self._current(index_name)
        texts = _texts(new_collection, "new_collection")
        ids = _document_ids(new_document_ids, len(texts), "new_document_ids")
        metadata = _metadata(ids, new_document_metadatas, "new_document_metadatas")
        _check_int("bsize", bsize)
        self._note_use_faiss(use_faiss)
        present = _live_documents(retriever, store)
        taken = [document_id for document_id in ids if document_id in present]
        if taken:
            raise ValueError(
                f"documents already in the index: {taken[:5]}; delete_from_index them first"
            )
        passages = self._split(
            texts, ids, split_documents, document_splitter_fn, preprocessing_fn,
            store.max_document_length,
        )  # fmt: skip
        if not passages:
            return
        first_row = len(retriever.doc_ids)
        updated = _Passages(
            store.max_document_length,
            store.document_ids + [document_id for document_id, _ in passages],
            store.contents + [content for _, content in passages],
            {**store.metadata, **metadata},
        )
        # the passages first: an add interrupted before the index's manifest leaves extra
        # passages, which loading drops; the reverse would leave rows with no text
        updated.save(retriever.folder)
        retriever.add_documents(
            [str(first_row + offset) for offset in range(len(passages))],
            [content for _, content in passages],
            batch_size=bsize,
            show_progress=self.verbose > 0,
        )
        self._passages = updated
        log.info("added %d documents (%d passages)", len(texts), len(passages))

    def delete_from_index(
        self, document_ids: str | Sequence[str], index_name: str | None = None
    ) -> None:
        """Delete documents (all their passages); the next search never returns them.

        Args:
            document_ids: one id or several.
            index_name: the index to delete from (default: the current one).

        Raises:
            KeyError: an id is not in the index (nothing is deleted then).
        """
        retriever, store = self._current(index_name)
        ids = [document_ids] if isinstance(document_ids, str) else list(document_ids)
        present = _live_documents(retriever, store)
        unknown = [document_id for document_id in ids if document_id not in present]
        if unknown:
            raise KeyError(f"documents not in the index: {unknown[:5]}")
        rows = [row for document_id in dict.fromkeys(ids) for row in present[document_id]]
        # the index first: its tombstones are what makes a deletion happen
        retriever.delete_documents([str(row) for row in rows])
        gone = set(ids)
        contents = list(store.contents)
        for row in rows:
            contents[row] = ""
        metadata = {key: value for key, value in store.metadata.items() if key not in gone}
        updated = _Passages(store.max_document_length, store.document_ids, contents, metadata)
        updated.save(retriever.folder)
        self._passages = updated
        log.info("deleted %d documents (%d passages)", len(gone), len(rows))

    # ---- searching -------------------------------------------------------------------------

    def search(
        self,
        query: str | Sequence[str],
        index_name: str | None = None,
        k: int = 10,
        force_fast: bool = False,
        zero_index_ranks: bool = False,
        doc_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Search the index: the ``k`` best passages of each query.

        Args:
            query: one query, or a list of them.
            index_name: the index to search (default: the current one).
            k: results per query. When ``k`` reaches the number of passages, every passage
                is scored exactly (no IVF) and all are returned.
            force_fast: search a quarter of the IVF lists and rerank a quarter as many
                candidates (faster, less exact).
            zero_index_ranks: ranks start at 0 instead of 1.
            doc_ids: search only the passages of these documents (exact MaxSim, no IVF).

        Returns:
            For a string, its results: dicts with ``content``, ``score``, ``rank``,
            ``document_id``, ``passage_id`` and, for a document given metadata,
            ``document_metadata``; for a list, one such list per query. Several passages of a
            document may be returned.

        Raises:
            ValueError: no index, ``k`` below 1, or ``doc_ids`` naming unknown documents.
        """
        retriever, store = self._current(index_name)
        queries = _queries(query)
        _check_int("k", k)
        if doc_ids is not None:
            present = _live_documents(retriever, store)
            wanted = [doc_ids] if isinstance(doc_ids, str) else list(doc_ids)
            unknown = [document_id for document_id in wanted if document_id not in present]
            if unknown:
                raise ValueError(f"doc_ids: documents not in the index: {unknown[:5]}")
            rows = [str(row) for document_id in wanted for row in present[document_id]]
            hits = retriever.exact_search_batch(queries, k=k, doc_ids=rows)
        elif k >= len(retriever):  # the whole collection: brute force is exact and no slower
            hits = retriever.exact_search_batch(queries, k=k)
        else:
            nprobe = retriever.nprobe // 4 if force_fast else retriever.nprobe
            depth = retriever.rerank_depth // 4 if force_fast else retriever.rerank_depth
            hits = retriever.search_batch(
                queries,
                k=k,
                show_progress=self.verbose > 0 and len(queries) > retriever.batch_size,
                nprobe=max(1, nprobe),
                rerank_depth=max(k, depth),  # k results whenever there are k passages
            )
        results = [
            [self._result(hit, store, zero_index_ranks) for hit in query_hits]
            for query_hits in hits
        ]
        return results[0] if isinstance(query, str) else results

    @staticmethod
    def _result(hit: SearchHit, store: _Passages, zero_index_ranks: bool) -> dict[str, Any]:
        row = int(hit.doc_id)
        document_id = store.document_ids[row]
        result = {
            "content": store.contents[row],
            "score": hit.score,
            "rank": hit.rank - 1 if zero_index_ranks else hit.rank,
            "document_id": document_id,
            "passage_id": row,
        }
        if document_id in store.metadata:
            result["document_metadata"] = store.metadata[document_id]
        return result

    def rerank(
        self,
        query: str | Sequence[str],
        documents: Sequence[str],
        k: int = 10,
        zero_index_ranks: bool = False,
        bsize: int | Literal["auto"] = AUTO,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Order ``documents`` by exact MaxSim with the query; no index needed.

        Args:
            query: one query, or a list of them (each ranks all the documents).
            documents: the texts to order (truncated to the model's ``doc_maxlen``).
            k: results per query (all documents when there are fewer).
            zero_index_ranks: ranks start at 0 instead of 1.
            bsize: texts per encoder call; ``"auto"`` is 32.

        Returns:
            For a string, dicts with ``content``, ``score``, ``rank`` and ``result_index`` (the
            position in ``documents``), best first; for a list, one such list per query.
        """
        queries = _queries(query)
        texts = _texts(documents, "documents")
        _check_int("k", k)
        batch_size = _batch_size(bsize)
        positions = [str(position) for position in range(len(texts))]
        query_keys = [str(number) for number in range(len(queries))]
        rankings = rerank(
            self.model,
            dict(zip(query_keys, queries, strict=True)),
            {key: positions for key in query_keys},
            dict(zip(positions, texts, strict=True)),
            batch_size=batch_size,
            show_progress=self.verbose > 0 and len(texts) > batch_size,
        )
        offset = 0 if zero_index_ranks else 1
        results = [
            [
                {
                    "content": texts[int(position)],
                    "score": score,
                    "rank": rank,
                    "result_index": int(position),
                }
                for rank, (position, score) in enumerate(rankings[key][:k], start=offset)
            ]
            for key in query_keys
        ]
        return results[0] if isinstance(query, str) else results

    # ---- documents encoded in memory -------------------------------------------------------

    def encode(
        self,
        documents: Sequence[str],
        bsize: int | Literal["auto"] = AUTO,
        document_metadatas: Sequence[Any] | None = None,
        verbose: bool = True,
        max_document_length: int | Literal["auto"] = AUTO,
    ) -> None:
        """Encode documents into memory (after those encoded before) for searches, no index.

        :meth:`search_encoded_docs` searches them.

        Args:
            documents: the texts.
            bsize: texts per encoder call; ``"auto"`` is 32.
            document_metadatas: one value per document, returned as ``document_metadata``.
            verbose: a progress bar.
            max_document_length: ``"auto"``: truncate to the model's ``doc_maxlen``; a number:
                to that many word pieces.
        """
        texts = _texts(documents, "documents")
        if document_metadatas is not None and len(document_metadatas) != len(texts):
            raise ValueError(
                f"document_metadatas has {len(document_metadatas)} entries for "
                f"{len(texts)} documents"
            )
        batch_size = _batch_size(bsize)
        if not texts:
            return
        encoder = self.model
        if max_document_length != AUTO:
            length = self._passage_length(max_document_length)
            encoder = with_doc_maxlen(self.model, length + SPECIAL_TOKENS)
        tokens: list[torch.Tensor] = [torch.zeros(0)] * len(texts)
        with inference(encoder):
            for rows, encoded in encode_documents_by_length(
                encoder, texts, batch_size, encoder_device(encoder), verbose, "encoding documents"
            ):
                for position, row in enumerate(rows):
                    scored = encoded.embeddings[position][encoded.mask[position]]  # (n, dim)
                    tokens[row] = scored.float().cpu()
        lengths = torch.tensor([len(embeddings) for embeddings in tokens], dtype=torch.long)
        metadatas = None if document_metadatas is None else list(document_metadatas)
        previous = self._encoded
        if previous is None:
            self._encoded = _Encoded(texts, metadatas, torch.cat(tokens), lengths)
            return
        if previous.metadatas is not None or metadatas is not None:
            earlier = previous.metadatas or [None] * len(previous.texts)
            metadatas = earlier + (metadatas or [None] * len(texts))
        self._encoded = _Encoded(
            previous.texts + texts,
            metadatas,
            torch.cat([previous.tokens, *tokens]),
            torch.cat([previous.lengths, lengths]),
        )

    def search_encoded_docs(
        self, query: str | Sequence[str], k: int = 10, bsize: int = 32
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Search the documents :meth:`encode` holds: exact MaxSim over all of them.

        Returns:
            As :meth:`rerank`, plus ``document_metadata`` when metadata was given to
            :meth:`encode` (None for documents encoded without).

        Raises:
            ValueError: nothing is encoded.
        """
        if self._encoded is None:
            raise ValueError("no documents encoded in memory: call encode(documents) first")
        queries = _queries(query)
        _check_int("k", k)
        batch_size = _batch_size(bsize)
        encoded = self._encoded
        count = len(encoded.texts)
        owner = torch.repeat_interleave(torch.arange(count), encoded.lengths)
        results: list[list[dict[str, Any]]] = []
        for start in range(0, len(queries), batch_size):
            with inference(self.model):
                embeddings, mask = encode_queries(
                    self.model, queries[start : start + batch_size], encoder_device(self.model)
                )
            for row in range(len(embeddings)):  # one query at a time: (Lq, tokens) at most
                scores = packed_maxsim(
                    embeddings[row : row + 1].float().cpu(),
                    mask[row : row + 1].cpu(),
                    encoded.tokens,
                    owner,
                    count,
                    self.model.config.similarity,
                )[0]  # (D,)
                best, positions = scores.topk(min(k, count))
                query_results = []
                for rank, (score, position) in enumerate(
                    zip(best.tolist(), positions.tolist(), strict=True), start=1
                ):
                    result = {
                        "content": encoded.texts[position],
                        "score": score,
                        "rank": rank,
                        "result_index": position,
                    }
                    if encoded.metadatas is not None:
                        result["document_metadata"] = encoded.metadatas[position]
                    query_results.append(result)
                results.append(query_results)
        return results[0] if isinstance(query, str) else results

    def clear_encoded_docs(self, force: bool = False) -> None:
        """Forget the documents :meth:`encode` holds, at once.

        RAGatouille waits 10 seconds unless ``force``; here nothing waits, and without
        ``force`` a warning says how many documents were cleared.
        """
        count = 0 if self._encoded is None else len(self._encoded.texts)
        self._encoded = None
        if not force:
            log.warning("cleared %d documents encoded in memory", count)

    # ---- not supported ---------------------------------------------------------------------

    def as_langchain_retriever(self, **kwargs: Any) -> None:
        """Not supported: colbert-lightning has no LangChain integration."""
        raise NotImplementedError(
            "as_langchain_retriever: colbert-lightning has no LangChain integration; "
            "wrap RAGPretrainedModel.search in a langchain BaseRetriever yourself"
        )

    def as_langchain_document_compressor(self, **kwargs: Any) -> None:
        """Not supported: colbert-lightning has no LangChain integration."""
        raise NotImplementedError(
            "as_langchain_document_compressor: colbert-lightning has no LangChain "
            "integration; wrap RAGPretrainedModel.rerank yourself"
        )

    # ---- helpers ---------------------------------------------------------------------------

    def _passage_length(self, max_document_length: int) -> int:
        """``max_document_length`` lowered to what the encoder takes (special tokens on top)."""
        _check_int("max_document_length", max_document_length)
        limit = max_document_tokens(self.model)
        if limit is not None and max_document_length + SPECIAL_TOKENS > limit:
            lowered = limit - SPECIAL_TOKENS
            _note_once(
                f"max_document_length={max_document_length}",
                "max_document_length=%d: the encoder takes %d tokens, so passages hold at "
                "most %d word pieces",
                max_document_length,
                limit,
                lowered,
            )
            return lowered
        return max_document_length

    def _split(
        self,
        texts: list[str],
        ids: list[str],
        split_documents: bool,
        splitter: Splitter | str | None,
        preprocessing_fn: Preprocessor | Sequence[Preprocessor] | None,
        max_document_length: int,
    ) -> list[tuple[str, str]]:
        """``(document id, passage text)`` of every passage, in document order."""
        if not split_documents or splitter is None:
            items = [
                {"document_id": i, "content": text} for i, text in zip(ids, texts, strict=True)
            ]
        elif splitter == TOKEN_WINDOWS:
            items = [
                {"document_id": ids[passage.document], "content": passage.text}
                for passage in split_into_passages(
                    self.model.tokenizer.tokenizer, texts, max_document_length
                )
            ]
        elif callable(splitter):
            items = _checked_passages(
                splitter(texts, ids, chunk_size=max_document_length), ids, "document_splitter_fn"
            )
        else:
            raise TypeError(
                f"document_splitter_fn must be {TOKEN_WINDOWS!r}, None or a function, "
                f"got {splitter!r}"
            )
        if preprocessing_fn is not None:
            functions = [preprocessing_fn] if callable(preprocessing_fn) else preprocessing_fn
            for function in functions:
                if not callable(function):
                    raise TypeError(f"preprocessing_fn: {function!r} is not a function")
                items = _checked_passages(function(items), ids, "preprocessing_fn")
        return [(item["document_id"], item["content"]) for item in items]

    @staticmethod
    def _note_use_faiss(use_faiss: bool) -> None:
        if use_faiss:
            _note_once(
                "use_faiss",
                "use_faiss=True: this index always takes its candidates from a faiss IVF; "
                "the argument changes nothing",
            )


# ---- argument checks ----------------------------------------------------------------------


def _model_path(name_or_path: str | os.PathLike) -> Path:
    """A local model path, or the folder a hub name downloads to."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    # a hub name is "name" or "owner/name"; anything else was meant as a local path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such checkpoint or model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"{name}: no such local path, and the Hugging Face hub gave no model ({error})"
        ) from error


def _device(n_gpu: int) -> torch.device:
    """RAGatouille's ``n_gpu`` as a device: 0 is the CPU, -1 or more one GPU if there is one."""
    if not isinstance(n_gpu, int) or isinstance(n_gpu, bool) or n_gpu < -1:
        raise ValueError(f"n_gpu must be -1 (all), 0 (CPU) or a number of GPUs, got {n_gpu!r}")
    if n_gpu == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if n_gpu > 0:
            log.warning("n_gpu=%d but no GPU is visible: running on the CPU", n_gpu)
        return torch.device("cpu")
    if n_gpu > 1 or (n_gpu == -1 and torch.cuda.device_count() > 1):
        _note_once("n_gpu", "n_gpu=%d: encoding and search use one GPU", n_gpu)
    return torch.device("cuda")


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _batch_size(bsize: int | str) -> int:
    if bsize == AUTO:
        return 32
    _check_int("bsize", bsize)
    return int(bsize)


def _check_index_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or name in (".", ".."):
        raise ValueError(f"index_name must be a folder name, got {name!r}")
    if "/" in name or os.sep in name:
        raise ValueError(f"index_name must be one folder name, without '/', got {name!r}")


def _texts(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings, not one string")
    texts = list(values)
    wrong = [position for position, text in enumerate(texts) if not isinstance(text, str)]
    if wrong:
        raise TypeError(f"{name}[{wrong[0]}] is a {type(texts[wrong[0]]).__name__}, not a string")
    return texts


def _queries(query: str | Sequence[str]) -> list[str]:
    if isinstance(query, str):
        return [query]
    return _texts(query, "query")


def _document_ids(ids: Sequence[str] | None, count: int, name: str) -> list[str]:
    """The documents' ids: checked as RAGatouille checks them, or a random UUID each."""
    if ids is None:
        return [str(uuid.uuid4()) for _ in range(count)]
    if isinstance(ids, str):
        raise TypeError(f"{name} must be a list of ids, not one string")
    ids = list(ids)
    if len(ids) != count:
        raise ValueError(f"{name} has {len(ids)} ids for {count} documents")
    wrong = [document_id for document_id in ids if not isinstance(document_id, str)]
    if wrong:
        raise TypeError(f"{name} must be strings, got {type(wrong[0]).__name__} {wrong[0]!r}")
    if any(not document_id.strip() for document_id in ids):
        raise ValueError(f"{name} must not contain empty strings")
    if len(set(ids)) != len(ids):
        repeated = sorted({document_id for document_id in ids if ids.count(document_id) > 1})
        raise ValueError(f"{name} must be unique; repeated: {repeated[:5]}")
    return ids


def _metadata(ids: list[str], metadatas: Sequence[Any] | None, name: str) -> dict[str, Any]:
    """Document id -> metadata, checked to survive the trip through JSON."""
    if metadatas is None:
        return {}
    if isinstance(metadatas, (str, Mapping)):
        raise TypeError(f"{name} must be a list with one entry per document")
    metadatas = list(metadatas)
    if len(metadatas) != len(ids):
        raise ValueError(f"{name} has {len(metadatas)} entries for {len(ids)} documents")
    for position, value in enumerate(metadatas):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}[{position}] cannot be stored as JSON: {error}") from None
    return dict(zip(ids, metadatas, strict=True))


def _checked_passages(items: Any, ids: list[str], name: str) -> list[dict[str, Any]]:
    """A splitter's or preprocessor's output: dicts with a known ``document_id`` and text."""
    known = set(ids)
    if not isinstance(items, list):
        raise TypeError(f"{name} must return a list of dicts, got {type(items).__name__}")
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("content"), str):
            raise TypeError(
                f"{name} returned {item!r} at {position}: expected a dict with a 'content' "
                "string and a 'document_id'"
            )
        if item.get("document_id") not in known:
            raise ValueError(
                f"{name} returned a passage of an unknown document {item.get('document_id')!r}"
            )
    return items


def _live_documents(retriever: Retriever, store: _Passages) -> dict[str, list[int]]:
    """Document id -> its passages' rows, for documents with a passage not deleted."""
    rows: dict[str, list[int]] = {}
    live = np.flatnonzero(~retriever.deleted)
    for row in live.tolist():
        rows.setdefault(store.document_ids[row], []).append(row)
    return rows
