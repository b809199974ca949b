"""Evaluation cost: seconds per dev evaluation, and its share of a default training run.

1. Seconds per evaluation (exact MaxSim over the whole dev corpus, the callback's settings) of the
   default tiny model on Cranfield dev (50 queries, 1,400 documents) and SciFact dev (100
   queries, 5,183 documents), in fp32 and under bf16 autocast (``callbacks.evaluation.precision``
   32 and bf16; the default, ``auto``, is bf16 on CPUs with AVX512-BF16 or AMX and on GPUs with
   bf16). The corpus is tokenised once per model, as during training: the first evaluation
   includes it, the best of ``--repeats`` does not.
2. The default run (``python -m colbert_lightning.train`` with no overrides: conf/train.yaml and
   callbacks/default.yaml, its early-phase schedule) run once in this process, with the
   evaluation callback timed: evaluation seconds / the run's wall time.

    python benchmarks/eval_cost.py [--repeats 2] [--no-run] [--run-overrides KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT_ROOT, compose, header, table, write_json  # noqa: E402


def per_evaluation(data: str, repeats: int, out: str) -> list[dict[str, Any]]:
    """Seconds per evaluation of the untrained default model on ``data``'s dev set."""
    from hydra.utils import instantiate

    from colbert_lightning.modeling import ColBERT

    cfg = compose([f"data={data}"], out)
    torch.manual_seed(0)
    model = ColBERT.from_config(instantiate(cfg.model))
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer)
    datamodule.prepare_data()
    dev_set = datamodule.dev_set()
    module = instantiate(cfg.module, model=model)
    settings = cfg.callbacks.evaluation
    rows = []
    for precision in ("32", "bf16"):
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            metrics = module.evaluate_retrieval(
                dev_set, settings.mode, settings.batch_size, settings.k, precision
            )
            seconds.append(time.perf_counter() - started)
        rows.append(
            {
                "dev_set": data,
                "queries": len(dev_set.queries),
                "documents": len(dev_set.corpus_ids),
                "precision": precision,
                "s_per_eval": min(seconds),
                "first_s": seconds[0],
                "ndcg@10": metrics["ndcg@10"],
            }
        )
        print(
            f"   {data:<10} {precision:>4}: {min(seconds):.2f} s per evaluation, first "
            f"{seconds[0]:.2f} s ({len(dev_set.queries)} queries x {len(dev_set.corpus_ids)} "
            "documents)"
        )
        sys.stdout.flush()
    return rows


def default_run(overrides: list[str], out: str) -> dict[str, Any]:
    """The default training run, its evaluations timed; returns the share of wall time."""
    from colbert_lightning.training import RetrievalEvaluation
    from colbert_lightning.training.run import train

    timings: list[tuple[int, float]] = []
    original = RetrievalEvaluation.evaluate

    def timed(self: Any, trainer: Any, pl_module: Any) -> dict[str, float]:
        started = time.perf_counter()
        values = original(self, trainer, pl_module)
        timings.append((trainer.global_step, time.perf_counter() - started))
        return values

    cfg = compose(["trainer.enable_progress_bar=false", *overrides], out)
    RetrievalEvaluation.evaluate = timed
    try:
        results = train(cfg)
    finally:
        RetrievalEvaluation.evaluate = original
    evaluating = sum(seconds for _, seconds in timings)
    wall = results["wall_time_s"]
    return {
        "overrides": overrides,
        "steps": results["steps"],
        "evaluations": [{"step": step, "seconds": seconds} for step, seconds in timings],
        "evaluation_s": evaluating,
        "wall_time_s": wall,
        "eval_share": evaluating / wall,
        "final_ndcg@10": (results["final"] or {}).get("val/ndcg@10"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-run", dest="run", action="store_false", help="skip the default run")
    parser.add_argument("--run-overrides", nargs="*", default=[], help="for the default run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = header("evaluation cost: exact MaxSim dev evaluation, default tiny model")
    payload: dict[str, Any] = {"machine": info, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="colbert-bench-eval-") as out:
        rows = per_evaluation("cranfield", args.repeats, out)
        if (SCIFACT_ROOT / "corpus.jsonl").exists():
            rows += per_evaluation("scifact", args.repeats, out)
        else:
            print(f"   SciFact not found at {SCIFACT_ROOT}: skipped")
        columns = ["dev_set", "queries", "documents", "precision", "s_per_eval", "first_s"]
        print(table(rows, columns))
        payload["per_evaluation"] = rows
        if args.run:
            shown = " ".join(args.run_overrides) or "no overrides"
            print(f"-- the default training run ({shown}), evaluations timed")
            sys.stdout.flush()
            run = default_run(args.run_overrides, out)
            payload["default_run"] = run
            steps = " ".join(f"{row['step']}:{row['seconds']:.1f}s" for row in run["evaluations"])
            print(f"   evaluations (step:seconds): {steps}")
            print(
                f"   {len(run['evaluations'])} evaluations took {run['evaluation_s']:.1f} s of "
                f"{run['wall_time_s']:.1f} s wall time: {run['eval_share']:.1%} (target <= 20%)"
            )
    write_json(args.out, "eval_cost", payload)
    return payload


if __name__ == "__main__":
    main()
