"""`python -m colbert_lightning.tokenizer`: a WordPiece vocabulary trained on the corpora."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.pretraining.vocabulary import VocabularyResult, train_vocabulary

log = logging.getLogger(__name__)


def train_tokenizer(cfg: DictConfig) -> VocabularyResult:
    """Run :func:`train_vocabulary` with the values of a composed ``tokenizer`` config."""
    corpora = cfg.corpora  # a list, or one path given as corpora=PATH
    if OmegaConf.is_list(corpora):
        corpora = OmegaConf.to_container(corpora, resolve=True)
    result = train_vocabulary(
        corpora,
        cfg.output_dir,
        vocab_size=cfg.vocab_size,
        lowercase=cfg.lowercase,
        min_frequency=cfg.min_frequency,
        max_documents=cfg.max_documents,
        overwrite=cfg.overwrite,
    )
    log.info(
        "vocabulary of %d tokens (%d asked) from %d documents in %.1f s written to %s",
        result.vocab_size,
        cfg.vocab_size,
        result.documents,
        result.seconds,
        result.output_dir,
    )
    return result


@hydra.main(config_path=str(CONFIG_DIR), config_name="tokenizer", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    # the folder alone on stdout: `model.tokenizer=$(colbert-tokenizer ... | tail -n 1)`
    print(train_tokenizer(cfg).output_dir)


def main() -> None:
    """Console entry point: ``colbert-tokenizer corpora=[CORPUS,...] output_dir=DIR``."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
