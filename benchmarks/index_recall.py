"""Index + search against exact search on a BEIR split (SciFact test by default).

    python benchmarks/index_recall.py --checkpoint CKPT [--data-root ../shared/data/scifact]

Three ways of ranking the whole corpus for every judged query of the split, same model:

- exact (evaluate): ``python -m colbert_lightning.evaluate``'s path, fp32 MaxSim over the corpus
  encoded in memory (its time includes encoding the corpus, so no q/s is given);
- exact (stored): brute-force MaxSim over the index's fp16 token embeddings, every document;
- index: IVF candidates per query token, then exact MaxSim over ``rerank_depth`` documents.

Prints nDCG@10, Recall@100 and queries per second (query encoding included) of each, and the
index's build time; writes the same as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from colbert_lightning.data.beir import (
    find_beir_file,
    load_corpus,
    load_qrels,
    load_queries,
    qrels_path,
)
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.modeling import ColBERT
from colbert_lightning.retrieval.exact import exact_rankings
from colbert_lightning.retrieval.ivf import Retriever, build_index

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .ckpt or model folder")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--index-dir", help="reuse or build the index here (default: a temp dir)")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--candidates-per-token", type=int, default=128)
    parser.add_argument("--rerank-depth", type=int, default=256)
    parser.add_argument("--codec", default="flat")
    parser.add_argument("--nlist", type=int)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-evaluate-path", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    model = ColBERT.load(args.checkpoint).eval()
    corpus = load_corpus(find_beir_file(args.data_root, "corpus"))
    all_queries = load_queries(find_beir_file(args.data_root, "queries"))
    qrels = load_qrels(qrels_path(args.data_root, args.split), set(all_queries), set(corpus.ids))
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    texts = list(queries.values())
    print(f"{args.data_root} {args.split}: {len(queries)} queries, {len(corpus)} documents")
    rows = {}

    if not args.skip_evaluate_path:
        started = time.perf_counter()
        with torch.inference_mode():
            rankings = exact_rankings(
                model, corpus.ids, corpus.texts, queries, k=100, batch_size=args.batch_size
            )
        rows["exact (evaluate)"] = {
            "metrics": evaluate_rankings(rankings, qrels),
            "seconds_with_corpus_encoding": time.perf_counter() - started,
        }

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.index_dir or temporary)
        if not (folder / "manifest.json").is_file():
            started = time.perf_counter()
            build_index(
                model,
                corpus.ids,
                corpus.texts,
                folder,
                nlist=args.nlist,
                codec=args.codec,
                batch_size=args.batch_size,
                model_source=str(args.checkpoint),
            )
            build_seconds = time.perf_counter() - started
        else:
            build_seconds = None
        retriever = Retriever(
            folder,
            model=model,
            nprobe=args.nprobe,
            candidates_per_token=args.candidates_per_token,
            rerank_depth=args.rerank_depth,
            batch_size=args.batch_size,
        )
        for name, search in (
            ("exact (stored)", retriever.exact_search_batch),
            ("index", retriever.search_batch),
        ):
            started = time.perf_counter()
            results = search(texts, k=100)
            seconds = time.perf_counter() - started
            rankings = {
                query_id: [(hit.doc_id, hit.score) for hit in hits]
                for query_id, hits in zip(queries, results, strict=True)
            }
            rows[name] = {
                "metrics": evaluate_rankings(rankings, qrels),
                "queries_per_second": len(texts) / seconds,
            }
        manifest = retriever.manifest

    print(
        f"index: {manifest['tokens']:,} token embeddings, {manifest['nlist']:,} IVF lists "
        f"({manifest['codec']}), built in {build_seconds or float('nan'):.0f} s; nprobe "
        f"{args.nprobe}, candidates_per_token {args.candidates_per_token}, rerank_depth "
        f"{args.rerank_depth}; {torch.get_num_threads()} torch threads"
    )
    print("| search | nDCG@10 | R@100 | q/s |\n|---|---|---|---|")
    for name, row in rows.items():
        speed = row.get("queries_per_second")
        speed_cell = f"{speed:.2f}" if speed else "-"
        metrics = row["metrics"]
        print(f"| {name} | {metrics['ndcg@10']:.4f} | {metrics['recall@100']:.4f} | {speed_cell} |")
    if "exact (evaluate)" in rows:
        gap = rows["index"]["metrics"]["ndcg@10"] - rows["exact (evaluate)"]["metrics"]["ndcg@10"]
        print(f"index - exact nDCG@10: {gap:+.4f}")
    if args.output:
        report = {
            "checkpoint": str(args.checkpoint),
            "data_root": args.data_root,
            "split": args.split,
            "queries": len(queries),
            "documents": len(corpus),
            "index": {**manifest, "build_seconds": build_seconds},
            "settings": vars(args) | {"output": str(args.output)},
            "machine": platform.platform(),
            "rows": rows,
        }
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
