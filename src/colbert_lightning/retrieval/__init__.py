"""Exact search, reranking and the BM25 baseline."""
