"""What every run does around ``trainer.fit``: seed and threads, the Trainer, last.ckpt, wandb.

Shared by ``train`` (``training/run.py``) and ``pretrain`` (``pretraining/mlm.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from colbert_lightning.config.metadata import git_commit
from colbert_lightning.modeling.checkpoints import remove_stale_temporaries
from colbert_lightning.training.callbacks import AtomicCheckpointIO
from colbert_lightning.training.threads import fix_intra_op_threads

log = logging.getLogger(__name__)


def start_run(cfg: DictConfig) -> int:
    """Seed everything with ``cfg.seed`` and fix the CPU intra-op threads; their count.

    The weights depend on how many threads share each sum: one count, whatever the load.
    """
    pl.seed_everything(cfg.seed, workers=True)
    threads = fix_intra_op_threads(cfg.get("cpu_threads"))
    log.info("%d CPU intra-op threads, fixed for the run", threads)
    return threads


@dataclass
class RunTrainer:
    """A run's Trainer and what it logged as the run's hyper-parameters.

    Attributes:
        trainer: ``cfg.trainer`` with the callbacks, ``cfg.logger``'s loggers and atomic
            checkpoint writes.
        config: the resolved config, as logged.
        commit: the git commit, as logged.
    """

    trainer: pl.Trainer
    config: dict[str, Any]
    commit: str


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], checkpoint_dir: Path
) -> RunTrainer:
    """The Trainer of a run; the resolved config and the commit logged to every logger.

    On rank 0 also removes what checkpoint writes killed before their rename left in
    ``checkpoint_dir`` and in the checkpoint callbacks' folders (as large as a checkpoint each).
    """
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    commit = git_commit()
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": resolved, "git_commit": commit})
    if trainer.is_global_zero:
        folders = {
            checkpoint_dir,
            *(Path(c.dirpath) for c in trainer.checkpoint_callbacks if c.dirpath),
        }
        for folder in sorted(folders):
            remove_stale_temporaries(folder)
    return RunTrainer(trainer, resolved, commit)


def save_last_checkpoint(trainer: pl.Trainer, checkpoint_dir: Path) -> None:
    """``checkpoint_dir/last.ckpt`` of the final step, whatever the checkpoint interval.

    Nothing without checkpointing (``trainer.enable_checkpointing=false``) or in a fast dev run.
    """
    if trainer.checkpoint_callback is not None and not trainer.fast_dev_run:
        trainer.save_checkpoint(checkpoint_dir / "last.ckpt")


def finish_wandb_runs(trainer: pl.Trainer) -> None:
    """Close the trainer's wandb runs.

    A wandb run left open is reused by the next WandbLogger in this process: the jobs of a
    multirun would all log into the first job's run.
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
