"""RAGatouille's documented train-then-use script, whole, with only its two imports changed."""

from __future__ import annotations

from pathlib import Path

from tests.test_ragatouille import QUICK, cranfield, tiny_bert  # noqa: F401 (fixtures)

SEARCH_KEYS = {"content", "score", "rank", "document_id", "passage_id", "document_metadata"}


def test_ragatouille_train_then_use_script_runs_whole(tiny_bert, cranfield, tmp_path):  # noqa: F811
    pairs, corpus = cranfield
    documents = corpus[:60]
    ids = [f"doc-{number}" for number in range(len(documents))]
    metadatas = [{"position": number} for number in range(len(documents))]
    # --- RAGatouille's documented script; only the imports differ (and the tiny sizes) ---
    from colbert_lightning import RAGPretrainedModel, RAGTrainer

    trainer = RAGTrainer(model_name="Tiny", pretrained_model_name=str(tiny_bert), n_usable_gpus=0)
    trainer.prepare_training_data(
        raw_data=pairs,
        data_out_path=str(tmp_path / "data"),
        all_documents=corpus,
        num_new_negatives=4,
        mine_hard_negatives=True,
    )
    model_path = trainer.train(
        batch_size=8,
        maxsteps=4,
        dim=16,
        learning_rate=5e-4,
        doc_maxlen=48,
        output_dir=tmp_path / "run",
        overrides=QUICK,
    )
    RAG = RAGPretrainedModel.from_pretrained(model_path, index_root=str(tmp_path / "indexes"))
    index_path = RAG.index(
        collection=documents,
        document_ids=ids,
        document_metadatas=metadatas,
        index_name="cranfield",
        max_document_length=48,
        split_documents=True,
    )
    # a query that is a document's own text finds that document first
    query = documents[7]
    hits = RAG.search(query, k=5)
    assert len(hits) == 5 and set(hits[0]) == SEARCH_KEYS
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["document_id"] == "doc-7" and hits[0]["document_metadata"] == {"position": 7}
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    many = RAG.search([query, documents[11]], k=3)
    assert [len(results) for results in many] == [3, 3]
    assert many[1][0]["document_id"] == "doc-11"
    reranked = RAG.rerank(query, [documents[3], documents[7], documents[9]], k=2)
    assert [set(hit) for hit in reranked] == [{"content", "score", "rank", "result_index"}] * 2
    assert reranked[0]["result_index"] == 1 and reranked[0]["content"] == documents[7]
    # in-memory encodings, no index
    RAG.encode(documents[:10], document_metadatas=metadatas[:10])
    encoded_hits = RAG.search_encoded_docs(documents[4], k=2)
    assert encoded_hits[0]["content"] == documents[4]
    RAG.clear_encoded_docs(force=True)
    # the index again, changed in place
    RAG = RAGPretrainedModel.from_index(index_path)
    RAG.add_to_index(
        [pairs[0][1]], new_document_ids=["added"], new_document_metadatas=[{"new": True}]
    )
    assert RAG.search(pairs[0][1], k=1)[0]["document_id"] == "added"
    RAG.delete_from_index(["doc-7"])
    assert "doc-7" not in {hit["document_id"] for hit in RAG.search(query, k=len(documents))}
    reloaded = RAGPretrainedModel.from_index(Path(index_path))
    assert reloaded.search(pairs[0][1], k=1)[0]["document_metadata"] == {"new": True}
    assert "doc-7" not in {hit["document_id"] for hit in reloaded.search(query, k=len(documents))}
