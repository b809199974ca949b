"""Cheap probes of what training does to a ColBERT, at the dev evaluation's steps.

At step 0 and on the early-phase schedule (:class:`~colbert_lightning.evaluation.schedule.
EvaluationSchedule`, the evaluation callback's own object) :class:`TrainingProbes` logs, under
``probe/``, what the dev metrics alone do not show while a retriever learns from zero:

- ``anisotropy``: the mean cosine similarity of two document token embeddings. Near 1, every
  token points the same way (a collapsed space); a healthy space sits well below.
- ``effective_rank``: how many dimensions the document token embeddings really use (Roy &
  Vetterli 2007), at most ``model.dim``.
- ``positive_mean``, ``hardest_negative_mean`` and ``margin_q10/q50/q90``: each probe query's
  MaxSim with its relevant document, with the best-scoring non-relevant candidate, and the
  quantiles of their difference (above 0: the relevant document wins).
- ``exact_match_share``: the share of query word pieces whose best-matching token in the
  relevant document is the same word piece: how much of the matching is lexical.
- ``grad_norm/<layer>`` and ``grad_norm/total``: the gradient norm of the embeddings, each
  encoder layer and the projection, before clipping.

The first four run on a fixed sample of the dev set (:func:`sample_probe_set`) in eval mode
without autograd; each is a pure function below, checkable by hand.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim import Optimizer

from colbert_lightning.data.beir import DevSet
from colbert_lightning.evaluation.curves import PROBE_PREFIX
from colbert_lightning.evaluation.schedule import EvaluationSchedule
from colbert_lightning.modeling import ColBERT, ColBERTTokenizer
from colbert_lightning.modeling.colbert import inference
from colbert_lightning.modeling.tokenization import TokenizedText
from colbert_lightning.retrieval.encode import encoder_device
from colbert_lightning.scoring import maxsim
from colbert_lightning.training.callbacks import ScheduledEvaluation

log = logging.getLogger(__name__)

MARGIN_QUANTILES = (0.1, 0.5, 0.9)
"""Logged as ``margin_q10``, ``margin_q50`` and ``margin_q90``."""


# ---- the probes, as pure functions ---------------------------------------------------------


def anisotropy(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity of two distinct token embeddings, over every pair.

    The value random pairs of tokens estimate, computed exactly and in O(N dim): for unit
    vectors ``v_i``, ``sum over i != j of <v_i, v_j> = |sum_i v_i|^2 - N``.

    Args:
        embeddings: (N, dim) token embeddings, N >= 2; each is scaled to unit length here.

    Example:
        >>> anisotropy(torch.eye(3))  # orthogonal
        0.0
        >>> round(anisotropy(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])), 4)  # 1/3
        0.3333
    """
    count = embeddings.shape[0]
    if count < 2:
        raise ValueError(f"anisotropy needs at least 2 embeddings, got {count}")
    unit = nn.functional.normalize(embeddings.double(), dim=-1)  # (N, dim)
    total = unit.sum(dim=0)  # (dim,)
    return float((total @ total - count) / (count * (count - 1)))


def effective_rank(matrix: torch.Tensor) -> float:
    """Effective rank: exp of the entropy of the singular values scaled to sum to 1.

    Roy & Vetterli (2007): a matrix with r equal non-zero singular values has effective rank r;
    unequal ones give less.

    Args:
        matrix: (N, dim), e.g. one row per token embedding.

    Example:
        >>> round(effective_rank(torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0]))), 6)
        3.0
        >>> round(effective_rank(torch.diag(torch.tensor([3.0, 1.0]))), 4)  # exp(H(3/4, 1/4))
        1.7548
    """
    singular = torch.linalg.svdvals(matrix.double())
    shares = singular / singular.sum()
    shares = shares[shares > 0]  # 0 log 0 = 0
    return float(torch.exp(-(shares * shares.log()).sum()))


def margin_statistics(
    scores: torch.Tensor, positives: torch.Tensor, relevant: torch.Tensor
) -> dict[str, float]:
    """Each query's relevant document against its hardest negative among the candidates.

    Args:
        scores: (Q, D) MaxSim of every query with every candidate document.
        positives: (Q,) the candidate index of each query's relevant document.
        relevant: (Q, D) True where a candidate is relevant to a query (its positive included):
            such a candidate is never a negative.

    Returns:
        ``positive_mean``, ``hardest_negative_mean`` and, of the margins ``positive - hardest
        negative``, the quantiles :data:`MARGIN_QUANTILES` as ``margin_q10`` and so on (linear
        interpolation, as numpy's default).

    Raises:
        ValueError: a query has no negative candidate.

    Example:
        >>> scores = torch.tensor([[5.0, 4.0, 1.0], [2.0, 3.0, 0.5]])
        >>> relevant = torch.tensor([[True, False, False], [False, True, True]])
        >>> stats = margin_statistics(scores, torch.tensor([0, 1]), relevant)
        >>> stats["positive_mean"], stats["hardest_negative_mean"], stats["margin_q50"]
        (4.0, 3.0, 1.0)
    """
    negatives = scores.float().masked_fill(relevant, float("-inf"))
    hardest = negatives.max(dim=1).values  # (Q,)
    if torch.isinf(hardest).any():
        raise ValueError("every probe query needs a candidate that is not relevant to it")
    positive = scores.float().gather(1, positives[:, None]).squeeze(1)  # (Q,)
    margins = positive - hardest
    levels = torch.tensor(MARGIN_QUANTILES, dtype=margins.dtype, device=margins.device)
    quantiles = torch.quantile(margins, levels)
    values = torch.stack([positive.mean(), hardest.mean(), *quantiles]).tolist()
    names = [
        "positive_mean",
        "hardest_negative_mean",
        *(f"margin_q{round(level * 100)}" for level in MARGIN_QUANTILES),
    ]
    return dict(zip(names, values, strict=True))


def query_word_mask(queries: TokenizedText, tokenizer: ColBERTTokenizer) -> torch.Tensor:
    """(Q, Lq) True at the queries' own word pieces.

    False at [CLS], the query marker, [SEP], and the [MASK] or [PAD] filling the rest.

    Args:
        queries: tokenised queries (``tokenizer.queries``).
        tokenizer: the tokeniser that made them.
    """
    hf_tokenizer = tokenizer.tokenizer
    special = torch.tensor(
        [
            hf_tokenizer.cls_token_id,
            hf_tokenizer.sep_token_id,
            hf_tokenizer.mask_token_id,
            hf_tokenizer.pad_token_id,
            tokenizer.query_token_id,
        ],
        device=queries.input_ids.device,
    )
    return ~torch.isin(queries.input_ids, special)


def exact_match_share(
    query_embeddings: torch.Tensor,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    document_embeddings: torch.Tensor,
    document_ids: torch.Tensor,
    document_mask: torch.Tensor,
) -> float:
    """Share of query tokens whose best-matching document token has the same token id.

    Query ``p`` is paired with document ``p``. The best match is the argmax of the dot product
    over the document's scored tokens: on unit vectors the same token as for ``cosine`` or
    ``l2`` similarity.

    Args:
        query_embeddings: (P, Lq, dim) query token embeddings.
        query_ids: (P, Lq) their token ids.
        query_mask: (P, Lq) True for the query tokens counted (:func:`query_word_mask`).
        document_embeddings: (P, Ld, dim) document token embeddings.
        document_ids: (P, Ld) their token ids.
        document_mask: (P, Ld) True for the document tokens that can be matched.

    Example:
        >>> queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # ids 7, 8
        >>> documents = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # ids 7, 8: crossed over
        >>> exact_match_share(queries, torch.tensor([[7, 8]]), torch.tensor([[True, True]]),
        ...                   documents, torch.tensor([[7, 8]]), torch.tensor([[True, True]]))
        0.0
    """
    similarities = torch.einsum("pid,pjd->pij", query_embeddings, document_embeddings)
    similarities = similarities.float().masked_fill(~document_mask[:, None, :], float("-inf"))
    best = similarities.argmax(dim=-1)  # (P, Lq)
    matched_ids = document_ids.gather(1, best)  # (P, Lq)
    same = (matched_ids == query_ids) & query_mask
    return float(same.sum() / query_mask.sum())


def parameter_group(name: str) -> str:
    """The layer of a ColBERT parameter, by its name: the groups of the gradient norms.

    Example:
        >>> parameter_group("encoder.embeddings.word_embeddings.weight")
        'embeddings'
        >>> parameter_group("encoder.encoder.layer.11.attention.self.query.weight")
        'layer_11'
        >>> parameter_group("encoder.layers.0.attn.Wqkv.weight")  # ModernBERT's naming
        'layer_0'
        >>> parameter_group("linear.weight")
        'projection'
    """
    if name.startswith("linear."):
        return "projection"
    layer = re.search(r"\.layers?\.(\d+)\.", name)
    if layer:
        return f"layer_{int(layer[1])}"
    parts = name.split(".")
    if "embeddings" in parts:
        return "embeddings"
    # anything else of the encoder (a final norm): its own group, by its module's name
    return parts[1] if parts[0] == "encoder" and len(parts) > 2 else parts[0]


def gradient_norms(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> dict[str, float]:
    """L2 norm of the gradients of each layer (:func:`parameter_group`) and of all (``total``).

    Args:
        named_parameters: ``model.named_parameters()``; those without a gradient are left out.

    Returns:
        Group -> norm, ``total`` last; empty when no parameter has a gradient.
    """
    squares: dict[str, torch.Tensor] = {}
    for name, parameter in named_parameters:
        if parameter.grad is None:
            continue
        # in float64: a float32 sum of a million squares is off in the fifth digit
        square = torch.linalg.vector_norm(parameter.grad.detach(), dtype=torch.float64) ** 2
        group = parameter_group(name)
        squares[group] = squares[group] + square if group in squares else square
    if not squares:
        return {}
    norms = [square.sqrt() for square in squares.values()]
    norms.append(torch.stack(list(squares.values())).sum().sqrt())
    values = torch.stack(norms).cpu().tolist()  # one device sync for all
    return dict(zip([*squares, "total"], values, strict=True))


# ---- the fixed dev sample ------------------------------------------------------------------


@dataclass
class ProbeSet:
    """The dev sample every probe pass encodes: the same texts at every step.

    Attributes:
        query_ids: the probe queries' ids.
        document_ids: the candidate documents' ids, shortest first (cheap batches).
        queries: the queries' tokens, (Q, Lq).
        documents: the candidates' tokens, (D, Ld).
        positives: (Q,) index in ``document_ids`` of each query's relevant document.
        relevant: (Q, D) True where a candidate is relevant to a query.
    """

    query_ids: list[str]
    document_ids: list[str]
    queries: TokenizedText
    documents: TokenizedText
    positives: torch.Tensor
    relevant: torch.Tensor


def sample_probe_set(
    dev_set: DevSet,
    tokenizer: ColBERTTokenizer,
    queries: int = 64,
    documents: int = 64,
    seed: int = 0,
) -> ProbeSet:
    """Draw the probe queries, their relevant documents and random candidates, and tokenise them.

    A random generator of its own (``seed``) draws them: the run's random state is untouched, so
    switching the probes on leaves the training as it was.

    Args:
        dev_set: the dev corpus, queries and judgments.
        tokenizer: the model's tokeniser.
        queries: how many dev queries with a relevant document in the corpus to draw (all of
            them when fewer).
        documents: random corpus documents added to the candidates, besides the probe queries'
            relevant documents (one drawn per query).
        seed: the draw's seed.

    Raises:
        ValueError: no dev query has a relevant document in the corpus, or a candidate that is
            not relevant to it (such queries are left out).
    """
    rng = random.Random(seed)
    row_of = {document_id: row for row, document_id in enumerate(dev_set.corpus_ids)}

    relevant_to = {
        query: sorted(
            doc
            for doc, grade in dev_set.qrels.get(query, {}).items()
            if grade > 0 and doc in row_of
        )
        for query in dev_set.queries
    }
    candidates = sorted(query for query, relevant in relevant_to.items() if relevant)
    if not candidates:
        raise ValueError("probes: no dev query has a relevant document in the dev corpus")
    query_ids = rng.sample(candidates, min(queries, len(candidates)))
    positive_ids = [rng.choice(relevant_to[query]) for query in query_ids]
    chosen = set(positive_ids)
    others = [document for document in dev_set.corpus_ids if document not in chosen]
    document_ids = list(dict.fromkeys(positive_ids))
    document_ids += rng.sample(others, min(documents, len(others)))

    tokens = tokenizer.documents([dev_set.corpus_texts[row_of[doc]] for doc in document_ids])
    order = tokens.attention_mask.sum(dim=1).argsort(stable=True).tolist()  # shortest first
    document_ids = [document_ids[index] for index in order]
    tokens = tokens[order]
    column = {document: index for index, document in enumerate(document_ids)}
    relevant = torch.zeros(len(query_ids), len(document_ids), dtype=torch.bool)
    for row, query in enumerate(query_ids):
        for document in relevant_to[query]:
            if document in column:
                relevant[row, column[document]] = True
    # a query to which every candidate is relevant has no hardest negative (a tiny corpus)
    keep = (~relevant).any(dim=1)
    if not keep.any():
        raise ValueError("probes: every candidate document is relevant to every probe query")
    query_ids = [query for query, kept in zip(query_ids, keep.tolist(), strict=True) if kept]
    positive_ids = [doc for doc, kept in zip(positive_ids, keep.tolist(), strict=True) if kept]
    relevant = relevant[keep]
    return ProbeSet(
        query_ids=query_ids,
        document_ids=document_ids,
        queries=tokenizer.queries([dev_set.queries[query] for query in query_ids]),
        documents=tokens,
        positives=torch.tensor([column[document] for document in positive_ids]),
        relevant=relevant,
    )


def _batches(lengths: list[int], batch_size: int) -> list[tuple[slice, int]]:
    """Consecutive rows in batches of ``batch_size``, each with its longest text's length."""
    return [
        (slice(start, start + batch_size), max(lengths[start : start + batch_size]))
        for start in range(0, len(lengths), batch_size)
    ]


def _encode_in_batches(
    model: ColBERT, tokens: TokenizedText, batch_size: int, queries: bool
) -> torch.Tensor:
    """(B, L, dim) embeddings; each batch cut to its longest text, then padded back with zeros.

    Queries are never cut: their [MASK] padding is scored.
    """
    device = encoder_device(model)
    width = tokens.input_ids.shape[1]
    lengths = [width] * len(tokens) if queries else tokens.attention_mask.sum(dim=1).tolist()
    parts = []
    for rows, length in _batches(lengths, batch_size):
        batch = tokens[rows, :length].to(device)
        encode = model.encode_queries if queries else model.encode_documents
        embeddings = encode(batch).embeddings.float()  # (b, length, dim)
        parts.append(nn.functional.pad(embeddings, (0, 0, 0, width - length)))
    return torch.cat(parts)


def measure_probes(model: ColBERT, probe_set: ProbeSet, batch_size: int = 64) -> dict[str, float]:
    """Anisotropy, effective rank, margins and exact-match share of ``model`` on ``probe_set``.

    Runs under :func:`~colbert_lightning.modeling.colbert.inference` (eval mode, no autograd);
    the model's train/eval mode is restored afterwards.

    Args:
        model: the ColBERT being trained.
        probe_set: the fixed dev sample (:func:`sample_probe_set`).
        batch_size: texts per encoder call; also the candidates scored at once.

    Returns:
        Probe name (without ``probe/``) -> value.
    """
    device = encoder_device(model)
    with inference(model):
        queries = _encode_in_batches(model, probe_set.queries, batch_size, queries=True)
        documents = _encode_in_batches(model, probe_set.documents, batch_size, queries=False)
        query_mask = probe_set.queries.scored_mask.to(device)  # (Q, Lq)
        document_mask = probe_set.documents.scored_mask.to(device)  # (D, Ld)
        lengths = probe_set.documents.attention_mask.sum(dim=1).tolist()
        scores = torch.cat(
            [
                maxsim(
                    queries,
                    query_mask,
                    documents[rows, :length],
                    document_mask[rows, :length],
                    model.config.similarity,
                )  # (Q, b): each batch cut to its longest document, as it was encoded
                for rows, length in _batches(lengths, batch_size)
            ],
            dim=1,
        )  # (Q, D)
        tokens = documents[document_mask]  # (N, dim): the scored tokens only
        positives = probe_set.positives.to(device)
        values = {"anisotropy": anisotropy(tokens), "effective_rank": effective_rank(tokens)}
        values.update(margin_statistics(scores, positives, probe_set.relevant.to(device)))
        values["exact_match_share"] = exact_match_share(
            queries,
            probe_set.queries.input_ids.to(device),
            query_word_mask(probe_set.queries, model.tokenizer).to(device),
            documents[positives],
            probe_set.documents.input_ids.to(device)[positives],
            document_mask[positives],
        )
    return values


# ---- the callback --------------------------------------------------------------------------


class TrainingProbes(ScheduledEvaluation):
    """Logs the probes (see the module docstring) at the dev evaluation's steps.

    ``train`` builds it from ``callbacks.probes`` when ``enabled``, handing it the evaluation
    callback's schedule object: the probes run exactly where the dev metrics are measured.
    Probes 1-4 run after the scheduled optimiser steps (and at step 0, before any update); the
    gradient norms at step ``s`` are those of the gradient computed on step ``s``'s weights,
    before clipping, so the last step (no update follows it) has none.

    Values go to every logger at their step, as ``probe/<name>``; the seconds each pass took are
    logged at INFO, and their sum at the end of training. Under DDP only rank 0 computes and
    logs (the gradients are already all-reduced; the dev sample needs no other process), so no
    process waits on a collective that another never calls.

    Args:
        schedule: the steps to probe at: the evaluation's schedule object.
        queries: dev queries probed (each with one of its relevant documents).
        documents: random dev corpus documents added to the candidates of the margins.
        batch_size: texts per encoder call.
        seed: seed of the dev sample, drawn once, at the first probe.
    """

    def __init__(
        self,
        schedule: EvaluationSchedule,
        queries: int = 64,
        documents: int = 64,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        if queries < 1 or documents < 0 or batch_size < 1:
            raise ValueError(
                "callbacks.probes: queries and batch_size must be >= 1 and documents >= 0, got "
                f"{queries}, {batch_size} and {documents}"
            )
        super().__init__(schedule)
        self.queries = queries
        self.documents = documents
        self.batch_size = batch_size
        self.seed = seed
        self.history: dict[int, dict[str, float]] = {}
        self.seconds = 0.0  # every pass, summed
        self._probe_set: ProbeSet | None = None
        self._no_dev_set = False
        self._last_gradient_step = -1

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        """On a scheduled step's weights: the gradient norms per layer, before clipping."""
        step = trainer.global_step
        if step == self._last_gradient_step or not self.schedule.should_evaluate(
            step, trainer.max_steps
        ):
            return
        self._last_gradient_step = step
        if not trainer.is_global_zero:
            return
        started = time.perf_counter()
        norms = gradient_norms(pl_module.model.named_parameters())
        seconds = time.perf_counter() - started
        self.seconds += seconds
        if not norms:
            log.info("probes: no gradient at step %d (a skipped batch)", step)
            return
        self._log(trainer, step, {f"grad_norm/{group}": norm for group, norm in norms.items()})
        log.info("step %d: probe/grad_norm/total=%.4g (%.3f s)", step, norms["total"], seconds)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure probes 1-4 now and log them (rank 0; other processes return ``{}``)."""
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return {}
        probe_set = self._sample(trainer, pl_module.model.tokenizer)
        if probe_set is None:
            return {}
        started = time.perf_counter()
        values = measure_probes(pl_module.model, probe_set, self.batch_size)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self._log(trainer, step, values)
        shown = "  ".join(f"{name}={value:.4g}" for name, value in values.items())
        log.info("step %d: probes %s (%.2f s)", step, shown, seconds)
        return values

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say what the probes cost."""
        if trainer.is_global_zero and self.history:
            log.info("probes: %d steps probed, %.1f s in all", len(self.history), self.seconds)

    def _sample(self, trainer: pl.Trainer, tokenizer: ColBERTTokenizer) -> ProbeSet | None:
        if self._probe_set is None and not self._no_dev_set:
            dev_set = trainer.datamodule.dev_set() if trainer.datamodule is not None else None
            if dev_set is None:
                self._no_dev_set = True
                log.warning("probes: the data has no dev set; only gradient norms are logged")
                return None
            self._probe_set = sample_probe_set(
                dev_set, tokenizer, self.queries, self.documents, self.seed
            )
            log.info(
                "probes: %d dev queries, %d candidate documents (seed %d)",
                len(self._probe_set.query_ids),
                len(self._probe_set.document_ids),
                self.seed,
            )
        return self._probe_set

    def _log(self, trainer: pl.Trainer, step: int, values: dict[str, float]) -> None:
        named = {f"{PROBE_PREFIX}{name}": value for name, value in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(named, step=step)
        self.history.setdefault(step, {}).update(named)
