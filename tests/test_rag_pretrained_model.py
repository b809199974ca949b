"""RAGatouille's ``RAGPretrainedModel`` calls on a tiny random model: shapes, and parity with
brute-force MaxSim.

The reference (:func:`_brute_force`) encodes queries and passages with the model and computes
``sum over scored query tokens of max over scored passage tokens of q_i . d_j`` one passage at a
time, in fp32: no index, no packing, no scoring helper of the package. The index stores fp16
embeddings, so scores agree to ~1e-3.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import colbert_lightning
from colbert_lightning.compat import pretrained_model as module
from colbert_lightning.compat.passages import default_overlap, split_documents
from colbert_lightning.compat.pretrained_model import RAGPretrainedModel
from colbert_lightning.data.beir import find_beir_file, load_corpus
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.formats import write_folder
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.ivf import with_doc_maxlen
from tests.conftest import tiny_config

DOCUMENTS = 16
LENGTH = 40
"""max_document_length of the tests: Cranfield documents give 2 to 8 passages each."""
RESULT_KEYS = {"content", "score", "rank", "document_id", "passage_id"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config()).eval()
    return write_folder(model, tmp_path_factory.mktemp("model") / "tiny", "hf")


@pytest.fixture(scope="module")
def corpus():
    corpus = load_corpus(find_beir_file(resource_path("cranfield"), "corpus"))
    return {"ids": [f"doc-{i}" for i in range(DOCUMENTS)], "texts": corpus.texts[:DOCUMENTS]}


@pytest.fixture
def rag(model_folder, tmp_path):
    return RAGPretrainedModel.from_pretrained(model_folder, verbose=0, index_root=tmp_path)


@pytest.fixture
def indexed(rag, corpus):
    """``rag`` with the corpus indexed, with ids and metadata (every third document has none)."""
    metadatas = [None if i % 3 == 2 else {"position": i} for i in range(DOCUMENTS)]
    path = rag.index(
        corpus["texts"],
        document_ids=corpus["ids"],
        document_metadatas=metadatas,
        index_name="cranfield",
        max_document_length=LENGTH,
    )
    return rag, path, metadatas


def _brute_force(model: ColBERT, queries: list[str], passages: list[str]) -> list[list[float]]:
    """MaxSim of every query with every passage, one passage at a time, fp32."""
    device = model.linear.weight.device  # the GPU where from_pretrained found one
    with torch.inference_mode():
        encoded = model.encode_queries(model.tokenizer.queries(queries).to(device))
        scores = []
        for embeddings, mask in zip(encoded.embeddings, encoded.mask, strict=True):
            query_tokens = embeddings[mask]  # (scored query tokens, dim)
            row = []
            for passage in passages:
                document = model.encode_documents(model.tokenizer.documents([passage]).to(device))
                tokens = document.embeddings[0][document.mask[0]]  # (scored tokens, dim)
                row.append(float((query_tokens @ tokens.T).max(dim=1).values.sum()))
            scores.append(row)
    return scores


def _passages(rag: RAGPretrainedModel) -> list[tuple[str, str]]:
    """(document id, text) of every passage of the current index, by passage id."""
    store = json.loads((rag.index_path / module.PASSAGES).read_text())
    return list(zip(store["document_ids"], store["contents"], strict=True))


def _check_results(results, k: int) -> None:
    assert isinstance(results, list) and len(results) == k
    assert [result["rank"] for result in results] == list(range(1, k + 1))
    scores = [result["score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(score, float) for score in scores)


# ---- import and loading -------------------------------------------------------------------------


def test_the_package_exports_it_lazily():
    assert colbert_lightning.RAGPretrainedModel is RAGPretrainedModel
    with pytest.raises(AttributeError, match="no attribute 'RAGPretrainedModels'"):
        colbert_lightning.RAGPretrainedModels  # noqa: B018


def test_from_pretrained_reads_the_folder_and_refuses_what_is_not_there(model_folder, tmp_path):
    rag = RAGPretrainedModel.from_pretrained(model_folder, n_gpu=0, verbose=0)
    reference = ColBERT.load(model_folder)
    assert torch.equal(rag.model.linear.weight, reference.linear.weight)
    assert rag.indexes_folder == module.Path(".ragatouille/colbert/indexes")
    with pytest.raises(FileNotFoundError, match="no such checkpoint or model folder"):
        RAGPretrainedModel.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no such checkpoint or model folder"):
        RAGPretrainedModel.from_pretrained("./not/a/model")
    with pytest.raises(ValueError, match="n_gpu must be"):
        RAGPretrainedModel.from_pretrained(model_folder, n_gpu=-2)
    with pytest.raises(ValueError, match="no index"):
        rag.search("a query")


# ---- passages -----------------------------------------------------------------------------------


def test_passages_are_short_enough_cover_their_document_and_keep_its_order(model_folder, corpus):
    tokenizer = ColBERT.load(model_folder).tokenizer.tokenizer
    long_word = "x" * 300 + " flow " + "ab" * 200  # no word boundary for hundreds of characters
    documents = [*corpus["texts"], long_word, "", "short one."]
    passages = split_documents(tokenizer, documents, max_tokens=24)
    assert sorted({passage.document for passage in passages}) == list(range(len(documents)))

    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for position, text in enumerate(documents):
        mine = [passage for passage in passages if passage.document == position]
        assert all(passage.text == text[passage.start : passage.end] for passage in mine)
        assert all(count(passage.text) <= 24 for passage in mine)
        if count(text) <= 24:
            assert [passage.text for passage in mine] == [text]  # unchanged
            continue
        assert len(mine) > 1
        assert [passage.start for passage in mine] == sorted(passage.start for passage in mine)
        # every word piece of the document lies in a passage
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for start, end in offsets["offset_mapping"]:
            assert any(p.start <= start and end <= p.end for p in mine), text[start:end]
        # consecutive passages overlap (default: a quarter of the window)
        assert all(a.end > b.start for a, b in zip(mine, mine[1:], strict=False))
    assert default_overlap(24) == 6
    with pytest.raises(ValueError, match="at least 1"):
        split_documents(tokenizer, documents, max_tokens=0)
    with pytest.raises(ValueError, match="overlap must be"):
        split_documents(tokenizer, documents, max_tokens=8, overlap=8)


def test_index_splits_documents_and_passages_map_back_to_them(indexed, corpus):
    rag, path, metadatas = indexed
    passages = _passages(rag)
    assert rag.retriever.manifest["doc_maxlen"] == LENGTH + 3  # [CLS], marker, [SEP] on top
    assert len(passages) > DOCUMENTS
    tokenizer = rag.model.tokenizer.tokenizer
    for document_id, text in passages:
        assert text in corpus["texts"][corpus["ids"].index(document_id)]
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= LENGTH
    assert [document_id for document_id, _ in passages] == sorted(
        (document_id for document_id, _ in passages), key=corpus["ids"].index
    )
    # without splitting: one passage per document, truncated at encoding
    whole = rag.index(corpus["texts"], index_name="whole", split_documents=False)
    assert [text for _, text in _passages(rag)] == corpus["texts"]
    assert whole.endswith("whole") and rag.index_name == "whole"
    # generated ids are UUIDs, one per document
    assert len({document_id for document_id, _ in _passages(rag)}) == DOCUMENTS
    assert all(len(document_id) == 36 for document_id, _ in _passages(rag))


# ---- index and search ---------------------------------------------------------------------------


def test_search_returns_the_exact_passage_and_brute_force_scores(indexed, corpus):
    rag, path, metadatas = indexed
    passages = _passages(rag)
    texts = [text for _, text in passages]
    picked = [0, len(passages) // 2, len(passages) - 1]
    queries = [texts[row] for row in picked]
    reference = _brute_force(rag.model, queries, texts)
    # the precondition: brute force ranks each query's own passage first
    assert [int(np.argmax(scores)) for scores in reference] == picked

    one = rag.search(queries[0], k=5)
    _check_results(one, 5)
    many = rag.search(queries, k=5)
    assert isinstance(many, list) and len(many) == 3
    assert [results[0]["passage_id"] for results in many] == picked
    assert many[0] == one
    for results, scores in zip(many, reference, strict=True):
        _check_results(results, 5)
        for result in results:
            row = result["passage_id"]
            document_id, text = passages[row]
            position = corpus["ids"].index(document_id)
            assert result["content"] == text and result["document_id"] == document_id
            assert result["score"] == pytest.approx(scores[row], abs=1e-2)
            if metadatas[position] is None:
                assert set(result) == RESULT_KEYS | {"document_metadata"}
                assert result["document_metadata"] is None
            else:
                assert result["document_metadata"] == metadatas[position]
    # the whole collection: exact, in brute-force order
    everything = rag.search(queries[1], k=10_000)
    assert len(everything) == len(passages)
    assert [result["score"] for result in everything] == pytest.approx(
        sorted(reference[1], reverse=True), abs=1e-2
    )
    zero = rag.search(queries[1], k=3, zero_index_ranks=True, force_fast=True)
    assert [result["rank"] for result in zero] == [0, 1, 2]
    assert rag.search([], k=3) == []
    assert len(rag.search([queries[0]], k=2)) == 1  # a list of one query: a list of one list
    # only the passages of given documents
    restricted = rag.search(queries[0], k=100, doc_ids=[corpus["ids"][4], corpus["ids"][5]])
    assert {result["document_id"] for result in restricted} == set(corpus["ids"][4:6])
    assert len(restricted) == sum(1 for d, _ in passages if d in corpus["ids"][4:6])


def test_from_index_restores_passages_ids_and_metadata(indexed, corpus):
    rag, path, metadatas = indexed
    queries = [text for _, text in _passages(rag)[:4]]
    loaded = RAGPretrainedModel.from_index(path, n_gpu=0, verbose=0)
    assert loaded.index_name == "cranfield" and str(loaded.index_path) == path
    assert loaded.model_source == rag.model_source
    assert loaded.search(queries, k=6) == rag.search(queries, k=6)
    assert loaded.search(queries[0], k=10_000) == rag.search(queries[0], k=10_000)
    # reuse keeps it: nothing indexed again
    before = (rag.index_path / "manifest.json").stat().st_mtime_ns
    assert rag.index(["other"], index_name="cranfield", overwrite_index="reuse") == path
    assert (rag.index_path / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="overwrite_index=True"):
        rag.index(["other"], index_name="cranfield", overwrite_index=False)
    with pytest.raises(ValueError, match="no index at"):
        rag.search("lift", index_name="no-such-index")
    with pytest.raises(ValueError, match="not an index built by RAGPretrainedModel"):
        RAGPretrainedModel.from_index(_bare_index(rag, path))


def _bare_index(rag: RAGPretrainedModel, path: str):
    """A copy of the index without the passages file: what ``colbert_lightning.index`` writes."""
    import shutil

    bare = module.Path(path).parent / "bare"
    shutil.copytree(path, bare)
    (bare / module.PASSAGES).unlink()
    return bare


def test_added_documents_are_found_at_once_as_in_an_index_built_over_all(
    rag, corpus, model_folder, tmp_path
):
    first, rest = slice(0, 12), slice(12, DOCUMENTS)
    rag.index(
        corpus["texts"][first],
        document_ids=corpus["ids"][first],
        index_name="growing",
        max_document_length=LENGTH,
    )
    rag.add_to_index(
        corpus["texts"][rest],
        new_document_ids=corpus["ids"][rest],
        new_document_metadatas=[{"added": i} for i in range(4)],
    )
    fresh = RAGPretrainedModel.from_pretrained(model_folder, verbose=0, index_root=tmp_path)
    fresh.index(
        corpus["texts"],
        document_ids=corpus["ids"],
        document_metadatas=[None] * 12 + [{"added": i} for i in range(4)],
        index_name="fresh",
        max_document_length=LENGTH,
    )
    assert _passages(rag) == _passages(fresh)  # the same passages, ids and order
    texts = [text for _, text in _passages(rag)]
    new_rows = [row for row, (d, _) in enumerate(_passages(rag)) if d in corpus["ids"][rest]]
    queries = [texts[new_rows[0]], texts[new_rows[-1]], texts[0]]
    reference = _brute_force(rag.model, queries, texts)
    assert [int(np.argmax(scores)) for scores in reference] == [new_rows[0], new_rows[-1], 0]
    # the IVF stage of both indexes misses nothing, so the two must agree
    for index in (rag.retriever, fresh.retriever):
        index.nprobe = index.manifest["nlist"]
    found, expected = rag.search(queries, k=5), fresh.search(queries, k=5)
    assert [[r["passage_id"] for r in results] for results in found] == [
        [r["passage_id"] for r in results] for results in expected
    ]
    assert [results[0]["passage_id"] for results in found] == [new_rows[0], new_rows[-1], 0]
    assert found[0][0]["document_metadata"] == {"added": 0}
    for mine, theirs in zip(found, expected, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-2)
            assert _without_score(a) == _without_score(b)
    # default settings, and the folder reloaded, find them too
    assert rag.search(queries[0], k=3)[0]["passage_id"] == new_rows[0]
    reloaded = RAGPretrainedModel.from_index(rag.index_path, verbose=0)
    assert reloaded.search(queries[1], k=3)[0]["passage_id"] == new_rows[-1]
    with pytest.raises(ValueError, match="already in the index"):
        rag.add_to_index(["again"], new_document_ids=[corpus["ids"][13]])
    with pytest.raises(ValueError, match="new_document_metadatas has 2 entries for 1"):
        rag.add_to_index(["x"], new_document_ids=["x"], new_document_metadatas=[{}, {}])


def _without_score(result: dict) -> dict:
    """A result without its score, and without ``document_metadata`` when that is None."""
    return {
        key: value
        for key, value in result.items()
        if key != "score" and not (key == "document_metadata" and value is None)
    }


def test_deleted_documents_are_never_returned_again(indexed, corpus):
    rag, path, _ = indexed
    passages = _passages(rag)
    gone = [corpus["ids"][2], corpus["ids"][9]]
    queries = [text for document_id, text in passages if document_id in gone]
    assert rag.search(queries, k=1)[0][0]["document_id"] in gone  # they come first before
    total = len(passages)
    rag.delete_from_index(gone)
    left = total - len(queries)

    def never_returned(model: RAGPretrainedModel) -> None:
        for k in (1, 5, left, 10_000):  # IVF stage, and exact over everything
            for results in model.search(queries, k=k):
                assert results and all(r["document_id"] not in gone for r in results)
        assert len(model.search(queries[0], k=10_000)) == left
        with pytest.raises(ValueError, match="not in the index"):
            model.search(queries[0], doc_ids=gone[:1])

    never_returned(rag)
    never_returned(RAGPretrainedModel.from_index(path, verbose=0))
    # their texts and metadata left the passages file
    store = json.loads((rag.index_path / module.PASSAGES).read_text())
    assert all(
        text == ""
        for d, text in zip(store["document_ids"], store["contents"], strict=True)
        if d in gone
    )
    assert gone[1] not in store["metadata"]
    with pytest.raises(KeyError, match="not in the index"):
        rag.delete_from_index(gone[0])  # deleted already
    with pytest.raises(KeyError, match="not in the index"):
        rag.delete_from_index(["no such document", corpus["ids"][0]])
    assert rag.search(passages[0][1], k=1)[0]["document_id"] == corpus["ids"][0]  # kept
    # a deleted id may come back, as a new document
    rag.add_to_index([corpus["texts"][2]], new_document_ids=[gone[0]])
    assert rag.search(queries[0], k=1)[0]["document_id"] == gone[0]
    assert rag.search(queries[0], k=1)[0]["passage_id"] >= total


# ---- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"document_ids": ["a", "b"]}, ValueError, "document_ids has 2 ids for 3 documents"),
        ({"document_ids": ["a", "b", "a"]}, ValueError, r"unique; repeated: \['a'\]"),
        ({"document_ids": ["a", " ", "c"]}, ValueError, "must not contain empty strings"),
        ({"document_ids": ["a", 2, "c"]}, TypeError, "must be strings, got int 2"),
        ({"document_ids": "abc"}, TypeError, "a list of ids, not one string"),
        ({"document_metadatas": [{}]}, ValueError, "document_metadatas has 1 entries for 3"),
        ({"document_metadatas": [{}, {"f": object()}, {}]}, ValueError, r"\[1\] cannot be"),
        ({"overwrite_index": "resume"}, ValueError, "overwrite_index must be True, False"),
        ({"index_name": "a/b"}, ValueError, "one folder name"),
        ({"max_document_length": 0}, ValueError, "max_document_length must be a positive"),
        ({"bsize": 0}, ValueError, "bsize must be a positive integer"),
        ({"document_splitter_fn": "llama"}, TypeError, "document_splitter_fn must be"),
        (
            {"document_splitter_fn": lambda d, i, chunk_size: [{"content": "x"}]},
            ValueError,
            "unknown document",
        ),
        ({"preprocessing_fn": lambda items: None}, TypeError, "must return a list of dicts"),
        ({"nbits": 2}, TypeError, "unexpected keyword argument 'nbits'"),
    ],
)
def test_bad_index_arguments_fail_clearly(rag, arguments, error, message):
    with pytest.raises(error, match=message):
        rag.index(["one", "two", "three"], **{"index_name": "bad", **arguments})


def test_other_bad_arguments_fail_clearly(indexed):
    rag, _, _ = indexed
    with pytest.raises(TypeError, match="a list of strings, not one string"):
        rag.index("one document", index_name="bad")
    with pytest.raises(TypeError, match=r"collection\[1\] is a int"):
        rag.index(["one", 2], index_name="bad")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rag.search("lift", k=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'ncells'"):
        rag.search("lift", ncells=4)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rag.rerank("lift", ["a"], k=0)
    with pytest.raises(ValueError, match="no documents encoded"):
        rag.search_encoded_docs("lift")
    with pytest.raises(NotImplementedError, match="LangChain"):
        rag.as_langchain_retriever(k=3)


def test_custom_splitter_and_preprocessing_and_accepted_arguments(rag, corpus, caplog):
    def by_sentence(documents, document_ids, chunk_size):
        return [
            {"document_id": document_id, "content": sentence.strip()}
            for document_id, text in zip(document_ids, documents, strict=True)
            for sentence in text.split(".")
            if sentence.strip()
        ]

    def upper(items):
        return [{**item, "content": item["content"].upper()} for item in items]

    module._noted.clear()
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        rag.index(
            corpus["texts"][:3],
            document_ids=["a", "b", "c"],
            index_name="custom",
            document_splitter_fn=by_sentence,
            preprocessing_fn=[upper],
            use_faiss=True,
            max_document_length=10_000,  # more than the encoder takes: lowered
        )
        rag.add_to_index(
            ["one more. and another"],
            new_document_ids=["d"],
            document_splitter_fn=by_sentence,
            preprocessing_fn=upper,
            use_faiss=True,
        )
    expected = [s.strip().upper() for t in corpus["texts"][:3] for s in t.split(".") if s.strip()]
    assert [text for _, text in _passages(rag)] == [*expected, "ONE MORE", "AND ANOTHER"]
    assert sum("use_faiss=True" in record.message for record in caplog.records) == 1
    assert any("passages hold at most 253" in record.message for record in caplog.records)
    assert rag.retriever.manifest["doc_maxlen"] == 256  # the tiny encoder's positions


# ---- rerank and in-memory encodings -------------------------------------------------------------


def test_rerank_orders_documents_by_brute_force_maxsim(rag, corpus):
    documents = corpus["texts"][:6]
    queries = ["what produces lift on a wing", corpus["texts"][3]]
    reference = _brute_force(rag.model, queries, documents)
    assert int(np.argmax(reference[1])) == 3  # the precondition: a document's own text wins
    one = rag.rerank(queries[0], documents, k=4)
    assert [set(result) for result in one] == [{"content", "score", "rank", "result_index"}] * 4
    assert [result["rank"] for result in one] == [1, 2, 3, 4]
    order = sorted(range(6), key=lambda position: -reference[0][position])
    assert [result["result_index"] for result in one] == order[:4]
    assert [result["content"] for result in one] == [documents[p] for p in order[:4]]
    assert [result["score"] for result in one] == pytest.approx(
        [reference[0][p] for p in order[:4]], abs=1e-4
    )
    many = rag.rerank(queries, documents, k=100, zero_index_ranks=True, bsize=2)
    assert len(many) == 2 and [len(results) for results in many] == [6, 6]
    assert many[1][0]["result_index"] == 3 and many[1][0]["rank"] == 0
    assert rag.rerank(queries[0], [], k=3) == []


def test_encode_search_encoded_docs_and_clear(rag, corpus, caplog):
    documents = corpus["texts"][:8]
    rag.encode(documents[:5], document_metadatas=[{"n": i} for i in range(5)], verbose=False)
    rag.encode(documents[5:], verbose=False)  # appended; their metadata is None
    queries = [documents[6], "boundary layer"]
    reference = _brute_force(rag.model, queries, documents)
    found = rag.search_encoded_docs(queries, k=3)
    assert len(found) == 2
    for results, scores in zip(found, reference, strict=True):
        order = sorted(range(8), key=lambda position: -scores[position])[:3]
        assert [result["result_index"] for result in results] == order
        assert [result["score"] for result in results] == pytest.approx(
            [scores[p] for p in order], abs=1e-4
        )
        assert [result["rank"] for result in results] == [1, 2, 3]
        for result in results:
            position = result["result_index"]
            assert result["content"] == documents[position]
            assert result["document_metadata"] == ({"n": position} if position < 5 else None)
    assert found[0][0]["result_index"] == 6
    assert len(rag.search_encoded_docs("lift", k=100)) == 8
    assert isinstance(rag.search_encoded_docs("lift", k=1), list)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        rag.clear_encoded_docs()
    assert "cleared 8 documents" in caplog.text
    with pytest.raises(ValueError, match="call encode"):
        rag.search_encoded_docs("lift")
    # truncated to 8 word pieces: the scores of a model with doc_maxlen 8 + 3
    rag.encode(documents[:2], max_document_length=8, verbose=False)
    found = rag.search_encoded_docs("lift", k=2)
    expected = _brute_force(with_doc_maxlen(rag.model, 11), ["lift"], documents[:2])[0]
    assert expected != pytest.approx(_brute_force(rag.model, ["lift"], documents[:2])[0])
    assert sorted(result["score"] for result in found) == pytest.approx(sorted(expected), abs=1e-4)
    rag.clear_encoded_docs(force=True)
