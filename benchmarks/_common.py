"""What every benchmark shares: the header it prints, JSON output, configs, real texts, batches."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SCIFACT_ROOT = REPO.parent / "shared" / "data" / "scifact"


def cpu_model() -> str:
    """The processor's model name (``lscpu``), or ``platform.processor()``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """HEAD of the repository (12 digits), with ``-dirty`` when tracked files differ."""
    from colbert_lightning.config.metadata import git_commit as full_commit

    commit = full_commit()
    if commit is None:
        return "unknown"
    head, _, dirty = commit.partition("-")
    return head[:12] + ("-dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """Where and when the figures were taken (goes into every JSON and header)."""
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def header(title: str) -> dict[str, Any]:
    """Print the benchmark's header (machine, commit, 1-minute load average) and return it."""
    info = machine()
    print(f"== {title}")
    print(
        "   "
        + " | ".join(
            f"{key}={value}" for key, value in info.items() if key not in ("python", "cpu_count")
        )
    )
    sys.stdout.flush()
    return info


def write_json(out_dir: str | os.PathLike | None, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``out_dir/name.json`` (default ``benchmarks/out``) and say where."""
    folder = Path(out_dir) if out_dir else REPO / "benchmarks" / "out"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"   wrote {path}")
    return path


def peak_rss_mb() -> float:
    """This process' peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


# ---- configs and data ---------------------------------------------------------------------


def compose(overrides: list[str], output_dir: str | os.PathLike) -> Any:
    """The training config as ``python -m colbert_lightning.train`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers

    register_resolvers()
    cache = os.environ.get("COLBERT_BENCH_CACHE", str(REPO / ".cache"))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(
            "train",
            overrides=[
                f"paths.root_dir={REPO}",
                f"paths.output_dir={output_dir}",
                f"paths.cache_dir={cache}",
                *overrides,
            ],
        )


def corpus_texts(corpus: str) -> tuple[list[str], list[str]]:
    """Real query and document texts: ``cranfield`` (shipped) or ``scifact`` (shared/data)."""
    from colbert_lightning.data.beir import load_corpus, load_queries
    from colbert_lightning.resources import resource_path

    if corpus == "cranfield":
        root = Path(resource_path("cranfield"))
        documents, queries = root / "corpus.jsonl.gz", root / "queries.jsonl.gz"
    elif corpus == "scifact":
        documents, queries = SCIFACT_ROOT / "corpus.jsonl", SCIFACT_ROOT / "queries.jsonl"
    else:
        raise ValueError(f"corpus must be cranfield or scifact, got {corpus!r}")
    return list(load_queries(queries).values()), list(load_corpus(documents).texts)


# MS MARCO-like passage lengths, in word pieces without the [CLS] [D] [SEP] markers: log-normal
# with median 68 and sigma 0.45 (mean 75, 90th percentile 121, 99th 194, so ~2% reach
# doc_maxlen 180), at least 8. A model of the figures usually quoted for MS MARCO v1 passages
# (~56 words, ~75 WordPiece tokens on average, a long tail); no MS MARCO data is read.
MSMARCO_MEDIAN, MSMARCO_SIGMA, MSMARCO_MIN = 68, 0.45, 8
LENGTHS = ("natural", "msmarco")


def msmarco_like(
    tokenizer: Any, documents: list[str], count: int, seed: int = 0
) -> tuple[list[str], list[int]]:
    """``count`` texts of the corpus cut to MS MARCO-like word-piece lengths.

    Each target length is drawn from the log-normal above; the text is a random document's
    word pieces (continued by further random documents when it is shorter) cut to that many
    and decoded back, so re-tokenised it has about that length.

    Returns:
        The texts and their target lengths.
    """
    hf_tokenizer = tokenizer.tokenizer
    chooser = random.Random(f"msmarco-lengths:{seed}")
    texts, targets = [], []
    for _ in range(count):
        target = max(MSMARCO_MIN, round(chooser.lognormvariate(math.log(MSMARCO_MEDIAN),
                                                               MSMARCO_SIGMA)))  # fmt: skip
        pieces: list[int] = []
        while len(pieces) < target:
            text = chooser.choice(documents)
            pieces += hf_tokenizer(text, add_special_tokens=False, truncation=True)["input_ids"]
        texts.append(hf_tokenizer.decode(pieces[:target]))
        targets.append(target)
    return texts, targets


def make_batches(
    tokenizer: Any,
    count: int,
    batch_size: int,
    nway: int,
    corpus: str,
    seed: int = 0,
    lengths: str = "natural",
) -> list[Any]:
    """``count`` TrainingBatches of real texts (random pairings) through the real Collator.

    ``lengths="natural"``: documents follow the corpus' own length distribution, truncated at
    ``doc_maxlen`` and padded to each batch's longest, as in training. ``"msmarco"``: the
    corpus' texts cut to MS MARCO-like lengths (:func:`msmarco_like`).
    """
    from colbert_lightning.data.collate import Collator
    from colbert_lightning.data.types import TrainingExample

    if lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {lengths!r}")
    queries, documents = corpus_texts(corpus)
    if lengths == "msmarco":
        documents, _ = msmarco_like(tokenizer, documents, count * batch_size * nway, seed)
    chooser = random.Random(seed)
    collate = Collator(tokenizer)
    batches = []
    for _ in range(count):
        examples = [
            TrainingExample(
                query=chooser.choice(queries),
                positive=chooser.choice(documents),
                negatives=tuple(chooser.choice(documents) for _ in range(nway - 1)),
            )
            for _ in range(batch_size)
        ]
        batches.append(collate(examples))
    return batches


def token_counts(batch: Any) -> tuple[int, int]:
    """(real, padded) encoder tokens of a TrainingBatch: queries plus documents.

    Every query position is real (the [MASK] expansion is encoded and scored); a document's
    real tokens are those the encoder attends to.
    """
    real = batch.queries.input_ids.numel() + int(batch.documents.attention_mask.sum())
    padded = batch.queries.input_ids.numel() + batch.documents.input_ids.numel()
    return real, padded
