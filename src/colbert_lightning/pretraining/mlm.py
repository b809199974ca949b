"""Masked-language-model pretraining of a BERT encoder from random weights.

``pretrain(cfg)`` (``python -m colbert_lightning.pretrain``) builds a ``BertForMaskedLM`` of the
configured size on the configured vocabulary, trains it on packed, masked sequences of the
corpora (:mod:`colbert_lightning.pretraining.packing`), evaluates it on held-out sequences at
step 0 and on an early-phase schedule, and writes ``<output_dir>/encoder/``: the encoder alone
(no MLM head, no pooler) and the tokenizer, which ColBERT training loads with
``model.init=pretrained model.name_or_path=<output_dir>/encoder``; then ``pretrain.json``, last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM, PreTrainedTokenizerBase

from colbert_lightning.config.checks import ConfigError, check_optimisation
from colbert_lightning.data.corpora import corpus_files
from colbert_lightning.evaluation.schedule import EvaluationSchedule
from colbert_lightning.modeling.checkpoints import temporary_path
from colbert_lightning.pretraining.packing import IGNORE_INDEX, MaskedBatch
from colbert_lightning.training.callbacks import ScheduledEvaluation
from colbert_lightning.training.module import WEIGHT_DECAY_EXCLUDE, optimisation
from colbert_lightning.training.trainer import (
    build_trainer,
    finish_wandb_runs,
    save_last_checkpoint,
    start_run,
)

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]
_RECENT_STEPS = 16  # training batches averaged into pretrain.json's final training figures


# ---- model ------------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The vocabulary: a folder (a tokenizer trainer's output, the shipped one) or a hub name.

    Raises:
        ConfigError: nothing loads from ``name_or_path``.
    """
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"tokenizer={name_or_path}: no tokenizer there ({error})") from None


def build_masked_lm(
    encoder_config: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> BertForMaskedLM:
    """A BERT with an MLM head, every weight random, sized by ``encoder_config``.

    Args:
        encoder_config: ``transformers`` config keys (``model_type: bert``, ``hidden_size``,
            ...), as ``model.encoder_config`` in ``conf/model/tiny.yaml``.
        tokenizer: its length is the vocabulary size; its ``[PAD]`` is the padding id.
        max_length: the longest sequence trained on (<= ``max_position_embeddings``).

    Raises:
        ConfigError: not a BERT, a ``vocab_size`` other than the tokenizer's, or positions
            fewer than ``max_length``.
    """
    values = dict(encoder_config)
    if values.get("model_type") != "bert":
        raise ConfigError(
            "encoder_config.model_type must be bert (a BertForMaskedLM is pretrained), got "
            f"{values.get('model_type')!r}"
        )
    vocab_size = len(tokenizer)
    if values.setdefault("vocab_size", vocab_size) != vocab_size:
        raise ConfigError(
            f"encoder_config.vocab_size={values['vocab_size']} but the tokenizer has "
            f"{vocab_size} tokens: leave vocab_size out"
        )
    values["pad_token_id"] = tokenizer.pad_token_id
    try:
        config = AutoConfig.for_model(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"encoder_config: {error}") from None
    if config.max_position_embeddings < max_length:
        raise ConfigError(
            f"data.max_length={max_length} exceeds encoder_config.max_position_embeddings="
            f"{config.max_position_embeddings}"
        )
    return BertForMaskedLM(config)


def masked_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct predictions over the masked positions.

    Args:
        logits: (M, V) the head's scores at the M masked positions.
        targets: (M,) the original token at each.

    Returns:
        ``(loss_sum, correct)``: two scalars; divide both by M for the means.

    Example (a wrong and a confident right prediction of token 1):
        >>> logits = torch.tensor([[1.0, 0.0], [0.0, 9.0]])
        >>> loss, correct = masked_lm_loss(logits, torch.tensor([1, 1]))
        >>> round(loss.item(), 4), int(correct)  # ln(1 + e) + ln(1 + e^-9)
        (1.3134, 1)
    """
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets).sum()
    return loss, correct


# ---- training ---------------------------------------------------------------------------------


@dataclass
class MaskedLMResult:
    """What the model gets right on one batch.

    Attributes:
        loss_sum: () summed cross-entropy over the masked positions.
        correct: () masked positions whose top prediction is the original token.
        predicted: () masked positions.
    """

    loss_sum: torch.Tensor
    correct: torch.Tensor
    predicted: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Mean cross-entropy per masked position."""
        return self.loss_sum / self.predicted.clamp(min=1)

    @property
    def accuracy(self) -> torch.Tensor:
        """Fraction of masked positions predicted right."""
        return self.correct.float() / self.predicted.clamp(min=1)


class MaskedLanguageModel(pl.LightningModule):
    """Trains a ``BertForMaskedLM`` to predict masked tokens; scores held-out sequences.

    Args:
        model: the BERT with its MLM head (injected; :func:`build_masked_lm`).
        optimizer: partial optimiser, completed with the parameters (``_partial_: true``).
        scheduler: partial schedule, completed with the optimiser and ``max_steps``; or None.
        weight_decay_exclude: parameter-name fragments exempt from weight decay.
    """

    def __init__(
        self,
        model: BertForMaskedLM,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        weight_decay_exclude: tuple[str, ...] = WEIGHT_DECAY_EXCLUDE,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay_exclude = tuple(weight_decay_exclude)
        self.tokens_seen = 0  # across all processes; saved in checkpoints
        self.recent: deque[torch.Tensor] = deque(maxlen=_RECENT_STEPS)  # (loss, correct, count)

    def masked_predictions(self, batch: MaskedBatch) -> MaskedLMResult:
        """Encode the batch and score the head's predictions at its masked positions only.

        The head's vocabulary-sized output is computed for the masked positions alone
        (about 15% of the tokens): for a small encoder it is most of a step's work.
        """
        hidden = self.model.bert(input_ids=batch.input_ids).last_hidden_state  # (B, L, hidden)
        masked = batch.labels != IGNORE_INDEX  # (B, L)
        logits = self.model.cls(hidden[masked])  # (M, V)
        loss_sum, correct = masked_lm_loss(logits, batch.labels[masked])
        return MaskedLMResult(loss_sum, correct, masked.sum())

    def training_step(self, batch: MaskedBatch, batch_idx: int) -> torch.Tensor:
        """The mean cross-entropy over the batch's masked positions."""
        self.tokens_seen += batch.input_ids.numel() * self.trainer.world_size
        result = self.masked_predictions(batch)
        loss = result.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite MLM loss ({loss.item()}) at step {self.trainer.global_step}: "
                "stopping; lower module.optimizer.lr"
            )
        batch_size = len(batch)
        accuracy = result.accuracy.detach()
        self.log("train/mlm_loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/mlm_accuracy", accuracy, prog_bar=True, batch_size=batch_size)
        self.log("train/tokens_seen", float(self.tokens_seen), batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        # tensors, read only at the end: no device synchronisation per step
        figures = (result.loss_sum.detach(), result.correct, result.predicted)
        self.recent.append(torch.stack([figure.double() for figure in figures]))
        return loss

    def recent_training(self) -> dict[str, float] | None:
        """This process' MLM loss and accuracy over its last (up to 16) training batches."""
        if not self.recent:
            return None
        loss_sum, correct, predicted = torch.stack(list(self.recent)).sum(dim=0).tolist()
        return {
            "mlm_loss": loss_sum / predicted,
            "mlm_accuracy": correct / predicted,
            "batches": len(self.recent),
        }

    def evaluate(self, batches: list[MaskedBatch]) -> dict[str, float]:
        """MLM loss and accuracy over every masked position of ``batches`` (no update).

        Runs in eval mode without gradients, under the trainer's precision when there is one.
        Every process scores all the batches (they are few), so under DDP each returns the
        same figures without a collective.
        """
        was_training = self.model.training
        self.model.eval()
        precision = (
            self.trainer.precision_plugin.val_step_context()
            if self._trainer is not None
            else contextlib.nullcontext()
        )
        totals = torch.zeros(3, dtype=torch.float64)
        try:
            with torch.no_grad(), precision:
                for batch in batches:
                    batch = MaskedBatch(
                        batch.input_ids.to(self.device), batch.labels.to(self.device)
                    )
                    result = self.masked_predictions(batch)
                    totals += torch.tensor(
                        [result.loss_sum.item(), result.correct.item(), result.predicted.item()],
                        dtype=torch.float64,
                    )
        finally:
            self.model.train(was_training)
        loss_sum, correct, predicted = totals.tolist()
        return {"mlm_loss": loss_sum / predicted, "mlm_accuracy": correct / predicted}

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (or the configured optimiser) with decay off for biases and norms; the schedule."""
        # the trainer's steps only for a schedule: the optimiser alone needs no trainer
        max_steps = self.trainer.max_steps if self.scheduler_factory is not None else None
        return optimisation(
            self.model,
            self.optimizer_factory,
            self.scheduler_factory,
            self.weight_decay_exclude,
            max_steps,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The token count travels with checkpoints."""
        checkpoint["mlm_counters"] = {"tokens_seen": self.tokens_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the token count on resume."""
        self.tokens_seen = int(checkpoint.get("mlm_counters", {}).get("tokens_seen", 0))


class MaskedLanguageModelEvaluation(ScheduledEvaluation):
    """Scores the datamodule's held-out sequences at step 0 and on an early-phase schedule.

    ``val/mlm_loss`` and ``val/mlm_accuracy`` go to every logger at the optimiser step they
    describe, with ``trainer/tokens_seen``, and into ``trainer.callback_metrics``. A callback
    (not the module's own hook) so that it runs before the checkpoint callbacks of the same
    step: the history saved with a checkpoint includes that step's evaluation.

    Args:
        schedule: which optimiser steps to evaluate at.
    """

    def __init__(self, schedule: EvaluationSchedule) -> None:
        super().__init__(schedule)
        self.history: list[dict[str, float]] = []

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Score the held-out sequences now and log the figures."""
        batches = trainer.datamodule.validation_batches() if trainer.datamodule else []
        if not batches:
            return {}
        step = trainer.global_step
        metrics = pl_module.evaluate(batches)
        values = {f"val/{name}": value for name, value in metrics.items()}
        values["trainer/tokens_seen"] = float(pl_module.tokens_seen)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        self.history.append({"step": step, **values})
        self._last_step = step
        log.info(
            "step %d: val/mlm_loss=%.4f  val/mlm_accuracy=%.4f",
            step,
            values["val/mlm_loss"],
            values["val/mlm_accuracy"],
        )
        return values

    def state_dict(self) -> dict[str, Any]:
        """The history travels with checkpoints, so a resumed run keeps step 0."""
        return {"history": self.history, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history on resume."""
        self.history = list(state_dict.get("history", []))
        self._last_step = int(state_dict.get("last_step", -1))


# ---- output -----------------------------------------------------------------------------------


def save_encoder(
    model: BertForMaskedLM, tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike
) -> Path:
    """Write the encoder (``model.bert``: no MLM head, no pooler) and the tokenizer to ``folder``.

    Written to a temporary folder beside it (``.encoder.tmp-<pid>``), then renamed into place:
    ``folder`` holds either the previous encoder or the complete new one, never a mix.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an earlier write that was killed
    temporary = temporary_path(folder)
    previous = folder.with_name(f".{folder.name}.previous-{os.getpid()}")
    try:
        model.bert.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        if folder.exists():
            os.replace(folder, previous)
        os.replace(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
    return folder


# ---- one run ----------------------------------------------------------------------------------


def check_pretrain_config(cfg: DictConfig) -> None:
    """Fail fast, naming the key, on values that cannot work and on missing inputs.

    Values of the data and model are checked by the classes they build
    (``PackedCorpusDataModule``, :func:`build_masked_lm`), before any weight is built.

    Raises:
        ConfigError: the first problem found.
    """
    check_optimisation(cfg)
    try:
        corpus_files(list(cfg.corpora) if not isinstance(cfg.corpora, str) else cfg.corpora)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"corpora: {error}") from None
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain an encoder as ``cfg`` (``conf/pretrain.yaml``) describes; return pretrain.json.

    Writes ``<paths.output_dir>/checkpoints/last.ckpt`` (every
    ``callbacks.last_checkpoint.every_n_train_steps`` and at the end), ``encoder/`` and, last,
    ``pretrain.json``: its presence means the encoder is complete.
    """
    started = time.time()
    check_pretrain_config(cfg)
    threads = start_run(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer)
    # data before weights: a wrong value fails before any weight is built
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    encoder_config = OmegaConf.to_container(cfg.encoder_config, resolve=True)
    model = build_masked_lm(encoder_config, tokenizer, datamodule.max_length)
    module = instantiate(cfg.module, model=model)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    output_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    run = build_trainer(cfg, callbacks, checkpoint_dir)
    trainer, resolved, commit = run.trainer, run.config, run.commit
    parameters = sum(parameter.numel() for parameter in model.bert.parameters())
    log.info("pretraining a %s-parameter encoder from random weights", f"{parameters:,}")

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    save_last_checkpoint(trainer, checkpoint_dir)
    evaluation = next(
        (c for c in trainer.callbacks if isinstance(c, MaskedLanguageModelEvaluation)), None
    )
    history = evaluation.history if evaluation else []
    results = {
        "steps": trainer.global_step,
        "tokens_seen": module.tokens_seen,
        "seconds": round(time.time() - started, 1),
        "train": module.recent_training(),
        "val": history[-1] if history else None,
        "val_step0": next((row for row in history if row["step"] == 0), None),
        "uniform_loss": math.log(len(tokenizer)),
        "encoder": str(output_dir / "encoder"),
        "encoder_parameters": parameters,
        "corpora": [str(corpus) for corpus in cfg.corpora],
        "tokenizer": str(cfg.tokenizer),
        "cpu_threads": threads,
        "git_commit": commit,
        "config": resolved,
    }
    finish_wandb_runs(trainer)
    if trainer.is_global_zero:
        save_encoder(model, tokenizer, output_dir / "encoder")
        (output_dir / "pretrain.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("%s", summary_line(results))
        log.info("encoder: %s", output_dir / "encoder")
    return results


def summary_line(results: dict[str, Any]) -> str:
    """Step 0 and final held-out MLM figures, in one line."""
    parts = [f"{results['steps']} steps, {results['tokens_seen']:,} tokens, {results['seconds']} s"]
    for label in ("val_step0", "val"):
        row = results.get(label)
        if row:
            parts.append(
                f"step {int(row['step'])}: val/mlm_loss {row['val/mlm_loss']:.4f}, "
                f"val/mlm_accuracy {row['val/mlm_accuracy']:.4f}"
            )
    return "; ".join(parts)
