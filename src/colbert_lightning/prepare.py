"""`python -m colbert_lightning.prepare`: build BM25 hard-negative triples and a dev split."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.negatives import PrepareResult, prepare_triples


def prepare(cfg: DictConfig) -> PrepareResult:
    """Run :func:`prepare_triples` with the values of a composed ``prepare`` config."""
    # conf/prepare.yaml holds exactly prepare_triples' arguments
    return prepare_triples(**OmegaConf.to_container(cfg, resolve=True))


def summary(result: PrepareResult) -> str:
    """A few lines saying what was written (or reused) and where."""
    counts = result.counts
    state = "reused (cached)" if result.cached else "written"
    return (
        f"prepared data {state} in {result.output_dir}\n"
        f"  queries: {counts['train_queries']} train, {counts['dev_queries']} dev\n"
        f"  triples: {counts['triples']} -> {result.triples}\n"
        f"  skipped positives with empty text: {counts['skipped_empty_positives']}\n"
        f"  dev qrels: {result.dev_qrels}"
    )


@hydra.main(config_path=str(CONFIG_DIR), config_name="prepare", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    print(summary(prepare(cfg)))


def main() -> None:
    """Console entry point: ``colbert-prepare root=... split=test output_dir=...``."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
