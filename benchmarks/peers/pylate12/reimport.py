"""Import side of the parity check (run in the project's .venv, after peer.py).

Loads the folders PyLate and colbert-ai saved (``peer.py``) as our model and scores the same
pairs; prints the largest difference from the scores of the model that was exported. Exits 1 if
it is above 1e-4.

    python benchmarks/peers/pylate12/reimport.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colbert_lightning.modeling import ColBERT  # noqa: E402
from reference import pair_scores  # noqa: E402

TOLERANCE = 1e-4


def main() -> int:
    out = Path(sys.argv[1])
    reference = json.loads((out / "reference.json").read_text())
    texts = [(pair["query"], pair["document"]) for pair in reference["pairs"]]
    ours = torch.tensor(reference["scores"])
    failed = False
    for name in ("pylate_saved", "pylate_from_colbert_saved", "colbert_ai_saved"):
        model = ColBERT.load(out / name).eval()
        difference = (torch.tensor(pair_scores(model, texts)) - ours).abs().max().item()
        failed |= difference > TOLERANCE
        status = "ok" if difference <= TOLERANCE else "FAIL"
        print(f"re-import {name:<28} {len(texts)} pairs  max |diff| = {difference:.2e}  {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
