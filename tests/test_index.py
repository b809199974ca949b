"""Index (fp16 token embeddings + faiss IVF) and search (candidates, exact MaxSim rerank)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.beir import (
    find_beir_file,
    load_corpus,
    load_qrels,
    load_queries,
    write_qrels,
)
from colbert_lightning.index import index
from colbert_lightning.modeling import ColBERT
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval import ivf
from colbert_lightning.retrieval.exact import exact_rankings, rerank_texts
from colbert_lightning.retrieval.ivf import Retriever, build_index
from colbert_lightning.search import search
from tests.conftest import tiny_config
from tests.helpers import REPO
from tests.reference import naive_ranking, naive_retrieval_metrics

DOCUMENTS = 150


@pytest.fixture(scope="module")
def model() -> ColBERT:
    torch.manual_seed(0)
    return ColBERT.from_config(tiny_config()).eval()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A BEIR folder: the first 150 Cranfield documents and the queries judged on them."""
    root = resource_path("cranfield")
    corpus = load_corpus(find_beir_file(root, "corpus"))
    queries = load_queries(find_beir_file(root, "queries"))
    ids = set(corpus.ids[:DOCUMENTS])
    qrels = {
        query_id: {doc_id: grade for doc_id, grade in grades.items() if doc_id in ids}
        for query_id, grades in load_qrels(f"{root}/qrels/test.tsv").items()
    }
    qrels = {query_id: grades for query_id, grades in qrels.items() if grades}
    folder = tmp_path_factory.mktemp("beir")
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as output:
        for doc_id, text in zip(corpus.ids[:DOCUMENTS], corpus.texts[:DOCUMENTS], strict=True):
            output.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as output:
        for query_id in qrels:
            output.write(json.dumps({"_id": query_id, "text": queries[query_id]}) + "\n")
    (folder / "qrels").mkdir()
    write_qrels(folder / "qrels" / "test.tsv", qrels)
    return {
        "root": folder,
        "ids": corpus.ids[:DOCUMENTS],
        "texts": corpus.texts[:DOCUMENTS],
        "queries": {query_id: queries[query_id] for query_id in qrels},
    }


@pytest.fixture(scope="module")
def built(model, collection, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index")
    manifest = build_index(
        model, collection["ids"], collection["texts"], folder, show_progress=False
    )
    return folder, manifest


def test_index_stores_exactly_the_scored_token_embeddings_in_fp16(model, collection, built):
    folder, manifest = built
    tokens = model.tokenizer.documents(collection["texts"][:5])
    encoded = model.encode_documents(tokens)
    retriever = Retriever(folder, model=model)
    assert manifest["documents"] == DOCUMENTS and manifest["dim"] == 16
    assert manifest["tokens"] == int(retriever.doc_lengths.sum()) == len(retriever.token_docs)
    assert manifest["nlist"] * 39 <= manifest["tokens"]
    for row in range(5):
        expected = encoded.embeddings[row][encoded.mask[row]]  # scored tokens only
        start, length = retriever.doc_starts[row], retriever.doc_lengths[row]
        stored = torch.from_numpy(np.array(retriever.embeddings[start : start + length]))
        assert stored.dtype == torch.float16 and stored.shape == expected.shape
        torch.testing.assert_close(stored.float(), expected, atol=1e-3, rtol=0)
        assert (retriever.token_docs[start : start + length] == row).all()


def test_exact_and_index_search_agree_with_exact_search_over_texts(model, collection, built):
    folder, manifest = built
    queries = collection["queries"]
    reference = exact_rankings(
        model, collection["ids"], collection["texts"], queries, k=DOCUMENTS, show_progress=False
    )
    # every list probed, every document reranked: the index path must be exact
    thorough = Retriever(
        folder,
        model=model,
        nprobe=manifest["nlist"],
        candidates_per_token=1024,
        rerank_depth=DOCUMENTS,
    )
    exact = thorough.exact_search_batch(list(queries.values()), k=10)
    found = thorough.search_batch(list(queries.values()), k=10)
    for query_id, exact_hits, index_hits in zip(queries, exact, found, strict=True):
        expected = reference[query_id]
        # fp16 storage moves scores by ~1e-3, which may swap near-ties of this random model:
        # each hit's score is its fp32 score, and the scores are the fp32 top 10's
        fp32 = dict(expected)
        assert [hit.score for hit in exact_hits] == pytest.approx(
            [fp32[hit.doc_id] for hit in exact_hits], abs=1e-2
        )
        assert [hit.score for hit in exact_hits] == pytest.approx(
            [score for _, score in expected[:10]], abs=1e-2
        )
        assert [h.doc_id for h in index_hits] == [h.doc_id for h in exact_hits]
        assert [h.score for h in index_hits] == pytest.approx([h.score for h in exact_hits])
        assert [hit.rank for hit in index_hits] == list(range(1, 11))
    # a shallow search still finds most of the exact top 10
    shallow = Retriever(folder, model=model, nprobe=4, candidates_per_token=16, rerank_depth=32)
    overlap = np.mean(
        [
            len({h.doc_id for h in a} & {h.doc_id for h in b}) / 10
            for a, b in zip(shallow.search_batch(list(queries.values()), k=10), exact, strict=True)
        ]
    )
    assert 0.5 < overlap <= 1.0
    assert thorough.search(next(iter(queries.values())), k=3) == found[0][:3]


def test_rerank_needs_no_index_and_orders_by_maxsim(model):
    documents = ["wings make lift", "a cat sat on the mat", "lift of a wing in a flow", "x"]
    query = "what produces lift on a wing"
    ranked = rerank_texts(model, query, documents)
    scores = model.score_texts([query], documents)[0]
    assert [item.position for item in ranked] == torch.argsort(scores, descending=True).tolist()
    assert [item.score for item in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True))
    assert [item.text for item in ranked] == [documents[item.position] for item in ranked]
    assert [item.rank for item in rerank_texts(model, query, documents, k=2)] == [1, 2]
    assert rerank_texts(model, query, []) == []


def test_index_search_and_rerank_never_encode_with_dropout(collection, tmp_path):
    encoder = {**tiny_config().encoder_config, "hidden_dropout_prob": 0.3}
    encoder["attention_probs_dropout_prob"] = 0.3
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config(encoder_config=encoder))  # in train mode
    ids, texts = collection["ids"][:40], collection["texts"][:40]
    query = "what produces lift on a wing"
    expected = model.eval().score_texts([query], texts)[0]
    model.train()
    ranked = rerank_texts(model, query, texts)
    assert model.training  # the caller's mode is restored
    assert [item.score for item in ranked] == pytest.approx(
        sorted(expected.tolist(), reverse=True), abs=1e-5
    )
    build_index(model, ids, texts, tmp_path, nlist=4, show_progress=False)
    assert model.training
    retriever = Retriever(tmp_path, model=model, nprobe=4, rerank_depth=40)
    hits = retriever.exact_search_batch([query], k=40)[0]
    assert model.training
    # fp16 storage: scores within ~1e-3 of the dropout-free fp32 scores, every time
    assert [hit.score for hit in hits] == pytest.approx(
        sorted(expected.tolist(), reverse=True), abs=1e-2
    )
    assert retriever.search_batch([query], k=5) == retriever.search_batch([query], k=5)


def test_an_index_refuses_another_model_and_incomplete_folders(built, tmp_path):
    folder, _ = built
    torch.manual_seed(1)
    other = ColBERT.from_config(tiny_config()).eval()
    with pytest.raises(ValueError, match="built by another model"):
        Retriever(folder, model=other)
    with pytest.raises(ValueError, match="no complete index"):
        Retriever(tmp_path, model=other)
    with pytest.raises(ValueError, match="unique"):
        build_index(other, ["a", "a"], ["x", "y"], tmp_path, show_progress=False)


def _brute_force_top(
    retriever: Retriever, queries: list[str], k: int
) -> list[list[tuple[str, float]]]:
    """Each query's ``k`` best documents by MaxSim, one stored document at a time.

    ``score(q, d) = sum over scored query tokens of max over d's stored tokens of q_i . d_j``,
    from the fp16 token embeddings the index wrote: no IVF, no padding, no packed scatter.
    """
    model = retriever.model
    with torch.inference_mode():
        encoded = model.encode_queries(model.tokenizer.queries(queries))
    stored = torch.from_numpy(np.asarray(retriever.embeddings, dtype=np.float32))
    tops = []
    for embeddings, mask in zip(encoded.embeddings, encoded.mask, strict=True):
        query_tokens = embeddings[mask]  # (scored query tokens, dim)
        scores = []
        for row in range(len(retriever.doc_ids)):
            start, length = retriever.doc_starts[row], retriever.doc_lengths[row]
            document_tokens = stored[start : start + length]  # (its stored tokens, dim)
            scores.append(float((query_tokens @ document_tokens.T).max(dim=1).values.sum()))
        tops.append(naive_ranking(scores, retriever.doc_ids)[:k])
    return tops


def _compose(name, overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=[f"paths.root_dir={REPO}", *overrides])


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_index_and_search_commands_on_a_beir_folder(model, collection, codec, tmp_path, capsys):
    checkpoint = tmp_path / "model.ckpt"
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"colbert": model.checkpoint_metadata(), "state_dict": state}, checkpoint)
    common = [f"paths.output_dir={tmp_path}", f"data.root={collection['root']}"]
    manifest = index(
        _compose("index", [*common, f"checkpoint={checkpoint}", f"codec={codec}", "nlist=16"])
    )
    assert manifest["codec"] == codec and manifest["nlist"] == 16
    assert manifest["model"] == str(checkpoint.resolve())
    # the model comes from the index's manifest
    result = search(_compose("search", [*common, f"index={tmp_path / 'index'}", "split=test"]))
    assert result["queries"] == len(collection["queries"])
    assert result["queries_per_second"] > 0
    assert all(len(ranking) == 100 for ranking in result["rankings"].values())
    # the metrics are the textbook formulas' on the rankings the command returned
    qrels = load_qrels(collection["root"] / "qrels" / "test.tsv")
    assert result["metrics"] == pytest.approx(naive_retrieval_metrics(result["rankings"], qrels))
    # and the top 10 is brute-force MaxSim's over the very embeddings the index stored
    retriever = Retriever(tmp_path / "index", model=model)
    query_ids = list(result["rankings"])
    expected = _brute_force_top(retriever, [collection["queries"][q] for q in query_ids], k=10)
    for query_id, top in zip(query_ids, expected, strict=True):
        found = result["rankings"][query_id][:10]
        assert [doc_id for doc_id, _ in found] == [doc_id for doc_id, _ in top]
        assert [score for _, score in found] == pytest.approx([score for _, score in top], abs=1e-4)
    written = json.loads((tmp_path / "search_test.json").read_text())
    assert written["metrics"] == result["metrics"]
    one = search(
        _compose("search", [*common, f"index={tmp_path / 'index'}", "query='lift'", "k=3"])
    )
    assert [hit["rank"] for hit in one["results"]] == [1, 2, 3]
    assert one["results"][0]["doc_id"] in capsys.readouterr().out
    with pytest.raises(ConfigError, match="one of query=TEXT or split=NAME"):
        search(_compose("search", [*common, f"index={tmp_path / 'index'}"]))


# ---- growing and shrinking an index in place ---------------------------------------------------

UPDATE_DOCUMENTS = 30


def _thorough(folder, model, manifest=None) -> Retriever:
    """A retriever whose IVF stage misses nothing: every list probed, every document reranked."""
    manifest = manifest or json.loads((folder / "manifest.json").read_text())
    return Retriever(
        folder,
        model=model,
        nprobe=manifest["nlist"],
        candidates_per_token=4096,
        rerank_depth=1000,
    )


def _same_hits(found, expected):
    """The same documents in the same order, the same scores up to fp16 storage."""
    assert [[hit.doc_id for hit in hits] for hits in found] == [
        [hit.doc_id for hit in hits] for hits in expected
    ]
    for hits, reference in zip(found, expected, strict=True):
        assert [hit.score for hit in hits] == pytest.approx(
            [hit.score for hit in reference], abs=1e-2
        )


@pytest.fixture
def small(model, collection, tmp_path):
    """An index of 20 documents (4 IVF lists) and 10 more documents to add to it."""
    ids, texts = collection["ids"][:UPDATE_DOCUMENTS], collection["texts"][:UPDATE_DOCUMENTS]
    folder = tmp_path / "index"
    build_index(model, ids[:20], texts[:20], folder, nlist=4, show_progress=False)
    return folder, ids, texts


def test_added_documents_are_searched_at_once_as_if_indexed_from_the_start(
    model, collection, small, tmp_path
):
    folder, ids, texts = small
    retriever = _thorough(folder, model)
    queries = texts[20:25] + list(collection["queries"].values())[:5]  # new documents' texts too
    manifest = retriever.add_documents(ids[20:], texts[20:])
    assert manifest["documents"] == len(retriever) == UPDATE_DOCUMENTS
    assert manifest["tokens"] == retriever.tokens == retriever.index.ntotal
    # the index built over all 30 documents at once, with the very same IVF lists
    fresh = tmp_path / "fresh"
    build_index(model, ids, texts, fresh, nlist=4, show_progress=False)
    reference = _thorough(fresh, model)
    expected = reference.exact_search_batch(queries, k=10)
    # each new document's own text finds it first
    assert [hits[0].doc_id for hits in expected[:5]] == ids[20:25]
    _same_hits(retriever.search_batch(queries, k=10), expected)
    _same_hits(retriever.exact_search_batch(queries, k=10), expected)
    # and the folder on disk says the same
    _same_hits(_thorough(folder, model).search_batch(queries, k=10), expected)
    reloaded = Retriever(folder, model=model)
    assert reloaded.doc_ids == ids
    # every document's stored tokens are the ones the fresh index stored (rows are laid out
    # by encoding batch, so their places in the file differ)
    assert np.array_equal(reloaded.doc_lengths, reference.doc_lengths)
    for row in range(UPDATE_DOCUMENTS):
        stored = []
        for found in (reloaded, reference):
            start, length = found.doc_starts[row], found.doc_lengths[row]
            assert (found.token_docs[start : start + length] == row).all()
            stored.append(np.array(found.embeddings[start : start + length], np.float32))
        torch.testing.assert_close(*map(torch.from_numpy, stored), atol=2e-3, rtol=0)


def test_deleted_documents_are_never_returned_and_their_ids_can_come_back(model, small):
    folder, ids, texts = small
    retriever = _thorough(folder, model)
    queries = texts[:20]  # each document's own text: it would come first
    before = retriever.index.ntotal
    gone = [ids[3], ids[7]]
    manifest = retriever.delete_documents(gone)
    assert manifest["deleted"] == 2 and len(retriever) == 18
    removed = int(retriever.doc_lengths[[3, 7]].sum())
    assert retriever.index.ntotal == before - removed  # out of the IVF lists too
    for found in (
        retriever.search_batch(queries, k=20),
        retriever.exact_search_batch(queries, k=20),
        _thorough(folder, model).search_batch(queries, k=20),
        Retriever(folder, model=model, nprobe=1, candidates_per_token=8).search_batch(queries),
    ):
        assert all(hit.doc_id not in gone for hits in found for hit in hits)
        assert sum(len(hits) for hits in found) > 0
    assert ids[3] not in retriever and ids[4] in retriever
    with pytest.raises(KeyError, match="not in the index"):
        retriever.delete_documents([ids[3]])  # deleted already
    with pytest.raises(KeyError, match="not in the index"):
        retriever.delete_documents(["no such document", ids[5]])
    assert ids[5] in retriever  # nothing deleted by the failed call
    with pytest.raises(ValueError, match="already in the index"):
        retriever.add_documents([ids[4]], ["again"])
    # a deleted id may name a new document
    retriever.add_documents([ids[3]], [texts[25]])
    hits = retriever.search_batch([texts[25]], k=3)[0]
    assert hits[0].doc_id == ids[3]
    assert Retriever(folder, model=model).search_batch([texts[25]], k=3)[0] == hits
    with pytest.raises(KeyError, match="not in the index"):
        retriever.exact_search_batch(queries, doc_ids=[ids[7]])
    only = retriever.exact_search_batch(queries[:2], k=5, doc_ids=[ids[0], ids[1]])
    assert [{hit.doc_id for hit in hits} for hits in only] == [{ids[0], ids[1]}] * 2


def test_an_update_interrupted_before_its_manifest_leaves_the_previous_index(
    model, small, monkeypatch
):
    folder, ids, texts = small
    queries = texts[:5] + texts[20:25]
    before = _thorough(folder, model).search_batch(queries, k=10)
    real_save_json = ivf._save_json

    def crash_on_manifest(path, value, indent=None):
        if path.name == ivf.MANIFEST:
            raise KeyboardInterrupt  # the process dies after every other file was written
        real_save_json(path, value, indent)

    monkeypatch.setattr(ivf, "_save_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        _thorough(folder, model).add_documents(ids[20:], texts[20:])
    # the IVF file holds the added tokens; a retriever leaves out those the manifest lacks
    on_disk = ivf.faiss.read_index(str(folder / ivf.IVF)).ntotal
    loaded = _thorough(folder, model)
    assert on_disk > loaded.index.ntotal == loaded.tokens
    with pytest.raises(KeyboardInterrupt):
        _thorough(folder, model).delete_documents([ids[0]])
    monkeypatch.undo()
    # the arrays grew and the tombstone is written ...
    assert len(json.loads((folder / "doc_ids.json").read_text())) == UPDATE_DOCUMENTS
    # ... the manifest does not: tokens beyond it and IVF entries are dropped on loading;
    # the deletion, whose tombstone was written, holds
    reloaded = _thorough(folder, model)
    assert len(reloaded.doc_ids) == 20 and len(reloaded) == 19
    assert reloaded.index.ntotal == reloaded.tokens - int(reloaded.doc_lengths[0])
    expected = [[hit for hit in hits if hit.doc_id != ids[0]] for hits in before]
    found = reloaded.search_batch(queries, k=10)
    _same_hits([hits[:9] for hits in found], [hits[:9] for hits in expected])
    # the next update starts from the manifest's state and gives a consistent index
    reloaded.add_documents(ids[20:], texts[20:])
    again = _thorough(folder, model)
    assert len(again) == 29 and again.index.ntotal == again.tokens - int(again.doc_lengths[0])
    assert [hits[0].doc_id for hits in again.search_batch(texts[20:25], k=1)] == ids[20:25]


def test_an_old_retriever_keeps_working_while_its_index_is_rebuilt(model, small):
    folder, ids, texts = small
    old = Retriever(folder, model=model)
    expected = old.exact_search_batch(texts[:3], k=5)
    build_index(model, ids[20:], texts[20:], folder, nlist=2, show_progress=False)
    _same_hits(old.exact_search_batch(texts[:3], k=5), expected)  # its files live on
    assert Retriever(folder, model=model).doc_ids == ids[20:]
