"""RAGatouille's training interface on this project's training: change the import, keep the script.

RAGatouille's documented from-scratch recipe runs as is::

    from colbert_lightning import RAGTrainer   # was: from ragatouille import RAGTrainer

    trainer = RAGTrainer(model_name="MyColBERT", pretrained_model_name="bert-base-uncased",
                         language_code="en", n_usable_gpus=1)
    trainer.prepare_training_data(raw_data=pairs, all_documents=corpus, mine_hard_negatives=True)
    path = trainer.train(batch_size=32, learning_rate=5e-6, warmup_steps="auto", maxsteps=500_000,
                         dim=128, doc_maxlen=256, use_ib_negatives=True)

``train`` composes the same Hydra config as ``python -m colbert_lightning.train`` (``conf/``,
with overrides), calls the same ``train`` function, and returns the path of the trained model as
a colbert-ai folder (``HF_ColBERT`` + ``artifact.metadata``), which RAGatouille's
``RAGPretrainedModel.from_pretrained``, colbert-ai, PyLate and ``ColBERT.load`` all read.

The triples are RAGatouille's: each query's negatives (given, plus ``num_new_negatives`` new
ones) paired with its positive or, for a query with several positives, 20 of its (positive,
negative) pairs, every positive in at least one. Each is one training example (a query, a
positive, one negative): 60 pairs with ``num_new_negatives=10`` train on ~600 triples, 19 steps
at ``batch_size=32``. ``batch_size`` is the whole optimiser step, which ``accumsteps`` splits
into micro-batches (as colbert-ai does).

Deliberate differences from RAGatouille 0.0.x:

- Length of training: one pass over the triples (``ceil(triples / batch_size)`` optimiser
  steps) or ``maxsteps``, whichever is shorter (as colbert-ai trains), and warm-up (``"auto"``:
  10%) and linear decay both follow that real number of steps. RAGatouille sizes ``"auto"``
  warm-up on one pass but decays over ``maxsteps`` (500,000 by default), so its learning rate
  barely decays.
- Bounded memory (``train(..., bounded_memory=True)``, the default): the encoder's activations
  are recomputed in the backward pass instead of kept (the same gradients), and on the CPU
  glibc returns freed blocks of 1 MiB or more to the system during training. SciFact's 60-pair
  MiniLM run on the CPU peaks at 2.1 GiB of RSS instead of 8.7 GiB; a step takes ~1.5x as long
  (``benchmarks/RESULTS.md``). ``bounded_memory=False`` trades the memory back for the time.
- Hard negatives are BM25's (this project's ``prepare`` sampling, offline), not a dense model's
  (``hard_negative_model_size`` is accepted and unused), and they really come from ranks
  ``hard_negative_minimum_rank..hard_negative_maximum_rank``: RAGatouille's miner never applies
  its minimum rank, so its "hard" negatives include the very top results.
- ``pretrained_model_name`` names an encoder whose pretrained weights are loaded; only the
  projection is random. A colbert-ai, PyLate or exported folder also brings its projection and
  its ColBERT settings (lengths, markers). ``init="random"`` (keyword) is true from-scratch
  training: the encoder's architecture only, every weight random.
- Labelled pairs are ``(query, passage, label)`` with ``pairs_with_labels=True``; RAGatouille
  decides by record length first and reads such records as triplets.
- ``n_usable_gpus``: -1 uses every visible GPU; more than one runs Lightning DDP (one process per
  GPU; ``batch_size`` is the total, split across them); none visible trains on the CPU, with a
  warning when GPUs were asked for.
- ``nbits`` (index compression) has no effect on training and is only logged; ``use_relu``
  must stay False (colbert-ai ignores it too).
- ``dev_queries`` (keyword) holds out queries for dev evaluation during training; then the
  returned model is the best checkpoint by dev nDCG@10, else the last one.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from colbert_lightning.compat.raw_data import RawDataResult, raw_kind, write_training_data
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.config import Init
from colbert_lightning.modeling.formats import read_settings, write_folder
from colbert_lightning.training.run import train as train_from_config

log = logging.getLogger(__name__)


class ActivationCheckpointing(pl.Callback):
    """Training recomputes the encoder's activations in the backward pass instead of keeping them.

    The loss and the gradients are the same (``torch.utils.checkpoint`` replays the dropout
    masks); each step runs the encoder's forward once more, and the activations kept between
    forward and backward are each layer's input instead of everything every layer computed. With
    MiniLM, 32 queries and 64 documents of 256 tokens (RAGatouille's defaults), the encoder's
    forward and backward take 7.3 GiB above the model on the CPU without it (attention dropout
    keeps attention on PyTorch's unfused path: 200 MB tensors of (64, 12, 256, 256) scores,
    probabilities and dropped probabilities, kept for every layer) and 1.5 GiB with it and
    :func:`large_blocks_unmapped` (``benchmarks/RESULTS.md``).

    Raises:
        ValueError: the encoder does not support it (``supports_gradient_checkpointing``).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Turn it on, before the model is moved or wrapped."""
        encoder = pl_module.model.encoder
        if not getattr(encoder, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"{type(encoder).__name__} does not support activation checkpointing: "
                "train(..., bounded_memory=False)"
            )
        # non-reentrant: works with inputs that need no gradient, as token ids
        _encoder_method(encoder, "enable")({"use_reentrant": False})

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Turn it off: the model goes back as it came."""
        _encoder_method(pl_module.model.encoder, "disable")()


def _encoder_method(encoder: torch.nn.Module, action: str) -> Any:
    """``activation_checkpointing_<action>``: ``gradient_checkpointing_<action>`` in older 5.x."""
    name = f"activation_checkpointing_{action}"
    if hasattr(encoder, name):
        return getattr(encoder, name)
    return getattr(encoder, f"gradient_checkpointing_{action}")


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: blocks from this size up are mmapped, and unmapped when freed."""
GLIBC_MAX_MMAP_THRESHOLD = 32 << 20
"""The highest value glibc's adaptive threshold reaches (64-bit)."""


@contextmanager
def large_blocks_unmapped(threshold: int = 1 << 20) -> Iterator[bool]:
    """Inside, glibc's malloc maps blocks of ``threshold`` bytes or more, and unmaps them freed.

    What ``MALLOC_MMAP_THRESHOLD_=1048576`` does for a whole process. By default glibc raises
    its threshold as large blocks are freed (up to 32 MiB), so a training step's activations of
    a few MiB to 32 MiB come from the heap, whose freed middle pages stay resident: SciFact's
    60-pair MiniLM run held ~1.2 GB more than it used. Mapped blocks go back to the system when
    freed, at the price of zeroing fresh pages. glibc cannot return to its adaptive threshold:
    on leaving, the threshold is 32 MiB, the highest the adaptive one reaches.

    Yields:
        Whether it was set: False where the C library is not glibc (nothing is changed).
    """
    if not _libc_version().startswith("glibc"):
        log.info("not glibc: the allocator's mmap threshold is left as it is")
        yield False
        return
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    changed = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    try:
        yield changed
    finally:
        if changed:
            mallopt(M_MMAP_THRESHOLD, GLIBC_MAX_MMAP_THRESHOLD)


def _libc_version() -> str:
    """``glibc 2.36`` under glibc; ``""`` elsewhere (macOS, Windows, musl)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return ""


_CHECKPOINTING = f"{ActivationCheckpointing.__module__}.{ActivationCheckpointing.__qualname__}"


class RAGTrainer:
    """Train a ColBERT with RAGatouille's ``RAGTrainer`` calls (see the module docstring).

    Args:
        model_name: names the run folder (``outputs/ragtrainer/<model_name>/<time>``).
        pretrained_model_name: hub name or folder of the encoder (or of a ColBERT to continue).
        language_code: recorded; BM25 mining uses English stopwords whatever it says.
        n_usable_gpus: GPUs to train on; -1: all visible ones.
        init: ``pretrained`` (RAGatouille's behaviour) or ``random`` (architecture only).
    """

    def __init__(
        self,
        model_name: str,
        pretrained_model_name: str,
        language_code: str = "en",
        n_usable_gpus: int = -1,
        *,
        init: Init = "pretrained",
    ) -> None:
        if init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
        self.model_name = model_name
        self.pretrained_model_name = pretrained_model_name
        self.language_code = language_code
        self.n_usable_gpus = n_usable_gpus
        self.init = init
        self.data: RawDataResult | None = None
        self.config: DictConfig | None = None
        self.results: dict[str, Any] | None = None
        if language_code != "en":
            log.warning(
                "language_code=%r: BM25 hard negatives use English stopwords", language_code
            )

    def prepare_training_data(
        self,
        raw_data: Sequence[Sequence[Any]],
        all_documents: Sequence[str] | None = None,
        data_out_path: str | Path = "./data/",
        num_new_negatives: int = 10,
        hard_negative_minimum_rank: int = 10,
        mine_hard_negatives: bool = True,
        hard_negative_model_size: str = "small",
        pairs_with_labels: bool = False,
        positive_label: int | str = 1,
        negative_label: int | str = 0,
        *,
        hard_negative_maximum_rank: int = 100,
        dev_queries: int | float = 0,
        seed: int = 0,
    ) -> str:
        """Write the BEIR folder and training triples of ``raw_data``.

        Args:
            raw_data: ``(query, positive)`` pairs, ``(query, passage, label)`` labelled pairs
                (with ``pairs_with_labels=True``) or ``(query, positive, negative)`` triplets;
                passages are strings or lists of strings.
            all_documents: the collection new negatives are drawn from.
            data_out_path: the folder to write.
            num_new_negatives: new negatives per (query, positive).
            hard_negative_minimum_rank: first BM25 rank (1-based) a hard negative comes from.
            mine_hard_negatives: BM25 hard negatives; else random documents.
            hard_negative_model_size: accepted for RAGatouille scripts; mining is BM25.
            pairs_with_labels: records are ``(query, passage, label)``.
            positive_label: label of relevant passages.
            negative_label: label of non-relevant passages.
            hard_negative_maximum_rank: last BM25 rank a hard negative comes from.
            dev_queries: queries held out for dev evaluation during training (count or fraction).
            seed: seed of the dev split and the sampling.

        Returns:
            ``data_out_path``.
        """
        del hard_negative_model_size  # BM25 mining: no dense model to size
        self.data = write_training_data(
            raw_data,
            data_out_path,
            kind=raw_kind(raw_data, pairs_with_labels),
            all_documents=all_documents,
            num_new_negatives=num_new_negatives,
            mine_hard_negatives=mine_hard_negatives,
            min_rank=hard_negative_minimum_rank,
            max_rank=hard_negative_maximum_rank,
            dev_queries=dev_queries,
            seed=seed,
            positive_label=positive_label,
            negative_label=negative_label,
        )
        log.info("training data in %s: %s", data_out_path, self.data.counts)
        return str(data_out_path)

    def compose_config(
        self,
        batch_size: int = 32,
        nbits: int = 2,
        maxsteps: int = 500_000,
        use_ib_negatives: bool = True,
        learning_rate: float = 5e-6,
        dim: int = 128,
        doc_maxlen: int = 256,
        use_relu: bool = False,
        warmup_steps: int | Literal["auto"] = "auto",
        accumsteps: int = 1,
        *,
        bounded_memory: bool = True,
        output_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
    ) -> DictConfig:
        """The training config :meth:`train` runs: ``conf/train.yaml`` with these overrides.

        Takes :meth:`train`'s arguments; see there.
        """
        if self.data is None:
            raise RuntimeError("call prepare_training_data before train")
        if use_relu:
            raise ValueError("use_relu=True is not supported (colbert-ai ignores it as well)")
        log.info("nbits=%s: PLAID's index compression, no effect on training (logged only)", nbits)
        if accumsteps < 1 or maxsteps < 1:
            raise ValueError(f"accumsteps and maxsteps must be >= 1, got {accumsteps}, {maxsteps}")
        devices = self._devices()
        # as colbert-ai: batch_size is the whole optimiser step, split across the GPUs and
        # then into accumsteps micro-batches (which are each other's in-batch negatives)
        parts = max(devices, 1) * accumsteps
        if batch_size % parts:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of the {devices} GPU(s) times "
                f"accumsteps={accumsteps}"
            )
        steps = self.optimizer_steps(batch_size, maxsteps)
        if warmup_steps != "auto" and not 0 <= warmup_steps <= steps:
            raise ValueError(
                f"warmup_steps={warmup_steps} must be between 0 and this run's {steps} optimiser "
                f"steps (one pass over {self.data.counts['triples']} triples at "
                f"batch_size={batch_size}, at most maxsteps={maxsteps})"
            )
        output_dir = Path(output_dir or _default_output_dir(self.model_name)).resolve()
        root = Path(self.data.root).resolve()
        values: list[str] = [
            f"model={'bert_base' if self.init == 'pretrained' else 'bert_base_random'}",
            f"model.name_or_path={_quote(self.pretrained_model_name)}",
            *(
                f"model.{key}={_quote(value)}"
                for key, value in (read_settings(self.pretrained_model_name) or {}).items()
            ),
            f"model.dim={dim}",
            f"model.doc_maxlen={doc_maxlen}",
            "data=triples",
            f"data.root={_quote(root)}",
            f"data.train.path={_quote(Path(self.data.triples).resolve())}",
            "data.train.format=jsonl",
            # documents given or judged relevant to a query are never its in-batch negatives
            f"data.train.qrels={_quote(root / 'qrels' / 'train.tsv')}",
            "data.nway=2",  # a query, its positive and the one negative of its line
            f"data.batch_size={batch_size // parts}",
            f"module.in_batch_negatives={use_ib_negatives}",
            f"module.optimizer.lr={learning_rate}",
            f"module.scheduler.warmup_steps={0.1 if warmup_steps == 'auto' else warmup_steps}",
            "module.scheduler.decay=linear",
            f"trainer.max_steps={steps}",
            f"trainer.accumulate_grad_batches={accumsteps}",
            *_trainer_overrides(devices),
            f"task_name=ragtrainer_{self.model_name}",
            f"paths.root_dir={_quote(Path.cwd())}",
            f"paths.output_dir={_quote(output_dir)}",
            f"paths.cache_dir={_quote(output_dir / '.cache')}",
        ]
        if bounded_memory:
            values.append(f"+callbacks.activation_checkpointing._target_={_CHECKPOINTING}")
        if self.data.counts["dev_queries"]:
            values += [
                f"data.dev.corpus={_quote(root / 'corpus.jsonl')}",
                f"data.dev.queries={_quote(root / 'queries.jsonl')}",
                f"data.dev.qrels={_quote(root / 'qrels' / 'dev.tsv')}",
            ]
        else:  # nothing to evaluate on: no evaluation, no best checkpoint; last.ckpt is kept
            values += ["data.dev=null", "~callbacks.evaluation", "~callbacks.best_checkpoint"]
        register_resolvers()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[*values, *overrides])

    def train(
        self,
        batch_size: int = 32,
        nbits: int = 2,
        maxsteps: int = 500_000,
        use_ib_negatives: bool = True,
        learning_rate: float = 5e-6,
        dim: int = 128,
        doc_maxlen: int = 256,
        use_relu: bool = False,
        warmup_steps: int | Literal["auto"] = "auto",
        accumsteps: int = 1,
        *,
        bounded_memory: bool = True,
        output_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
    ) -> str:
        """Train as ``python -m colbert_lightning.train`` would, and export the model.

        Args:
            batch_size: triples per optimiser step, over all GPUs and accumulation steps.
            nbits: logged only (PLAID's index compression; no effect on training).
            maxsteps: at most this many optimiser steps (and at most one pass over the triples:
                see :meth:`optimizer_steps`).
            use_ib_negatives: the other queries' documents are negatives too.
            learning_rate: AdamW's peak learning rate.
            dim: size of the token embeddings.
            doc_maxlen: documents are truncated to this many tokens.
            use_relu: must be False.
            warmup_steps: linear warm-up steps, or ``"auto"`` (10% of the steps).
            accumsteps: micro-batches ``batch_size`` is split into (gradient accumulation).
            bounded_memory: recompute the encoder's activations in the backward pass instead
                of keeping them (:class:`ActivationCheckpointing`) and, on the CPU, have glibc
                return freed blocks of 1 MiB or more to the system (:func:`large_blocks_unmapped`):
                SciFact's 60-pair MiniLM run peaks at 2.1 GiB instead of 8.7, each step taking
                ~1.5x as long.
            output_dir: the run folder; default ``outputs/ragtrainer/<model_name>/<time>``.
            overrides: more Hydra overrides (``key=value``), applied last.

        Returns:
            The trained model as a colbert-ai folder (``<output_dir>/checkpoints/colbert``),
            which ``ColBERT.load`` and RAGatouille's ``RAGPretrainedModel.from_pretrained`` read.
        """
        self.config = self.compose_config(
            batch_size,
            nbits,
            maxsteps,
            use_ib_negatives,
            learning_rate,
            dim,
            doc_maxlen,
            use_relu,
            warmup_steps,
            accumsteps,
            bounded_memory=bounded_memory,
            output_dir=output_dir,
            overrides=overrides,
        )
        with (
            large_blocks_unmapped()
            if bounded_memory and self.config.trainer.accelerator == "cpu"
            else nullcontext()
        ):
            self.results = train_from_config(self.config)  # what the command line runs
        run = Path(self.config.paths.output_dir)
        checkpoint = self.results["best_checkpoint"] or str(run / "checkpoints" / "last.ckpt")
        folder = run / "checkpoints" / "colbert"
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:  # under DDP, the first process exports
            return str(folder)
        model = ColBERT.load(checkpoint).eval()
        write_folder(model, folder, "colbert")
        log.info("trained model (%s) exported to %s", checkpoint, folder)
        return str(folder)

    def optimizer_steps(self, batch_size: int = 32, maxsteps: int = 500_000) -> int:
        """Optimiser steps :meth:`train` takes: one pass over the triples, at most ``maxsteps``.

        ``ceil(triples / batch_size)``, counting triples as RAGatouille does (one per query,
        positive and negative: 60 pairs with ``num_new_negatives=10`` make ~600), capped by
        ``maxsteps``. Warm-up ``"auto"`` and the linear decay follow this number.
        """
        if self.data is None:
            raise RuntimeError("call prepare_training_data before train")
        return min(maxsteps, math.ceil(self.data.counts["triples"] / batch_size))

    def _devices(self) -> int:
        available = torch.cuda.device_count()
        requested = available if self.n_usable_gpus == -1 else self.n_usable_gpus
        if requested > available:
            log.warning(
                "n_usable_gpus=%d but %d GPU(s) visible: training on %s",
                self.n_usable_gpus,
                available,
                f"{available} GPU(s)" if available else "the CPU",
            )
        return min(requested, available)


def _trainer_overrides(devices: int) -> list[str]:
    if devices == 0:
        return ["trainer=cpu"]
    if devices == 1:
        return ["trainer=gpu"]
    return ["trainer=ddp", f"trainer.devices={devices}"]


def _quote(value: Any) -> str:
    """A Hydra override value: strings quoted (``[unused0]`` would otherwise be a list)."""
    if isinstance(value, bool | int | float):
        return str(value)
    text = str(value)
    if "'" in text:
        raise ValueError(f"cannot pass {text!r} as an override value (it holds a quote)")
    return f"'{text}'"


def _default_output_dir(model_name: str) -> Path:
    return Path("outputs") / "ragtrainer" / model_name / time.strftime("%Y-%m-%d_%H-%M-%S")
