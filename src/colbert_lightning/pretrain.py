"""``python -m colbert_lightning.pretrain [key=value ...]`` (``colbert-pretrain``): MLM pretraining.

Composes ``conf/pretrain.yaml`` with the overrides and runs
:func:`colbert_lightning.pretraining.mlm.pretrain`, which writes ``encoder/`` and then
``pretrain.json`` to the run folder. The encoder trains a ColBERT with
``python -m colbert_lightning.train model.init=pretrained model.name_or_path=<run>/encoder``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.pretraining.mlm import pretrain


@hydra.main(config_path=str(CONFIG_DIR), config_name="pretrain", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    results = pretrain(cfg)
    final = results["val"] or {}
    return final.get("val/mlm_loss")  # what optimising sweepers minimise


def main() -> None:
    """Console entry point."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
