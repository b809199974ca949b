"""`python -m colbert_lightning.index`: token embeddings on disk and an IVF index, for search."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from colbert_lightning.config.checks import ConfigError, check_beir_root
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.beir import find_beir_file, load_corpus
from colbert_lightning.modeling import ColBERT, default_device
from colbert_lightning.retrieval.ivf import CODECS, build_index

log = logging.getLogger(__name__)


def index(cfg: DictConfig) -> dict[str, Any]:
    """Encode the corpus (``cfg.corpus``, else data.root's) with ``cfg.checkpoint`` and index it.

    Returns:
        The index manifest (also in ``<output>/manifest.json``).
    """
    if not Path(cfg.checkpoint).exists():
        raise ConfigError(f"checkpoint={cfg.checkpoint}: no such file or folder")
    if cfg.codec not in CODECS:
        raise ConfigError(f"codec={cfg.codec}: expected one of {sorted(CODECS)}")
    corpus_path = cfg.corpus or _corpus_of(cfg.data.get("root"))
    corpus = load_corpus(corpus_path)
    device = default_device(cfg.device)
    model = ColBERT.load(cfg.checkpoint).to(device).eval()
    log.info("indexing %d documents of %s into %s", len(corpus), corpus_path, cfg.output)
    manifest = build_index(
        model,
        corpus.ids,
        corpus.texts,
        cfg.output,
        nlist=cfg.nlist,
        train_sample=cfg.train_sample,
        codec=cfg.codec,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        model_source=str(Path(cfg.checkpoint).resolve()),
    )
    log.info(
        "index: %d documents, %d token embeddings, %d IVF lists (%s) in %s",
        manifest["documents"],
        manifest["tokens"],
        manifest["nlist"],
        manifest["codec"],
        cfg.output,
    )
    return manifest


def _corpus_of(root: str | None) -> Path:
    return find_beir_file(check_beir_root(root, hint=" (or give corpus=PATH)"), "corpus")


@hydra.main(config_path=str(CONFIG_DIR), config_name="index", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    index(cfg)


def main() -> None:
    """Console entry point: ``colbert-index checkpoint=CKPT data=scifact output=DIR``."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
