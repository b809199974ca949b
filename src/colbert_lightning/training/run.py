"""One training run from a composed config: fit, evaluate on test, write results.json."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from colbert_lightning.config.checks import ConfigError, check_beir_root, check_config
from colbert_lightning.config.collections import collection_roots
from colbert_lightning.data import SeenQueries
from colbert_lightning.data.beir import find_beir_file, qrels_path
from colbert_lightning.data.negatives import prepared_inputs
from colbert_lightning.evaluation.split import (
    Baseline,
    evaluate_split,
    one_line_table,
    relevant_documents,
    write_evaluation,
)
from colbert_lightning.modeling import ColBERT, ColBERTConfig, ColBERTTokenizer
from colbert_lightning.retrieval.bm25 import BM25Config, BM25PriorConfig
from colbert_lightning.training.callbacks import RetrievalEvaluation
from colbert_lightning.training.probes import TrainingProbes
from colbert_lightning.training.trainer import (
    build_trainer,
    finish_wandb_runs,
    save_last_checkpoint,
    start_run,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as ``cfg`` describes and return what goes into ``results.json``.

    ``python -m colbert_lightning.train`` composes the config and calls this; so do the tests
    and :class:`~colbert_lightning.compat.ragatouille.RAGTrainer`.
    """
    started = time.time()
    check_config(cfg)
    threads = start_run(cfg)
    model_config = instantiate(cfg.model)
    if not isinstance(model_config, ColBERTConfig):
        raise ConfigError(f"model={type(model_config).__name__} is not a trainable ColBERT")
    extra = extra_collections(cfg)
    tokenizer = ColBERTTokenizer.from_config(model_config)
    # data before weights: a wrong path or value fails before any weight is built or loaded
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    model = ColBERT.from_config(model_config, tokenizer)
    module = instantiate(cfg.module, model=model)
    checkpoint_dir = Path(cfg.paths.output_dir) / "checkpoints"
    run = build_trainer(cfg, build_callbacks(cfg, extra), checkpoint_dir)
    trainer, resolved, commit = run.trainer, run.config, run.commit

    test_at_start = None
    if cfg.get("test_split") and not cfg.get("ckpt_path") and trainer.is_global_zero:
        datamodule.prepare_data()  # the training queries must exist to be left out of the test
        test_at_start = _evaluate_on_test(cfg, model, datamodule.seen_queries(), "test_step0")

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    save_last_checkpoint(trainer, checkpoint_dir)
    skipped_here = torch.tensor(float(module.skipped_lines), device=module.device)
    skipped = int(trainer.strategy.reduce(skipped_here, reduce_op="sum").item())
    skipped += datamodule.skipped_store_lines
    evaluation = next((c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation)), None)
    history = evaluation.history if evaluation else []
    results = {
        "steps": trainer.global_step,
        "examples_seen": module.examples_seen,
        "wall_time_s": round(time.time() - started, 1),
        "skipped_lines": skipped,
        "nonfinite_batches": module.nonfinite_batches,
        "step0": _metrics_at(history, 0),
        "final": history[-1] if history else None,
        "best": max(history, key=lambda row: row.get("val/ndcg@10", float("-inf")), default=None),
        "best_checkpoint": _best_checkpoint(trainer),
        "init": model.init_summary.to_dict(),
        "cpu_threads": threads,
        # content fingerprints of the BEIR files the training data was prepared from
        "inputs": prepared_inputs(cfg.data.prepare.output_dir) if cfg.data.get("prepare") else None,
        "git_commit": commit,
        "config": resolved,
    }
    finish_wandb_runs(trainer)
    if cfg.get("test_split") and trainer.is_global_zero:
        results["test_step0"] = test_at_start
        # the best dev checkpoint, else last.ckpt; without checkpoints
        # (trainer.enable_checkpointing=false) the model as training left it
        last = checkpoint_dir / "last.ckpt"
        chosen = results["best_checkpoint"] or (str(last) if last.is_file() else None)
        seen = datamodule.seen_queries()
        results["test"] = _evaluate_on_test(cfg, chosen or model, seen, "test")
        # what a model that cannot learn scores on the very same queries, and what one that
        # only remembers which documents training called relevant scores
        results["test_bm25"] = _evaluate_on_test(cfg, BM25Config(), seen, "test_bm25")
        if _training_judgments(cfg.data):
            prior = BM25PriorConfig()
            results["test_bm25_prior"] = _evaluate_on_test(cfg, prior, seen, "test_bm25_prior")
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("%s", summary_table(results))
        log.info("results: %s", output_dir / "results.json")
    return results


def build_callbacks(cfg: DictConfig, extra: dict[str, str] | None = None) -> list[pl.Callback]:
    """``cfg.callbacks``, instantiated; the evaluation's extra collections as name -> folder.

    ``callbacks.probes`` is built only when ``enabled``, last, on the evaluation callback's
    own schedule object (see :func:`_training_probes`).

    Args:
        cfg: the training config.
        extra: ``callbacks.evaluation.extra`` resolved (:func:`extra_collections`); None:
            resolve it here.
    """
    if extra is None:
        extra = extra_collections(cfg)
    callbacks = []
    for key, callback in cfg.callbacks.items():
        if key == "probes":
            continue
        if key == "evaluation":
            # the names become folders: a mapping where the config holds a list
            callback = OmegaConf.to_container(callback, resolve=True)
            callback["extra"] = extra
        callbacks.append(instantiate(callback))
    probes = cfg.callbacks.get("probes")
    if probes is not None and probes.get("enabled", True):
        callbacks.append(_training_probes(probes, callbacks))
    return callbacks


def _training_probes(entry: DictConfig, callbacks: list[pl.Callback]) -> TrainingProbes:
    """``callbacks.probes`` (less its ``enabled`` switch) on the dev evaluation's schedule.

    The probes run where the dev metrics are measured: the schedule is the evaluation
    callback's object, not a copy that could drift from it.

    Raises:
        ConfigError: no ``callbacks.evaluation`` among ``callbacks``.
    """
    evaluation = next((c for c in callbacks if isinstance(c, RetrievalEvaluation)), None)
    if evaluation is None:
        raise ConfigError(
            "callbacks.probes.enabled=true needs callbacks.evaluation: the probes run at its "
            "schedule's steps (keep the evaluation, or set callbacks.probes.enabled=false)"
        )
    arguments = OmegaConf.to_container(entry, resolve=True)
    arguments.pop("enabled", None)
    # passed after instantiation: instantiate would turn the dataclass into a config copy
    return instantiate(arguments, _partial_=True)(schedule=evaluation.schedule)


def extra_collections(cfg: DictConfig) -> dict[str, str]:
    """``callbacks.evaluation.extra``'s collection names -> their BEIR folders, checked.

    Raises:
        ConfigError: a name that is neither a data config nor a folder, or a folder without
            the corpus, queries or qrels split to evaluate.
    """
    evaluation = cfg.get("callbacks", {}).get("evaluation") or {}
    names = list(evaluation.get("extra") or [])
    split = evaluation.get("extra_split", "test")
    roots = collection_roots(names, cfg.paths, "callbacks.evaluation.extra")
    for label, root in roots.items():
        check_beir_root(root, f"callbacks.evaluation.extra ({label})")
        try:
            for stem in ("corpus", "queries"):
                find_beir_file(root, stem)
            qrels_path(root, split)
        except (FileNotFoundError, IsADirectoryError) as error:
            raise ConfigError(f"callbacks.evaluation.extra ({label}): {error}") from None
    return roots


def _evaluate_on_test(
    cfg: DictConfig, model: ColBERT | str | Baseline, seen: SeenQueries, name: str
) -> dict[str, Any]:
    """The model (or a checkpoint's) metrics on the ``cfg.test_split`` qrels of data.root.

    Training evaluates the untrained model (before the first step) and, at the end, the best
    checkpoint by dev nDCG@10 (else the last, else the final model when no checkpoint is
    written): the split is never used to choose anything. Its queries that were trained on
    or are dev queries (``seen``, by normalised text) are left out and counted. When the
    training judgments are known, the queries none of whose relevant documents is relevant to
    a training or dev query are reported apart (``subsets``). Per-query metrics and the run go
    to ``<name>_per_query.tsv`` and ``<name>_run.trec`` in the output folder.
    """
    what = model if isinstance(model, str) else type(model).__name__
    log.info("evaluating %s on the %s split of %s", what, cfg.test_split, cfg.data.root)
    batch_size = cfg.callbacks.get("evaluation", {}).get("batch_size", 64)
    judgments = _training_judgments(cfg.data)
    result = evaluate_split(
        model,
        cfg.data.root,
        cfg.test_split,
        batch_size=batch_size,
        seen=seen,
        seen_documents=relevant_documents(judgments) if judgments else None,
    )
    log.info("%s", one_line_table(result))
    output_dir = Path(cfg.paths.output_dir)
    return write_evaluation(
        result, output_dir / f"{name}_per_query.tsv", output_dir / f"{name}_run.trec", name
    )


def _training_judgments(data: DictConfig) -> list[Path]:
    """The qrels of the training and dev queries: the documents training saw called relevant.

    Empty when the training file's qrels are not given (``data.train.qrels``): then which
    documents training saw relevant is unknown.
    """
    train = data.get("train", {}).get("qrels")
    if not train or not Path(train).is_file():
        return []
    dev = data.get("dev", {}).get("qrels")
    return [Path(path) for path in (train, dev) if path and Path(path).is_file()]


def _metrics_at(history: list[dict[str, float]], step: int) -> dict[str, float] | None:
    return next((row for row in history if row["step"] == step), None)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) and callback.best_model_path:
            return callback.best_model_path
    return None


def summary_table(results: dict[str, Any]) -> str:
    """Dev metrics at step 0, at the end and at the best step, as a small text table."""
    keys = ["val/mrr@10", "val/recall@10", "val/recall@100", "val/ndcg@10"]
    rows = [("step 0", results["step0"]), ("final", results["final"]), ("best", results["best"])]
    lines = [f"{'':<8}{'step':>7}" + "".join(f"{key:>16}" for key in keys)]
    for label, row in rows:
        if row:
            cells = "".join(f"{row.get(key, float('nan')):>16.4f}" for key in keys)
            lines.append(f"{label:<8}{int(row['step']):>7}{cells}")
    lines.append(
        f"{results['steps']} steps, {results['examples_seen']} examples, "
        f"{results['wall_time_s']:.0f} s, {results['skipped_lines']} bad lines skipped"
    )
    return "\n".join(lines)
