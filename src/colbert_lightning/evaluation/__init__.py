"""Evaluation: metrics, the early-phase schedule, precision, split evaluation, sweep summaries.

``metrics`` (MRR@10, Recall@k, nDCG@10), ``schedule`` (when the dev set is evaluated),
``precision`` (float32 or bf16 search), ``split`` (a model or BM25 on a BEIR split) and
``sweeps`` (the tables and learning curves of a multirun).
"""
