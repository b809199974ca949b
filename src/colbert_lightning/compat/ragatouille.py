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

Deliberate differences from RAGatouille 0.0.x:

- Length of training: one pass over the triples or ``maxsteps``, whichever is shorter (as
  colbert-ai trains), and warm-up (``"auto"``: 10%) and linear decay both follow that real number
  of optimiser steps. RAGatouille sizes ``"auto"`` warm-up on one pass but decays over
  ``maxsteps`` (500,000 by default), so its learning rate barely decays.
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
- ``nbits`` (index compression) has no effect on training and is only recorded; ``use_relu``
  must stay False (colbert-ai ignores it too).
- ``dev_queries`` (keyword) holds out queries for dev evaluation during training; then the
  returned model is the best checkpoint by dev nDCG@10, else the last one.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
        del nbits  # compression of an index, not of training
        devices = self._devices()
        if batch_size < max(devices, 1) or batch_size % max(devices, 1):
            raise ValueError(f"batch_size={batch_size} must be a multiple of the {devices} GPUs")
        triples = self.data.counts["triples"]
        steps = min(maxsteps, max(1, math.ceil(triples / (batch_size * accumsteps))))
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
            f"data.batch_size={batch_size // max(devices, 1)}",
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
        output_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
    ) -> str:
        """Train as ``python -m colbert_lightning.train`` would, and export the model.

        Args:
            batch_size: queries per optimiser step, over all GPUs.
            nbits: recorded only (index compression).
            maxsteps: at most this many optimiser steps (and at most one pass over the triples).
            use_ib_negatives: the other queries' documents are negatives too.
            learning_rate: AdamW's peak learning rate.
            dim: size of the token embeddings.
            doc_maxlen: documents are truncated to this many tokens.
            use_relu: must be False.
            warmup_steps: linear warm-up steps, or ``"auto"`` (10% of the steps).
            accumsteps: batches accumulated per optimiser step.
            output_dir: the run folder; default ``outputs/ragtrainer/<model_name>/<time>``.
            overrides: more Hydra overrides (``key=value``), applied last.

        Returns:
            The trained model as a colbert-ai folder (``<output_dir>/checkpoints/colbert``).
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
            output_dir=output_dir,
            overrides=overrides,
        )
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
