"""BM25 on the dev queries a sweep's jobs followed, for the dashed line on its learning curves.

Computed at summary time from what each job recorded in ``results.json``'s ``config``, so
that runs made before this existed get it too: the dev set (``data.dev``'s corpus, queries and
qrels files, the metrics logged as ``val/*``) and each extra dev collection
(``callbacks.evaluation.extra`` with its ``extra_split`` qrels, logged as ``val_<name>/*``).
BM25 is the project's (:class:`~colbert_lightning.retrieval.bm25.BM25Config`: k1=0.9, b=0.4)
retrieving the top 100 of the whole corpus, like the dev evaluation's exact search; with
``callbacks.evaluation.mode=rerank`` the curves rerank candidates while BM25 still retrieves.

Files that are gone (a sweep copied to another machine) or unreadable leave that line out,
with the reason in :attr:`DevBaselines.skipped`; they never fail the summary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.collections import collection_roots
from colbert_lightning.config.resolvers import register_resolvers
from colbert_lightning.data.beir import find_beir_file, load_dev_set, qrels_path
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.evaluation.sweeps import Job
from colbert_lightning.retrieval.bm25 import BM25Config, BM25Retriever

log = logging.getLogger(__name__)

DEV_PREFIX = "val"
"""Metric prefix of the dev set (``val/ndcg@10``); an extra collection's is ``val_<name>``."""
BM25_DEPTH = 100
"""Documents BM25 returns per query, as deep as the dev evaluation's ``k``."""
BM25_LABEL = "BM25"
# What a job's files can fail with: gone or a folder in their place (OSError), a collection
# name no longer resolvable (ConfigError, OmegaConf), a malformed line (DataFormatError), an
# empty corpus or no relevant judgment (ValueError, which the two errors named before subclass).
_UNAVAILABLE = (OSError, ConfigError, DataFormatError, OmegaConfBaseException, ValueError)


def _jobs_text(names: Sequence[str]) -> str:
    """``job 2`` or ``jobs 0, 1``."""
    return f"job {names[0]}" if len(names) == 1 else f"jobs {', '.join(names)}"


@dataclass(frozen=True)
class EvaluationFiles:
    """The corpus, queries and qrels files of one dev evaluation, as absolute paths."""

    corpus: Path
    queries: Path
    qrels: Path


@dataclass(frozen=True)
class BM25Figure:
    """BM25's metrics on one dev evaluation's queries, and the jobs that followed it.

    Attributes:
        prefix: The metric prefix of the evaluation (``val``, or ``val_med``).
        files: The files BM25 ran on.
        jobs: Names of the jobs whose config names these files under ``prefix``.
        queries: Judged queries scored (those with a relevant document count in the metrics).
        metrics: ``ndcg@10``, ``mrr@10``, ``recall@10``, ``recall@100``.
    """

    prefix: str
    files: EvaluationFiles
    jobs: tuple[str, ...]
    queries: int
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        return {
            "prefix": self.prefix,
            "corpus": str(self.files.corpus),
            "queries_file": str(self.files.queries),
            "qrels": str(self.files.qrels),
            "jobs": list(self.jobs),
            "queries": self.queries,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class DevBaselines:
    """BM25 on the dev evaluations of a sweep's jobs.

    Attributes:
        figures: One per distinct (prefix, files): the dev set's first, then the extra
            collections' by name; in order of first job within a prefix.
        skipped: Why a job's evaluation has no figure, one line per (prefix, reason).
        bm25: The BM25 settings used.
    """

    figures: list[BM25Figure]
    skipped: list[str]
    bm25: BM25Config = field(default_factory=BM25Config)

    def lines(self, metric: str) -> dict[str, float]:
        """Legend label -> BM25's value of a curve metric, for dashed horizontal lines.

        One line, ``BM25``, when every job followed the same files under the metric's prefix;
        one per file set, ``BM25 (jobs 0, 1)``, when jobs followed different ones.

        Args:
            metric: A curve metric column, ``val/ndcg@10`` or ``val_med/ndcg@10``.
        """
        prefix, _, name = metric.partition("/")
        figures = [f for f in self.figures if f.prefix == prefix and name in f.metrics]
        if len(figures) == 1:
            return {BM25_LABEL: figures[0].metrics[name]}
        return {f"{BM25_LABEL} ({_jobs_text(f.jobs)})": f.metrics[name] for f in figures}

    def notes(self) -> list[str]:
        """Lines for the summary under its table: the figures and what was skipped."""
        settings = f"k1={self.bm25.k1}, b={self.bm25.b}, top {BM25_DEPTH}"
        notes = []
        if self.figures:
            shown = "; ".join(
                f"{figure.prefix}: nDCG@10 {figure.metrics['ndcg@10']:.4f}, MRR@10 "
                f"{figure.metrics['mrr@10']:.4f} over {figure.queries} queries "
                f"({_jobs_text(figure.jobs)})"
                for figure in self.figures
            )
            notes.append(
                f"BM25 ({settings}) on the same dev queries, the dashed line on the curves: "
                f"{shown}."
            )
        notes.extend(f"BM25 not drawn: {reason}" for reason in self.skipped)
        return notes

    def to_json(self) -> dict[str, Any]:
        """What ``bm25_dev.json`` holds."""
        return {
            "k1": self.bm25.k1,
            "b": self.bm25.b,
            "k": BM25_DEPTH,
            "figures": [figure.to_json() for figure in self.figures],
            "skipped": self.skipped,
        }


def _absolute(path: str | Path, root_dir: str | None) -> Path:
    # Training runs with hydra.job.chdir=false: a relative path is relative to paths.root_dir.
    # Resolved, so that one file named two ways (a/../b/f and b/f) gets BM25 computed once.
    resolved = Path(path)
    if not resolved.is_absolute() and root_dir is not None:
        resolved = Path(root_dir) / resolved
    return resolved.resolve()


def evaluation_files(config: Mapping[str, Any]) -> tuple[dict[str, EvaluationFiles], list[str]]:
    """The dev evaluations a job's resolved training config names, by metric prefix.

    Args:
        config: ``results.json``'s ``config``.

    Returns:
        Prefix (``val``, ``val_<name>``) -> files, and a ``"<prefix>: <reason>"`` line for
        each extra collection whose folder or files cannot be found now. A config without
        ``data.dev`` (or without its qrels) has no ``val`` entry.
    """
    paths = config.get("paths") or {}
    root_dir = paths.get("root_dir")
    found: dict[str, EvaluationFiles] = {}
    problems: list[str] = []
    dev = (config.get("data") or {}).get("dev") or {}
    if all(dev.get(key) for key in ("corpus", "queries", "qrels")):
        found[DEV_PREFIX] = EvaluationFiles(
            *(_absolute(dev[key], root_dir) for key in ("corpus", "queries", "qrels"))
        )
    evaluation = (config.get("callbacks") or {}).get("evaluation") or {}
    split = evaluation.get("extra_split") or "test"
    names = list(evaluation.get("extra") or [])
    if names:
        register_resolvers()  # a data config's root may be ${resource:...}
    for name in names:
        try:
            [(label, root)] = collection_roots(
                [name], OmegaConf.create(dict(paths)), "callbacks.evaluation.extra"
            ).items()
            found[f"{DEV_PREFIX}_{label}"] = EvaluationFiles(
                _absolute(find_beir_file(root, "corpus"), root_dir),
                _absolute(find_beir_file(root, "queries"), root_dir),
                _absolute(qrels_path(root, split), root_dir),
            )
        except _UNAVAILABLE as error:
            problems.append(f"{DEV_PREFIX}_{Path(name).name}: {error}")
    return found, problems


def bm25_metrics(files: EvaluationFiles, bm25: BM25Config) -> tuple[int, dict[str, float]]:
    """BM25's metrics on the judged queries of ``files``: how many queries, and the metrics.

    Raises:
        FileNotFoundError: a file is missing.
        DataFormatError: a malformed file.
        ValueError: no document has a word to index, or no query has a relevant document.
    """
    dev_set = load_dev_set(files.corpus, files.queries, files.qrels)
    retriever = BM25Retriever(
        dev_set.corpus_ids, dev_set.corpus_texts, k1=bm25.k1, b=bm25.b, show_progress=False
    )
    rankings = retriever.search(dev_set.queries, k=BM25_DEPTH)
    return len(dev_set.queries), evaluate_rankings(rankings, dev_set.qrels)


def bm25_dev_baselines(jobs: Sequence[Job], bm25: BM25Config | None = None) -> DevBaselines:
    """BM25 on every dev evaluation the jobs recorded, computed once per distinct files.

    Args:
        jobs: The jobs of a sweep; a job without ``config`` in ``results.json`` adds nothing.
        bm25: The BM25 settings; None: the project's defaults.

    Returns:
        The figures, and why any job's evaluation got none (logged as warnings too).
    """
    bm25 = bm25 or BM25Config()
    jobs_by_files: dict[tuple[str, EvaluationFiles], list[str]] = {}
    problems: dict[str, list[str]] = {}
    for job in jobs:
        found, job_problems = evaluation_files(job.results.get("config") or {})
        for prefix, files in found.items():
            jobs_by_files.setdefault((prefix, files), []).append(job.name)
        for problem in job_problems:
            problems.setdefault(problem, []).append(job.name)
    computed: dict[EvaluationFiles, tuple[int, dict[str, float]] | str] = {}
    figures = []
    for (prefix, files), job_names in jobs_by_files.items():
        if files not in computed:
            try:
                computed[files] = bm25_metrics(files, bm25)
            except _UNAVAILABLE as error:
                computed[files] = str(error)
            else:
                queries, metrics = computed[files]
                log.info(
                    "BM25 on %s (%d queries, qrels %s): nDCG@10 %.4f, MRR@10 %.4f",
                    prefix,
                    queries,
                    files.qrels,
                    metrics["ndcg@10"],
                    metrics["mrr@10"],
                )
        result = computed[files]
        if isinstance(result, str):
            problems.setdefault(f"{prefix}: {result}", []).extend(job_names)
        else:
            figures.append(BM25Figure(prefix, files, tuple(job_names), *result))
    figures.sort(key=lambda figure: figure.prefix)  # the dev set first; jobs' order within
    skipped = [f"{problem} ({_jobs_text(names)})" for problem, names in problems.items()]
    for line in skipped:
        log.warning("BM25 not drawn: %s", line)
    return DevBaselines(figures=figures, skipped=skipped, bm25=bm25)
