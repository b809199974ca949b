"""The LightningModule: contrastive loss, optimiser, schedule and dev evaluation for a ColBERT."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
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
    distillation_kl,
    false_negative_mask,
    group_scores,
    in_batch_cross_entropy,
    in_batch_targets,
    nway_cross_entropy,
)
from colbert_lightning.modeling import ColBERT, TokenEmbeddings
from colbert_lightning.retrieval.encode import TokenizedBatches, encoder_device, tokenize_by_length
from colbert_lightning.retrieval.exact import exact_rankings, rerank
from colbert_lightning.scoring import maxsim, maxsim_gathered, maxsim_grouped, maxsim_in_chunks
from colbert_lightning.training.distributed import (
    all_gather_objects,
    gather_documents,
    gather_keys,
    process_group,
    rank_and_world_size,
)

log = logging.getLogger(__name__)

WEIGHT_DECAY_EXCLUDE = ("bias", "LayerNorm", "layer_norm")
"""Parameter-name fragments exempt from weight decay by default: biases and norms."""

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


@dataclass
class BatchLoss:
    """What :meth:`ColBERTModule.batch_loss` computes for one batch.

    Attributes:
        loss: the scalar training loss, ``contrastive_weight * contrastive +
            distillation_weight * distillation``.
        positive_scores: (B,) each query's score for its positive.
        false_negatives: () documents left out of the softmax as relevant to a query without
            being its target, summed over the batch's queries (0 when masking is off).
        contrastive: the cross-entropy term, or None when its weight is 0.
        distillation: the KL term, or None when its weight is 0.
    """

    loss: torch.Tensor
    positive_scores: torch.Tensor
    false_negatives: torch.Tensor
    contrastive: torch.Tensor | None = None
    distillation: torch.Tensor | None = None


class ColBERTModule(pl.LightningModule):
    """Trains a :class:`ColBERT` by cross-entropy and/or distillation from a teacher's scores.

    Cross-entropy is over each query's n-way documents and (by default) every other document
    of the batch; the KL divergence to the teacher is over the n-way documents.

    Args:
        model: the ColBERT to train (injected; built from ``model/`` config).
        optimizer: partial optimiser, completed with the parameters (``_partial_: true``).
        scheduler: partial schedule, completed with the optimiser and ``max_steps``; or None.
        in_batch_negatives: score each query against every document of the batch, not only
            its own n-way group (the cross-entropy term; the KL term is over the n-way group).
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
        contrastive_weight: weight of the cross-entropy term (0: distillation only).
        distillation_weight: weight of the KL term to the teacher's scores (0: none); the
            training data must carry teacher scores (``TrainingBatch.teacher_scores``).
        teacher_temperature: the teacher's scores are divided by it before its softmax.
        cached: GradCache: encode the batch without a graph, take the loss's gradient with
            respect to the embeddings over the whole batch, then encode ``cache_chunk_size``
            queries (and their documents) at a time with a graph and back-propagate that
            gradient. The same loss and gradients as the uncached step (with dropout, each
            chunk replays its own random state), with activation memory of one chunk.
        cache_chunk_size: queries per re-encoded chunk when ``cached``.
        document_buckets: encode each batch's documents in up to this many groups of similar
            length, each padded to its own longest (:meth:`ColBERT.encode_documents`): less
            encoder work when lengths vary; the same step without dropout, up to float
            rounding. 1 (default): one call over the whole padded batch.
    """

    def __init__(
        self,
        model: ColBERT,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        in_batch_negatives: bool = True,
        gather_across_devices: bool = False,
        weight_decay_exclude: tuple[str, ...] = WEIGHT_DECAY_EXCLUDE,
        skip_nonfinite: bool = False,
        gathered_maxsim: bool = False,
        mask_false_negatives: bool = True,
        temperature: float = 1.0,
        contrastive_weight: float = 1.0,
        distillation_weight: float = 0.0,
        teacher_temperature: float = 1.0,
        cached: bool = False,
        cache_chunk_size: int = 32,
        document_buckets: int = 1,
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
        for name, value in (
            ("temperature", temperature),
            ("teacher_temperature", teacher_temperature),
        ):
            if not value > 0:
                raise ValueError(f"module.{name} must be > 0, got {value!r}")
        for name, value in (
            ("contrastive_weight", contrastive_weight),
            ("distillation_weight", distillation_weight),
        ):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"module.{name} must be a finite number >= 0, got {value!r}")
        if contrastive_weight == 0 and distillation_weight == 0:
            raise ValueError(
                "module.contrastive_weight and module.distillation_weight are both 0: no loss "
                "to train on"
            )
        for name, value in (
            ("cache_chunk_size", cache_chunk_size),
            ("document_buckets", document_buckets),
        ):
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"module.{name} must be an integer >= 1, got {value!r}")
        self.mask_false_negatives = mask_false_negatives
        self.temperature = float(temperature)
        self.contrastive_weight = float(contrastive_weight)
        self.distillation_weight = float(distillation_weight)
        self.teacher_temperature = float(teacher_temperature)
        self.cached = cached
        self.cache_chunk_size = cache_chunk_size
        self.document_buckets = document_buckets
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
        if self.cached and str(self.trainer.precision).startswith("16"):
            raise ValueError(
                "module.cached=true does not work with fp16 (trainer.precision=16-mixed): the "
                "embeddings' gradients are taken before the loss scaler could scale them; use "
                "bf16-mixed or 32"
            )

    # ---- training -------------------------------------------------------------------------

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> torch.Tensor | None:
        """Encode the batch, score it and return the loss (None: skip the batch)."""
        self.examples_seen += len(batch) * self.trainer.world_size
        self.skipped_lines += batch.skipped_lines
        result = self.cached_batch_loss(batch) if self.cached else self.batch_loss(batch)
        loss = result.loss
        if not torch.isfinite(loss):
            return self._nonfinite(loss)
        batch_size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, term in (
            ("contrastive", result.contrastive),
            ("distillation", result.distillation),
        ):
            # each term apart only when there are two: with one, it is train/loss
            if term is not None and (self.contrastive_weight and self.distillation_weight):
                self.log(f"train/{name}_loss", term.detach(), batch_size=batch_size)
        self.log(
            "train/positive_score", result.positive_scores.mean().detach(), batch_size=batch_size
        )
        false_negatives = result.false_negatives.float() / batch_size
        self.log("train/false_negatives_per_query", false_negatives, batch_size=batch_size)
        self.log("train/examples_seen", float(self.examples_seen), batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def batch_loss(self, batch: TrainingBatch) -> BatchLoss:
        """The batch's loss, each query's positive score and the masked false negatives.

        No logging, no counters: ``training_step`` calls this; ``benchmarks/throughput.py``
        times it without a Trainer.
        """
        queries = self.model.encode_queries(batch.queries)  # (B, Lq, dim)
        documents = self.model.encode_documents(
            batch.documents, self.document_buckets
        )  # (B * nway, Ld, dim)
        return self.loss_of_embeddings(batch, queries, documents)

    def loss_of_embeddings(
        self,
        batch: TrainingBatch,
        queries: TokenEmbeddings,
        documents: TokenEmbeddings,
        score_chunk_size: int | None = None,
    ) -> BatchLoss:
        """:meth:`batch_loss` from the batch's query and document embeddings.

        ``score_chunk_size``: score the in-batch documents that many queries at a time
        (:func:`maxsim_in_chunks`), bounding MaxSim's memory; None scores them at once.
        """
        batch_size, nway = len(batch), batch.nway
        teacher_scores = self._teacher_scores(batch)
        similarity = self.model.config.similarity
        masking = self.mask_false_negatives and batch.relevant_keys is not None
        mask = None
        contrastive = None
        if self.in_batch_negatives and self.contrastive_weight > 0:
            doc_embeddings, doc_mask, offset = documents.embeddings, documents.mask, 0
            document_keys, query_keys = batch.document_keys, batch.query_keys
            if self.gather_across_devices and self.trainer.world_size > 1:
                doc_embeddings, doc_mask, offset = gather_documents(doc_embeddings, doc_mask)
                if masking:
                    document_keys, query_keys = gather_keys(document_keys), gather_keys(query_keys)
            if score_chunk_size is not None:
                scores = maxsim_in_chunks(
                    queries.embeddings,
                    queries.mask,
                    doc_embeddings,
                    doc_mask,
                    similarity,
                    score_chunk_size,
                )
            else:
                score = maxsim_gathered if self.gathered_maxsim else maxsim
                scores = score(
                    queries.embeddings, queries.mask, doc_embeddings, doc_mask, similarity
                )
            targets = in_batch_targets(batch_size, nway, offset, scores.device)
            if masking:
                # another row asking the same query: its positive is relevant to this one too
                same_query = batch.query_keys.unsqueeze(1) == query_keys.unsqueeze(0)  # (B, B')
                positives = document_keys[::nway].unsqueeze(0).expand_as(same_query)  # (B, B')
                relevant = torch.cat(
                    [batch.relevant_keys, positives.masked_fill(~same_query, NO_KEY)], dim=1
                )
                mask = false_negative_mask(document_keys, relevant, targets)  # (B, N)
            contrastive = in_batch_cross_entropy(scores, nway, offset, self.temperature, mask)
            grouped = group_scores(scores, nway, offset)  # (B, nway)
        else:
            doc_length, dim = documents.embeddings.shape[1:]
            grouped = maxsim_grouped(
                queries.embeddings,
                queries.mask,
                documents.embeddings.view(batch_size, nway, doc_length, dim),
                documents.mask.view(batch_size, nway, doc_length),
                similarity,
            )  # (B, nway)
            if self.contrastive_weight > 0:
                if masking:
                    targets = torch.zeros(batch_size, dtype=torch.long, device=grouped.device)
                    grouped_keys = batch.document_keys.view(batch_size, nway)
                    mask = false_negative_mask(grouped_keys, batch.relevant_keys, targets)
                contrastive = nway_cross_entropy(grouped, self.temperature, mask)
        distillation = None
        if teacher_scores is not None:
            distillation = distillation_kl(
                grouped, teacher_scores, self.temperature, self.teacher_temperature
            )
        loss = sum(
            weight * term
            for weight, term in (
                (self.contrastive_weight, contrastive),
                (self.distillation_weight, distillation),
            )
            if term is not None
        )
        false_negatives = torch.zeros((), device=loss.device) if mask is None else mask.sum()
        return BatchLoss(loss, grouped[:, 0], false_negatives, contrastive, distillation)

    def _teacher_scores(self, batch: TrainingBatch) -> torch.Tensor | None:
        """(B, nway) teacher scores when the KL term is on; None when it is off."""
        if self.distillation_weight == 0:
            return None
        if batch.teacher_scores is None:
            raise ValueError(
                f"module.distillation_weight={self.distillation_weight} needs teacher scores in "
                "the training data, which has none: use data.train.format=scored_jsonl, or "
                "colbert_ids with [pid, score] pairs (python -m colbert_lightning.score_candidates "
                "writes both), or set module.distillation_weight=0"
            )
        expected = (len(batch), batch.nway)
        if tuple(batch.teacher_scores.shape) != expected:
            raise ValueError(
                f"teacher scores of shape {tuple(batch.teacher_scores.shape)} for a batch of "
                f"{expected[0]} queries x {expected[1]} documents"
            )
        return batch.teacher_scores

    def cached_batch_loss(self, batch: TrainingBatch) -> BatchLoss:
        """:meth:`batch_loss` by GradCache: the loss, whose backward gives the uncached gradients.

        1. Encode every query and document without a graph, ``cache_chunk_size`` queries (and
           their ``nway`` documents) at a time, keeping each chunk's random state.
        2. Compute the loss over the whole batch from those embeddings (gathered across
           processes as usual) and its gradient with respect to them, scoring the in-batch
           documents ``cache_chunk_size`` queries at a time (:func:`maxsim_in_chunks`: MaxSim
           over the whole batch would otherwise take more memory than the encoder).
        3. Encode each chunk again with a graph, under its own random state (the same dropout),
           and back-propagate the embeddings' gradient to the weights.

        Step 3 takes the weights' gradients with ``torch.autograd.grad`` for every chunk but the
        last: they stay out of ``.grad``, where Lightning would zero them before its backward,
        and do not fire DDP's hooks, which expect one backward per step. The returned loss has
        the batch's loss as its value; its backward (Lightning's) adds the last chunk's
        gradient and the earlier chunks' sum, so DDP reduces them once, together.
        """
        chunks = [
            slice(start, min(start + self.cache_chunk_size, len(batch)))
            for start in range(0, len(batch), self.cache_chunk_size)
        ]
        states, query_parts, document_parts = [], [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(_get_rng_states())
                queries, documents = self._encode_chunk(batch, chunk)
                query_parts.append(queries)
                document_parts.append(documents)
        after = _get_rng_states()
        queries = _leaf(query_parts)
        documents = _leaf(document_parts)
        result = self.loss_of_embeddings(batch, queries, documents, self.cache_chunk_size)
        if not torch.isfinite(result.loss):
            return result
        query_grads, document_grads = torch.autograd.grad(
            result.loss, [queries.embeddings, documents.embeddings]
        )
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        earlier: list[torch.Tensor | None] = [None] * len(parameters)
        surrogate = None
        for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            _set_rng_states(state)
            chunk_queries, chunk_documents = self._encode_chunk(batch, chunk)
            document_rows = _document_rows(chunk, batch.nway)
            surrogate = (chunk_queries.embeddings * query_grads[chunk]).sum() + (
                chunk_documents.embeddings * document_grads[document_rows]
            ).sum()
            if index == len(chunks) - 1:
                break
            grads = torch.autograd.grad(surrogate, parameters, allow_unused=True)
            for position, grad in enumerate(grads):
                if grad is not None:
                    total = earlier[position]
                    earlier[position] = grad if total is None else total.add_(grad)
        _set_rng_states(after)
        assert surrogate is not None
        surrogate = surrogate + sum(
            (parameter * grad).sum()
            for parameter, grad in zip(parameters, earlier, strict=True)
            if grad is not None
        )
        # the batch's loss as the value, the surrogate's gradient as the gradient
        loss = result.loss.detach() + surrogate - surrogate.detach()
        return replace(
            result,
            loss=loss,
            positive_scores=result.positive_scores.detach(),
            contrastive=None if result.contrastive is None else result.contrastive.detach(),
            distillation=None if result.distillation is None else result.distillation.detach(),
        )

    def _encode_chunk(
        self, batch: TrainingBatch, chunk: slice
    ) -> tuple[TokenEmbeddings, TokenEmbeddings]:
        """The embeddings of queries ``chunk`` and of their documents."""
        queries = self.model.encode_queries(batch.queries[chunk])
        documents = self.model.encode_documents(
            batch.documents[_document_rows(chunk, batch.nway)], self.document_buckets
        )
        return queries, documents

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


def _document_rows(chunk: slice, nway: int) -> slice:
    """The batch's document rows of the queries ``chunk``: ``nway`` per query."""
    return slice(chunk.start * nway, chunk.stop * nway)


def _leaf(parts: list[TokenEmbeddings]) -> TokenEmbeddings:
    """The chunks' embeddings joined, as a leaf the loss's gradient is taken with respect to."""
    embeddings = torch.cat([part.embeddings for part in parts]).requires_grad_(True)
    return TokenEmbeddings(embeddings, torch.cat([part.mask for part in parts]))
