"""Peer side of the parity check (run in benchmarks/peers/pylate12/.venv).

Loads the folders ``reference.py`` exported with PyLate 1.2.0 and colbert-ai 0.2.22, scores the
same 20 query-document pairs, prints the largest difference from our scores, and re-saves each
loaded model with the peer's own ``save`` (for ``reimport.py``). Exits 1 if a difference is
above 1e-4.

    .venv/bin/python peer.py OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOLERANCE = 1e-4


def pylate_scores(folder: Path, pairs: list[dict], resave: Path) -> list[float]:
    from pylate import models
    from pylate.scores import colbert_scores

    model = models.ColBERT(str(folder), device="cpu")
    scores = []
    for pair in pairs:
        query = model.encode([pair["query"]], is_query=True, convert_to_tensor=True)[0]
        document = model.encode([pair["document"]], is_query=False, convert_to_tensor=True)[0]
        # one pair at a time: no zero padding, so PyLate's floor at 0 never applies
        scores.append(colbert_scores(query[None], document[None])[0, 0].item())
    model.save(str(resave))
    return scores


def colbert_ai_scores(folder: Path, pairs: list[dict], resave: Path) -> list[float]:
    from colbert.infra import ColBERTConfig
    from colbert.modeling.checkpoint import Checkpoint
    from colbert.modeling.colbert import colbert_score

    checkpoint = Checkpoint(str(folder), colbert_config=ColBERTConfig(), verbose=0)
    scores = []
    with torch.inference_mode():
        for pair in pairs:
            query = checkpoint.queryFromText([pair["query"]])
            input_ids, attention_mask = checkpoint.doc_tokenizer.tensorize([pair["document"]])
            documents, mask = checkpoint.doc(input_ids, attention_mask, keep_dims="return_mask")
            scores.append(
                colbert_score(query, documents, mask, config=checkpoint.colbert_config).item()
            )
    checkpoint.save(str(resave))
    return scores


def main() -> int:
    out = Path(sys.argv[1])
    reference = json.loads((out / "reference.json").read_text())
    ours = torch.tensor(reference["scores"])
    runs = {
        "PyLate 1.2.0, PyLate folder": pylate_scores(
            out / "pylate", reference["pairs"], out / "pylate_saved"
        ),
        "PyLate 1.2.0, colbert-ai folder": pylate_scores(
            out / "colbert", reference["pairs"], out / "pylate_from_colbert_saved"
        ),
        "colbert-ai 0.2.22, colbert-ai folder": colbert_ai_scores(
            out / "colbert", reference["pairs"], out / "colbert_ai_saved"
        ),
    }
    failed = False
    summary = {}
    for name, scores in runs.items():
        difference = (torch.tensor(scores) - ours).abs().max().item()
        summary[name] = {"scores": scores, "max_abs_diff": difference}
        status = "ok" if difference <= TOLERANCE else "FAIL"
        failed |= difference > TOLERANCE
        print(f"{name:<40} {len(scores)} pairs  max |ours - peer| = {difference:.2e}  {status}")
    (out / "peer.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
