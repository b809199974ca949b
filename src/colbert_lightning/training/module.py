"""The LightningModule: contrastive loss, optimiser, schedule and dev evaluation for a ColBERT."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from colbert_lightning.data.beir import DevSet
from colbert_lightning.data.types import NO_KEY, TrainingBatch
from colbert_lightning.evaluation.metrics import RetrievalMetrics
from colbert_lightning.evaluation.precision import EvaluationPrecision, search_autocast
from colbert_lightning.losses import (
    false_negative_mask,
    in_batch_cross_entropy,
    in_batch_targets,
    nway_cross_entropy,
)
from colbert_lightning.modeling import ColBERT
from colbert_lightning.retrieval.encode import TokenizedBatches, encoder_device, tokenize_by_length
from colbert_lightning.retrieval.exact import exact_rankings, rerank
from colbert_lightning.scoring import maxsim, maxsim_gathered, maxsim_grouped
from colbert_lightning.training.distributed import (
    all_gather_objects,
    gather_documents,
    gather_keys,
    process_group,
    rank_and_world_size,
)

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


@dataclass
class ContrastiveLoss:
    """What :meth:`ColBERTModule.contrastive_loss` computes for one batch.

    Attributes:
        loss: the scalar mean loss.
        positive_scores: (B,) each query's score for its positive.
        false_negatives: () documents left out of the softmax as relevant to a query without
            being its target, summed over the batch's queries (0 when masking is off).
    """

    loss: torch.Tensor
    positive_scores: torch.Tensor
    false_negatives: torch.Tensor


class ColBERTModule(pl.LightningModule):
    """Trains a :class:`ColBERT` with cross-entropy over n-way and in-batch documents.

    Args:
        model: the ColBERT to train (injected; built from ``model/`` config).
        optimizer: partial optimiser, completed with the parameters (``_partial_: true``).
        scheduler: partial schedule, completed with the optimiser and ``max_steps``; or None.
        in_batch_negatives: score each query against every document of the batch, not only
            its own n-way group.
        gather_across_devices: under DDP, also use the other processes' documents as in-batch
            negatives (gradients flow back to the process that encoded them).
        weight_decay_exclude: parameter-name fragments exempt from weight decay.
        skip_nonfinite: skip a batch whose loss is NaN or infinite (no update; counted)
            instead of stopping the run. Single-process training only.
        gathered_maxsim: score in-batch negatives with :func:`maxsim_gathered` (the same
            scores and gradients up to float rounding, a much cheaper backward pass) instead
            of :func:`maxsim`. Off by default so that recorded runs reproduce bit for bit.
        mask_false_negatives: leave out of each query's softmax every document known to be
            relevant to it other than its target: other rows' positives for the same query
            (same normalised text), and documents the training qrels judge relevant.
        temperature: scores are divided by it before the softmax (ColBERT uses 1).
    """

    def __init__(
        self,
        model: ColBERT,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        in_batch_negatives: bool = True,
        gather_across_devices: bool = False,
        weight_decay_exclude: tuple[str, ...] = ("bias", "LayerNorm", "layer_norm"),
        skip_nonfinite: bool = False,
        gathered_maxsim: bool = False,
        mask_false_negatives: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.in_batch_negatives = in_batch_negatives
        self.gather_across_devices = gather_across_devices
        self.weight_decay_exclude = tuple(weight_decay_exclude)
        self.skip_nonfinite = skip_nonfinite
        self.gathered_maxsim = gathered_maxsim
        if not temperature > 0:
            raise ValueError(f"module.temperature must be > 0, got {temperature!r}")
        self.mask_false_negatives = mask_false_negatives
        self.temperature = float(temperature)
        # Counters, saved in checkpoints. Updated inside training_step, because checkpoint
        # callbacks run before the module's own on_train_batch_end.
        self.examples_seen = 0  # across all processes
        self.skipped_lines = 0  # bad training lines skipped by this process' workers
        self.nonfinite_batches = 0  # batches skipped for a non-finite loss
        self._checkpoint_metadata: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        # per evaluated corpus (the dev set's, extra collections'): its texts, (batch size,
        # rank, world size) and its tokens (_dev_rankings), keyed by the texts' identity
        self._dev_tokens: dict[int, tuple[list[str], tuple[int, ...], TokenizedBatches]] = {}

    def setup(self, stage: str) -> None:
        """Refuse option combinations that cannot work."""
        if self.skip_nonfinite and self.trainer.world_size > 1:
            raise ValueError(
                "module.skip_nonfinite=true works in single-process training only: under DDP a "
                "skipped batch on one process would stall the others' gradient all-reduce"
            )

    # ---- training -------------------------------------------------------------------------

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> torch.Tensor | None:
        """Encode the batch, score it and return the contrastive loss (None: skip the batch)."""
        self.examples_seen += len(batch) * self.trainer.world_size
        self.skipped_lines += batch.skipped_lines
        result = self.contrastive_loss(batch)
        loss = result.loss
        if not torch.isfinite(loss):
            return self._nonfinite(loss)
        batch_size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/positive_score", result.positive_scores.mean().detach(), batch_size=batch_size
        )
        false_negatives = result.false_negatives.float() / batch_size
        self.log("train/false_negatives_per_query", false_negatives, batch_size=batch_size)
        self.log("train/examples_seen", float(self.examples_seen), batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def contrastive_loss(self, batch: TrainingBatch) -> ContrastiveLoss:
        """The batch's loss, each query's positive score and the masked false negatives.

        No logging, no counters: ``training_step`` calls this; ``benchmarks/throughput.py``
        times it without a Trainer.
        """
        queries = self.model.encode_queries(batch.queries)  # (B, Lq, dim)
        documents = self.model.encode_documents(batch.documents)  # (B * nway, Ld, dim)
        batch_size, nway = len(batch), batch.nway
        similarity = self.model.config.similarity
        masking = self.mask_false_negatives and batch.relevant_keys is not None
        mask = None
        if self.in_batch_negatives:
            doc_embeddings, doc_mask, offset = documents.embeddings, documents.mask, 0
            document_keys, query_keys = batch.document_keys, batch.query_keys
            if self.gather_across_devices and self.trainer.world_size > 1:
                doc_embeddings, doc_mask, offset = gather_documents(doc_embeddings, doc_mask)
                if masking:
                    document_keys, query_keys = gather_keys(document_keys), gather_keys(query_keys)
            score = maxsim_gathered if self.gathered_maxsim else maxsim
            scores = score(queries.embeddings, queries.mask, doc_embeddings, doc_mask, similarity)
            targets = in_batch_targets(batch_size, nway, offset, scores.device)
            if masking:
                # another row asking the same query: its positive is relevant to this one too
                same_query = batch.query_keys.unsqueeze(1) == query_keys.unsqueeze(0)  # (B, B')
                positives = document_keys[::nway].unsqueeze(0).expand_as(same_query)  # (B, B')
                relevant = torch.cat(
                    [batch.relevant_keys, positives.masked_fill(~same_query, NO_KEY)], dim=1
                )
                mask = false_negative_mask(document_keys, relevant, targets)  # (B, N)
            loss = in_batch_cross_entropy(scores, nway, offset, self.temperature, mask)
            own = scores[torch.arange(batch_size), targets]
        else:
            doc_length, dim = documents.embeddings.shape[1:]
            scores = maxsim_grouped(
                queries.embeddings,
                queries.mask,
                documents.embeddings.view(batch_size, nway, doc_length, dim),
                documents.mask.view(batch_size, nway, doc_length),
                similarity,
            )  # (B, nway)
            if masking:
                targets = torch.zeros(batch_size, dtype=torch.long, device=scores.device)
                grouped_keys = batch.document_keys.view(batch_size, nway)
                mask = false_negative_mask(grouped_keys, batch.relevant_keys, targets)
            loss = nway_cross_entropy(scores, self.temperature, mask)
            own = scores[:, 0]
        false_negatives = torch.zeros((), device=loss.device) if mask is None else mask.sum()
        return ContrastiveLoss(loss, own, false_negatives)

    def _nonfinite(self, loss: torch.Tensor) -> None:
        step = self.trainer.global_step
        if not self.skip_nonfinite:
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {step}: stopping; the last "
                "checkpoint written before it is kept. Lower module.optimizer.lr, check the "
                "data, or set module.skip_nonfinite=true to skip such batches"
            )
        self.nonfinite_batches += 1
        log.warning("non-finite loss (%s) at step %d: batch skipped", loss.item(), step)
        self.log("train/nonfinite_batches", float(self.nonfinite_batches))
        return None  # Lightning skips backward and the update

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, and also for a fused optimiser under ``bf16-mixed``.

        Lightning refuses to clip when the optimiser unscales gradients itself (fused AdamW),
        a concern only with fp16's gradient scaler: bf16 has none, so the gradients are final
        here and are clipped directly.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if (
            gradient_clip_val
            and scaler is None
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_start(self, batch: TrainingBatch, batch_idx: int) -> None:
        """After a resume, continue with the random state the interrupted run had here."""
        if self._rng_to_restore is not None:
            _set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

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

    # ---- evaluation -----------------------------------------------------------------------

    def evaluate_retrieval(
        self,
        dev_set: DevSet,
        mode: str = "exact",
        batch_size: int = 64,
        k: int = 100,
        precision: EvaluationPrecision = "32",
    ) -> dict[str, float]:
        """Retrieval metrics of the current weights on ``dev_set``.

        Under DDP the processes share the work (see ``_dev_rankings``), so every process must
        call this, with the same arguments.

        Args:
            dev_set: corpus, queries and judgments (and candidates for ``rerank``).
            mode: ``exact`` searches the whole corpus with MaxSim; ``rerank`` scores only each
                query's candidates.
            batch_size: texts per encoder call.
            k: ranking depth kept per query.
            precision: ``32`` encodes and scores in float32; ``bf16`` under bfloat16 autocast;
                ``auto`` is ``bf16`` where the device computes it natively, else ``32``.

        Returns:
            ``{"mrr@10": ..., "recall@10": ..., "recall@100": ..., "ndcg@10": ...}``; under DDP
            every process returns the single-process figures (each does a share of the work).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            with search_autocast(encoder_device(self.model), precision):
                rankings = self._dev_rankings(dev_set, mode, batch_size, k)
        finally:
            self.model.train(was_training)
        # every process holds the same, complete rankings: merging them would count each query
        # once per process
        metrics = RetrievalMetrics(sync_on_compute=False).to("cpu")
        metrics.update(rankings, dev_set.qrels)
        return {name: float(value) for name, value in metrics.compute().items()}

    def _dev_rankings(
        self, dev_set: DevSet, mode: str, batch_size: int, k: int
    ) -> dict[str, list[tuple[str, float]]]:
        """Every dev query's ranking; under DDP each process does a share and all get them all.

        ``exact``: each process encodes and scores every world_size-th batch of the corpus;
        ``rerank``: each ranks every world_size-th batch of queries (see ``exact_search`` and
        ``rerank``). Either way the rankings equal a single process', ties included.
        """
        group = process_group()  # None in a single process
        show_progress = group is None or group.rank == 0
        if mode == "exact":
            # the corpus' tokens (this process' share) do not change between evaluations:
            # tokenise them once
            key = (batch_size, *((0, 1) if group is None else (group.rank, group.world_size)))
            cached = self._dev_tokens.get(id(dev_set.corpus_texts))
            if cached is None or cached[0] is not dev_set.corpus_texts or cached[1] != key:
                tokens = tokenize_by_length(
                    self.model.tokenizer, dev_set.corpus_texts, batch_size, group
                )
                cached = (dev_set.corpus_texts, key, tokens)
                self._dev_tokens[id(dev_set.corpus_texts)] = cached
            return exact_rankings(
                self.model,
                dev_set.corpus_ids,
                dev_set.corpus_texts,
                dev_set.queries,
                k=k,
                batch_size=batch_size,
                show_progress=show_progress,
                corpus_tokens=cached[2],
                group=group,
            )
        if mode == "rerank":
            if dev_set.candidates is None:
                raise ValueError("evaluation mode 'rerank' needs data.dev.candidates")
            return rerank(
                self.model,
                dev_set.queries,
                dev_set.candidates,
                dict(zip(dev_set.corpus_ids, dev_set.corpus_texts, strict=True)),
                batch_size=batch_size,
                show_progress=show_progress,
                group=group,
            )
        raise ValueError(f"evaluation mode must be exact or rerank, got {mode!r}")

    # ---- checkpoints ----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what rebuilds the model offline, the run's counters and the random states.

        Lightning calls this on every process and writes the checkpoint from rank 0: the
        random states of all processes are gathered into it, a list indexed by rank.
        """
        if self._checkpoint_metadata is None:
            self._checkpoint_metadata = self.model.checkpoint_metadata()
        checkpoint["colbert"] = self._checkpoint_metadata
        checkpoint["colbert_counters"] = {
            "examples_seen": self.examples_seen,
            "skipped_lines": self.skipped_lines,
            "nonfinite_batches": self.nonfinite_batches,
        }
        checkpoint["colbert_rng"] = all_gather_objects(_get_rng_states())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the counters; this process' random state is restored when training resumes."""
        counters = checkpoint.get("colbert_counters", {})
        self.examples_seen = int(counters.get("examples_seen", 0))
        self.skipped_lines = int(counters.get("skipped_lines", 0))
        self.nonfinite_batches = int(counters.get("nonfinite_batches", 0))
        self._rng_to_restore = _rng_states_of_this_process(checkpoint.get("colbert_rng"))


def _get_rng_states() -> dict[str, Any]:
    # Plain types and tensors only: Lightning loads checkpoints with ``weights_only=True``.
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [algorithm, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _rng_states_of_this_process(
    saved: list[dict[str, Any]] | dict[str, Any] | None,
) -> dict[str, Any] | None:
    """This process' random states from a checkpoint's ``colbert_rng`` (None: nothing saved).

    Checkpoints hold one entry per process, indexed by rank. Older checkpoints hold a single
    entry, the writing process' (rank 0's). When the number of processes differs from the
    run that wrote the checkpoint, there is no state of this process to restore: every process
    takes rank 0's, and a warning says so.
    """
    if saved is None:
        return None
    rank, world_size = rank_and_world_size()
    if isinstance(saved, dict):
        if world_size > 1 and rank == 0:
            log.warning(
                "the checkpoint holds one random state (an older format, written by rank 0): "
                "all %d processes resume with it",
                world_size,
            )
        return saved
    if len(saved) != world_size:
        if rank == 0:
            log.warning(
                "the checkpoint holds the random states of %d processes, this run has %d: "
                "every process resumes with rank 0's",
                len(saved),
                world_size,
            )
        return saved[0]
    return saved[rank]


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    algorithm, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state(
        (algorithm, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian)
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def optimisation(
    model: torch.nn.Module,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    scheduler_factory: Callable[..., Any] | None,
    weight_decay_exclude: tuple[str, ...],
    max_steps: int | None,
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the optimiser, and the schedule stepped per step.

    Parameters whose name holds one of ``weight_decay_exclude`` (biases, norms) are in a group
    without weight decay; frozen parameters are left out. ``max_steps`` sizes the schedule
    (unused without one).
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            excluded = any(fragment in name for fragment in weight_decay_exclude)
            (no_decay if excluded else decay).append(parameter)
    optimizer = optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    if scheduler_factory is None:
        return {"optimizer": optimizer}
    scheduler = scheduler_factory(optimizer, max_steps=max_steps)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }
