"""Retrieval: encoding for search, exact MaxSim search and rerank, the on-disk index, BM25.

``encode`` (the encoder interface, batches of similar length), ``exact`` (whole-corpus MaxSim,
reranking of candidates, optionally split over processes), ``ivf`` (token embeddings on disk,
a faiss IVF index for candidates, ``Retriever``) and ``bm25`` (the lexical baseline and
negative miner). Nothing here knows about training or the data files.
"""
