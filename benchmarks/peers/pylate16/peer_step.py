"""PyLate's training step, timed on batches the parent benchmark hands over; runs in the peer venv.

Started by ``benchmarks/throughput.py`` as a long-lived subprocess with
``benchmarks/peers/pylate16/.venv/bin/python``. It loads the parent's encoder (same weights, same
architecture) as a ``pylate.models.ColBERT``, copies the parent's projection into PyLate's Dense
layer, and then answers one JSON command per line on stdin with one JSON line on stdout:

    {"cmd": "run", "steps": N, "precision": "32" | "bf16"}  ->  {"seconds": s, "loss": x}
    {"cmd": "profile", "steps": N, "precision": ...}      ->  {"table": "...top ops..."}
    {"cmd": "quit"}

A step is what PyLate's Contrastive training does per batch: ``Contrastive(model)`` on
``[queries, positives, negatives]`` feature dicts (documents padded to ``doc_maxlen``, as
PyLate's collator pads them), backward, gradient clipping at 1.0 (the Hugging Face Trainer's
default ``max_grad_norm``), AdamW step (fused, the Trainer's default ``adamw_torch_fused`` with
torch >= 2.8; ``--no-fused-adamw`` for the for-loop one), zero_grad. Tokenisation is not timed on
either side: both get the same token ids.

Only ``pylate.models`` and ``pylate.losses`` are imported: PyLate 1.6.0 is installed with
``--no-deps`` (its index dependencies, fast-plaid and fastkmeans, are not needed for training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from pylate import losses, models  # noqa: E402


def main() -> None:
    """Load, warm nothing, then serve commands until ``quit``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", required=True, help="the .pt file the parent wrote")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-fused-adamw", dest="fused_adamw", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = torch.load(args.batches, weights_only=False)
    device = torch.device(args.device)
    model = models.ColBERT(
        spec["encoder_dir"],
        device=args.device,
        embedding_size=spec["dim"],
        query_prefix=spec["query_token"],
        document_prefix=spec["doc_token"],
        query_length=spec["query_maxlen"],
        document_length=spec["doc_maxlen"],
        attend_to_expansion_tokens=False,
    )
    with torch.no_grad():
        model[1].linear.weight.copy_(spec["linear_weight"])
    model.train()
    loss_fn = losses.Contrastive(model)
    # The Hugging Face Trainer's default optimiser with torch >= 2.8 is adamw_torch_fused.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec["lr"], weight_decay=0.01, fused=args.fused_adamw
    )
    batches = [
        [{name: tensor.to(device) for name, tensor in features.items()} for features in batch]
        for batch in spec["batches"]
    ]
    position = 0

    def step(precision: str) -> float:
        nonlocal position
        features = batches[position % len(batches)]
        position += 1
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else nullcontext()
        )
        with autocast:
            loss = loss_fn(features)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(json.dumps({"ready": True, "parameters": sum(p.numel() for p in model.parameters())}))
    sys.stdout.flush()
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        precision = command.get("precision", "32")
        if command["cmd"] == "run":
            synchronize()
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(command["steps"]):
                loss = step(precision)
            synchronize()
            reply = {
                "seconds": time.perf_counter() - started,
                "cpu_seconds": time.process_time() - cpu_started,
                "loss": float(loss.detach()),
            }
        elif command["cmd"] == "profile":
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            with profile(activities=activities) as prof:
                for _ in range(command["steps"]):
                    step(precision)
                synchronize()
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            reply = {"table": prof.key_averages().table(sort_by=sort, row_limit=command["rows"])}
        else:
            reply = {"error": f"unknown command {command['cmd']!r}"}
        print(json.dumps(reply))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
