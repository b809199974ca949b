"""How often random training batches hold false in-batch negatives (what masking removes).

Prints, for random batches of B prepared triples, the share of queries with at least one
document judged relevant to them among their in-batch negatives, the share whose own query is
repeated in the batch, and the mean number of such columns per query.

    python benchmarks/false_negatives.py --root src/colbert_lightning/resources/cranfield
    python benchmarks/false_negatives.py --root ../shared/data/scifact --split train \\
        --dev-queries 100
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from colbert_lightning.data.beir import load_qrels, normalized_text
from colbert_lightning.data.negatives import prepare_triples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="BEIR folder")
    parser.add_argument("--split", default="test", help="qrels split prepare draws from")
    parser.add_argument("--dev-queries", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        prepared = prepare_triples(
            args.root, args.split, folder, dev_queries=args.dev_queries, show_progress=False
        )
        triples = [json.loads(line) for line in Path(prepared.triples).read_text().splitlines()]
        qrels = load_qrels(prepared.train_qrels)
    relevant = {q: {d for d, g in grades.items() if g > 0} for q, grades in qrels.items()}
    rng = random.Random(0)
    queries = with_false_negative = with_repeat = columns = 0
    for _ in range(args.batches):
        batch = rng.sample(triples, args.batch_size)
        documents = [d for row in batch for d in (row["pid"], row["neg_ids"][0])]  # nway 2
        for i, row in enumerate(batch):
            mine = relevant.get(row["qid"], set()) | {row["pid"]}
            text = normalized_text(row["query"])
            repeats = [
                k
                for k, other in enumerate(batch)
                if k != i and normalized_text(other["query"]) == text
            ]
            mine |= {batch[k]["pid"] for k in repeats}
            false = sum(1 for j, doc in enumerate(documents) if j != 2 * i and doc in mine)
            queries += 1
            with_false_negative += false > 0
            with_repeat += bool(repeats)
            columns += false
    shares = {
        "queries with >= 1 relevant document among their negatives": with_false_negative,
        "queries whose own query is repeated in the batch": with_repeat,
    }
    print(f"{args.root} ({len(triples)} triples), {args.batches} batches of {args.batch_size}:")
    for label, count in shares.items():
        print(f"  {label + ':':<62}{count / queries:.1%}")
    print(f"  {'false-negative columns per query:':<62}{columns / queries:.3f}")


if __name__ == "__main__":
    main()
