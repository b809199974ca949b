"""Peak memory of one training step, uncached against GradCache (``module.cached=true``).

Each mode runs in a fresh process on the same batch of real texts (the default training config,
``make_batches``): one warm-up step (the first call of a shape builds its kernels, seconds on
CPU), then forward, loss and backward timed ``--steps`` times. The memory figure is the peak
above the size just before the timed steps: on CPU the process' resident set size (``VmHWM`` -
``VmRSS``, the peak reset after the warm-up through ``/proc/self/clear_refs``, Linux); on GPU
``max_memory_allocated`` (reset likewise). The loss is printed too: the two
modes must agree (``tests/test_cached.py`` checks the gradients).

    python benchmarks/cached_memory.py                          # CPU, tiny model, batch 256
    python benchmarks/cached_memory.py --device cuda --model bert_base --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, make_batches, table, token_counts, write_json  # noqa: E402
from throughput import MODEL_OVERRIDES, build_module  # noqa: E402


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one_step(args: argparse.Namespace) -> dict[str, float]:
    """Run one step of ``args.mode`` in this process; the figures as a dict."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as out:
        _, module, _ = build_module(args.model, args.batch_size, args.nway, out)
    module.cached = args.mode == "cached"
    module.gathered_maxsim = args.gathered_maxsim
    module.cache_chunk_size = args.chunk
    module.to(device).train()
    batch = make_batches(module.model.tokenizer, 1, args.batch_size, args.nway, args.corpus)[0]
    batch = batch.to(device)
    step = module.cached_batch_loss if module.cached else module.batch_loss
    step(batch).loss.backward()  # warm-up
    module.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _status_mib("VmRSS")
    start = time.perf_counter()
    for _ in range(args.steps):
        module.zero_grad(set_to_none=True)
        loss = step(batch).loss
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mib("VmHWM")
    seconds = (time.perf_counter() - start) / args.steps
    real, padded = token_counts(batch)
    return {
        "loss": loss.item(),
        "peak_above_start_mib": peak - before,
        "step_s": seconds,
        "real_tokens": real,
        "padded_tokens": padded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="tiny", choices=sorted(MODEL_OVERRIDES))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--nway", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=32, help="queries per cached chunk")
    parser.add_argument(
        "--gathered-maxsim",
        action="store_true",
        help="module.gathered_maxsim=true: MaxSim keeps only each query token's best match for "
        "its backward, not the whole (queries x documents x tokens x tokens) similarity",
    )
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--corpus", default="cranfield", choices=["cranfield", "scifact"])
    parser.add_argument("--out", default=None, help="folder of the JSON (benchmarks/out)")
    parser.add_argument("--mode", choices=["uncached", "cached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:  # the child: one step, figures on the last line
        print(json.dumps(one_step(args)))
        return
    info = header(
        f"one training step, {args.model}, batch {args.batch_size} x nway {args.nway}, "
        f"{args.corpus} texts, {args.device}, gathered_maxsim={args.gathered_maxsim}: "
        f"uncached vs cached (chunk {args.chunk})"
    )
    rows = []
    for mode in ("uncached", "cached"):
        command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the {mode} step failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"mode": mode, **figures})
    uncached, cached = rows
    print(table(rows, ["mode", "peak_above_start_mib", "step_s", "loss", "real_tokens"]))
    ratio = cached["peak_above_start_mib"] / uncached["peak_above_start_mib"]
    print(
        f"cached peak / uncached peak: {ratio:.2f}; step time x"
        f"{cached['step_s'] / uncached['step_s']:.2f}; "
        f"loss difference {abs(cached['loss'] - uncached['loss']):.2e}"
    )
    write_json(args.out, "cached_memory", {**info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
