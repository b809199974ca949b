"""Callbacks: dev evaluation on an early-phase schedule; whole, verified checkpoint files."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from colbert_lightning.data.beir import DevSet, find_beir_file, load_dev_set, qrels_path
from colbert_lightning.evaluation.precision import EvaluationPrecision, check_precision
from colbert_lightning.evaluation.schedule import EvaluationSchedule
from colbert_lightning.modeling.checkpoints import (
    CheckpointError,
    check_finite,
    read_checkpoint,
    write_checkpoint,
)

log = logging.getLogger(__name__)

EvaluationMode = Literal["exact", "rerank"]
EVALUATED_STEP = "val/step"
"""``trainer.callback_metrics`` key: the optimiser step the ``val/*`` values were measured at."""


class ScheduledEvaluation(pl.Callback):
    """Calls :meth:`evaluate` at step 0 and after each optimiser step its schedule names.

    Once per optimiser step, though ``on_train_batch_end`` comes once per micro-batch under
    gradient accumulation: :meth:`evaluate` sets ``_last_step`` to the step it measured. What
    runs on the dev schedule (retrieval, MLM, probes) shares these hooks.

    Args:
        schedule: which optimiser steps to evaluate at.
    """

    def __init__(self, schedule: EvaluationSchedule) -> None:
        self.schedule = schedule
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Step 0: the untrained model."""
        if trainer.global_step == 0 and self.schedule.should_evaluate(0, trainer.max_steps):
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Evaluate after the optimiser steps the schedule names (once per step)."""
        step = trainer.global_step
        if step != self._last_step and self.schedule.should_evaluate(step, trainer.max_steps):
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure now, log, and set ``_last_step``; the figures logged."""
        raise NotImplementedError


class RetrievalEvaluation(ScheduledEvaluation):
    """Evaluates retrieval on the dev set at step 0 and on a log-spaced, then regular, schedule.

    Metrics (``val/mrr@10``, ``val/recall@10``, ``val/recall@100``, ``val/ndcg@10``) go to every
    logger at the optimiser step they describe, together with ``trainer/examples_seen``, and into
    ``trainer.callback_metrics`` (with ``val/step``, the step they describe) so that
    :class:`BestDevCheckpoint` can keep the best weights.

    Extra collections (``extra``) are evaluated at the same steps, by exact search over their
    whole corpus, and logged as ``val_<name>/ndcg@10`` and so on: out-of-domain learning curves
    beside the in-domain ones. They never choose a checkpoint, and their queries are not
    checked against the training queries.

    Args:
        schedule: which optimiser steps to evaluate at.
        mode: ``exact`` full-corpus MaxSim search, or ``rerank`` of the dev set's candidates.
        batch_size: texts per encoder call while evaluating.
        k: depth of the ranking kept per query (Recall@k needs k >= 100 for recall@100).
        precision: ``32``, ``bf16`` (autocast), or ``auto``: bf16 where the device computes it
            natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else 32. Independent of
            the trainer's precision.
        extra: collection name -> BEIR folder, also evaluated at every evaluation. The config
            lists names (``callbacks.evaluation.extra=[med]``), which ``train`` resolves to
            their data configs' ``data.root``.
        extra_split: the qrels split of the extra collections.
    """

    def __init__(
        self,
        schedule: EvaluationSchedule,
        mode: EvaluationMode = "exact",
        batch_size: int = 64,
        k: int = 100,
        precision: EvaluationPrecision | int = "32",
        extra: Mapping[str, str | Path] | None = None,
        extra_split: str = "test",
    ) -> None:
        if mode not in ("exact", "rerank"):
            raise ValueError(f"callbacks.evaluation.mode must be exact or rerank, got {mode!r}")
        if k < 100:
            raise ValueError(f"callbacks.evaluation.k must be >= 100 for recall@100, got {k}")
        super().__init__(schedule)
        self.mode = mode
        self.batch_size = batch_size
        self.k = k
        self.precision = check_precision(precision, "callbacks.evaluation.precision")
        self.extra = {name: Path(root) for name, root in (extra or {}).items()}
        self.extra_split = extra_split
        self._extra_sets: dict[str, DevSet] = {}
        self.history: list[dict[str, float]] = []

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Run one evaluation now and log it."""
        dev_set = trainer.datamodule.dev_set() if trainer.datamodule is not None else None
        if dev_set is None:
            return {}
        step = trainer.global_step
        metrics = pl_module.evaluate_retrieval(
            dev_set, self.mode, self.batch_size, self.k, self.precision
        )
        values = {f"val/{name}": value for name, value in metrics.items()}
        for collection in self.extra:
            extra_metrics = pl_module.evaluate_retrieval(
                self._extra_set(collection, pl_module),
                "exact",
                self.batch_size,
                self.k,
                self.precision,
            )
            values.update({f"val_{collection}/{n}": v for n, v in extra_metrics.items()})
        values["trainer/examples_seen"] = float(getattr(pl_module, "examples_seen", 0))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        trainer.callback_metrics[EVALUATED_STEP] = torch.tensor(step)
        self.history.append({"step": step, **values})
        self._last_step = step
        shown = "  ".join(
            f"{name}={value:.4f}"
            for name, value in values.items()
            if name.startswith("val/") or name.endswith("ndcg@10")
        )
        log.info("step %d: %s", step, shown)
        return values

    def _extra_set(self, name: str, pl_module: pl.LightningModule) -> DevSet:
        """Collection ``name``'s corpus, judged queries and qrels, loaded at first use."""
        if name not in self._extra_sets:
            root = self.extra[name]
            self._extra_sets[name] = load_dev_set(
                find_beir_file(root, "corpus"),
                find_beir_file(root, "queries"),
                qrels_path(root, self.extra_split),
                is_empty=pl_module.model.tokenizer.is_empty,
            )
        return self._extra_sets[name]

    def state_dict(self) -> dict[str, Any]:
        """The evaluation history travels with checkpoints, so a resumed run keeps step 0."""
        return {"history": self.history, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history on resume."""
        self.history = list(state_dict.get("history", []))
        self._last_step = int(state_dict.get("last_step", -1))


class BestDevCheckpoint(ModelCheckpoint):
    """Keeps the checkpoint of the best dev evaluation, holding exactly the weights evaluated.

    A plain ``ModelCheckpoint`` checks its monitor after every batch: the step-0 evaluation
    (before any update) would be saved after step 1, as ``best-step1.ckpt`` with step 0's score
    and step 1's weights. This one saves only at the step whose weights :class:`RetrievalEvaluation`
    just measured (``val/step``), step 0 included, and never on a stale value. It takes
    ``ModelCheckpoint``'s arguments; ``monitor`` names a ``val/*`` metric.
    """

    _saved_step: int | None = None  # the step last considered, so that each is saved once

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Step 0: the evaluation callback (which runs before checkpoint callbacks) just ran."""
        super().on_train_start(trainer, pl_module)
        self._save_if_just_evaluated(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After an optimiser step: save if this step's weights were evaluated and improved."""
        self._save_if_just_evaluated(trainer)

    def _save_if_just_evaluated(self, trainer: pl.Trainer) -> None:
        evaluated = trainer.callback_metrics.get(EVALUATED_STEP)
        step = trainer.global_step
        if evaluated is None or int(evaluated) != step or trainer.fast_dev_run:
            return
        if self._saved_step == step:
            return
        self._saved_step = step
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = step


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint whole and with a checksum; refuses a damaged one on resume.

    A checkpoint goes to a temporary file beside it (never the system temp folder), is fsynced
    and renamed into place, so a process killed mid-save leaves the previous one intact.
    Loading it back (Lightning's resume) verifies the checksum and refuses non-finite weights
    or optimiser state, naming the file and the tensor; a checkpoint written before checksums
    loads with a warning. See :mod:`colbert_lightning.modeling.checkpoints`.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike,
        storage_options: Any | None = None,
    ) -> None:
        """Save atomically, with a checksum: temporary file, fsync, rename."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_checkpoint(checkpoint, path)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Any = "cpu",
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint to resume from, verified; see the class docstring.

        Raises:
            CheckpointError: the file is empty, truncated, damaged, not a checkpoint, or holds
                non-finite values; the message says so and that nothing was written.
        """
        try:
            checkpoint = read_checkpoint(path, map_location=map_location, weights_only=weights_only)
            check_finite(checkpoint, path)
        except CheckpointError as error:
            raise CheckpointError(
                f"{error}. Not resuming from it: {_others_untouched(Path(path))}"
            ) from error
        return checkpoint


def _others_untouched(path: Path) -> str:
    others = sorted(other.name for other in path.parent.glob("*.ckpt") if other.name != path.name)
    if not others:
        return (
            f"nothing was written; {path.parent} holds no other checkpoint (start again "
            "without ckpt_path)"
        )
    return (
        f"nothing was written, and the other checkpoints in {path.parent} are untouched "
        f"({', '.join(others)}): pass one as ckpt_path, or start again without ckpt_path"
    )


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM (SLURM pre-emption, ``kill``), save ``last.ckpt`` at a batch boundary, then exit.

    Lightning turns SIGTERM into ``SIGTERMException`` once the current batch is done; this
    callback writes the checkpoint the resumed run continues from.

    Args:
        dirpath: the folder of ``last.ckpt`` (the same as the last-checkpoint callback's).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Save the run's state if the exception is Lightning's reaction to SIGTERM."""
        if isinstance(exception, SIGTERMException):
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path)
            log.warning(
                "SIGTERM at step %d: saved %s; resume with ckpt_path=%s",
                trainer.global_step,
                path,
                path,
            )
