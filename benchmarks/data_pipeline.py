"""The data pipeline alone: batches/s of the real DataModule with 0, 1 and 2 workers.

Reading, shuffling, negative sampling, tokenising and collating, exactly as training gets its
batches (``ColBERTDataModule.train_dataloader()`` of the default config), against the training
step rate measured here on the same machine. Two figures per worker count:

- ``batches_per_s``: the pipeline flat out (the main process does nothing but take batches);
- ``main_wait_ms``: how long the main process waits for each batch when it consumes them at the
  training step rate (a sleep of one step between batches): with workers, tokenisation is off
  the main process' critical path when this is near zero.

    python benchmarks/data_pipeline.py [--workers 0 1 2] [--batches 60]
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

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compose, header, make_batches, table, write_json  # noqa: E402


def datamodule_for(workers: int, batch_size: int, nway: int, out: str) -> Any:
    """The default config's DataModule, prepared, with our tokenizer attached."""
    from hydra.utils import instantiate

    from colbert_lightning.modeling.tokenization import ColBERTTokenizer

    cfg = compose(
        [f"data.num_workers={workers}", f"data.batch_size={batch_size}", f"data.nway={nway}"], out
    )
    model_config = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=ColBERTTokenizer.from_config(model_config))
    datamodule.prepare_data()
    return datamodule


def flat_out(datamodule: Any, batches: int, warmup: int) -> tuple[float, float]:
    """(batches/s after warmup, seconds to the first batch) taking batches as fast as possible."""
    started = time.perf_counter()
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    first = time.perf_counter() - started
    for _ in range(warmup - 1):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches / (time.perf_counter() - started)
    del iterator
    return rate, first


def at_step_rate(datamodule: Any, batches: int, warmup: int, step_s: float) -> float:
    """Mean seconds the main process waits per batch when each batch is followed by one step."""
    iterator = iter(datamodule.train_dataloader())
    for _ in range(warmup):
        next(iterator)
    waited = 0.0
    for _ in range(batches):
        time.sleep(step_s)  # the training step (the workers keep producing meanwhile)
        started = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - started
    del iterator
    return waited / batches


def measure_step(batch_size: int, nway: int, out: str, steps: int) -> dict[str, float]:
    """Seconds per training step (model step alone, default tiny config), fp32 and bf16."""
    from throughput import autocast, build_module

    _, module, optimizers = build_module("tiny", batch_size, nway, out=out)
    optimizer = optimizers(False)
    batches = make_batches(module.model.tokenizer, 4, batch_size, nway, "cranfield")
    device = torch.device("cpu")
    result = {}
    for precision in ("32", "bf16"):
        times = []
        for index in range(steps + 2):
            started = time.perf_counter()
            with autocast(device, precision):
                loss = module.batch_loss(batches[index % len(batches)]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        result[precision] = sorted(times[2:])[len(times[2:]) // 2]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=60, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--nway", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step-steps", type=int, default=5, help="steps timed for the step rate")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = header(f"data pipeline: default DataModule, batch {args.batch_size}, nway {args.nway}")
    with tempfile.TemporaryDirectory(prefix="colbert-bench-data-") as out:
        step = measure_step(args.batch_size, args.nway, out, args.step_steps)
        fastest = min(step.values())
        print(
            f"   training step (tiny, model step alone): fp32 {step['32'] * 1e3:.0f} ms, "
            f"bf16 {step['bf16'] * 1e3:.0f} ms; fastest {1 / fastest:.2f} steps/s"
        )
        rows = []
        for workers in args.workers:
            datamodule = datamodule_for(workers, args.batch_size, args.nway, out)
            rate, first = flat_out(datamodule, args.batches, args.warmup)
            wait = at_step_rate(datamodule, max(10, args.batches // 4), args.warmup, fastest)
            rows.append(
                {
                    "workers": workers,
                    "batches_per_s": rate,
                    "x_step_rate": rate * fastest,
                    "first_batch_s": first,
                    "main_wait_ms": wait * 1e3,
                    "wait_share_of_step": wait / fastest,
                }
            )
            print(
                f"   {workers} worker(s): {rate:.1f} batches/s = {rate * fastest:.1f}x the step "
                f"rate; main process waits {wait * 1e3:.1f} ms per batch at the step rate"
            )
            sys.stdout.flush()
    print(
        table(
            rows,
            [
                "workers",
                "batches_per_s",
                "x_step_rate",
                "first_batch_s",
                "main_wait_ms",
                "wait_share_of_step",
            ],
        )
    )
    payload = {"machine": info, "args": vars(args), "step_s": step, "rows": rows}
    write_json(args.out, "data_pipeline", payload)
    return payload


if __name__ == "__main__":
    main()
