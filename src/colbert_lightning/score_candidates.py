"""``python -m colbert_lightning.score_candidates``: teacher scores of candidate lists.

Scores ``prepare``'s triples (or any training file) or a TREC run's candidates with a teacher (a
ColBERT checkpoint or folder, or a cross-encoder folder) and writes a distillation training file
(``scored_jsonl`` or colbert-ai's ``colbert_ids``); resumable. See
:mod:`colbert_lightning.data.distillation`.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.distillation import ScoringResult, score_candidates


def score(cfg: DictConfig) -> ScoringResult:
    """Run :func:`score_candidates` with the values of a composed ``score_candidates`` config."""
    return score_candidates(
        candidates=instantiate(cfg.candidates),
        teacher=instantiate(cfg.teacher),
        output=cfg.output,
        output_format=cfg.output_format,
        max_candidates=cfg.max_candidates,
        batch_size=cfg.batch_size,
        device=cfg.device,
        show_progress=cfg.show_progress,
    )


def summary(result: ScoringResult) -> str:
    """A few lines saying what was written (or found complete) and what was skipped."""
    if result.cached:
        lines = f"{result.lines} (complete already: nothing scored)"
    elif result.resumed_lines:
        lines = f"{result.lines} ({result.resumed_lines} kept from an interrupted run)"
    else:
        lines = str(result.lines)
    skipped = ", ".join(f"{reason} {count}" for reason, count in result.skipped.items() if count)
    return (
        f"teacher scores: {result.output} ({result.output_format})\n"
        f"  lines: {lines}\n"
        f"  queries: {result.queries}, documents scored: {result.documents}\n"
        f"  skipped: {skipped or 'nothing'}\n"
        f"  state: {result.state}"
    )


@hydra.main(config_path=str(CONFIG_DIR), config_name="score_candidates", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    print(summary(score(cfg)))


def main() -> None:
    """Console entry point: ``python -m colbert_lightning.score_candidates teacher.path=...``."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
