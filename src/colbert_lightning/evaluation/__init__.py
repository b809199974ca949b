"""Evaluation: metrics, schedules, precision, splits and suites, significance, sweep summaries.

``metrics`` (MRR@10, Recall@k, nDCG@10), ``per_query`` (per-query metrics, per-query TSVs, TREC run
files), ``schedule`` (when the dev set is evaluated), ``precision`` (float32 or bf16 search),
``split`` (a model or BM25 on a BEIR split, held-out-document subsets), ``suite`` (BM25 beside a
model, suites of collections), ``significance`` (paired randomisation test, bootstrap interval,
Holm), and the summaries of a multirun: ``sweeps`` (reading its jobs), ``configurations`` (jobs
grouped over seeds, comparisons with a baseline), ``tables``, ``curves`` and ``summary`` (what
``summarize`` writes).
"""
