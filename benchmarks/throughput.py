"""Training throughput: our step against PyLate's on the same batches, then end to end.

(a) The model step alone (forward, loss, backward, clip, AdamW) on fixed batches, for each of our
    speed levers, alternating in one invocation with PyLate's step on the same token ids (PyLate
    runs in its own venv as a long-lived subprocess, ``peers/pylate16/peer_step.py``). Each pair of
    runs gives a ratio ours/PyLate in triples per second; the table shows every pair's ratio and
    the median.
(b) End to end through the Lightning Trainer with the real DataModule (reading, shuffling,
    tokenising in a worker, collating), default callbacks off.

Tokens: "real" counts every query position (the [MASK] expansion is encoded and scored) and the
documents' attended tokens; "padded" counts every position the encoder computes. Peak memory is
the process' peak RSS on CPU (cumulative over the run) and ``max_memory_allocated`` on GPU (reset
per variant). On GPU an MFU estimate: 6 x non-embedding parameters x tokens / time / peak FLOP/s.

    python benchmarks/throughput.py                       # CPU, tiny config, batch 32, nway 2
    python benchmarks/throughput.py --device cuda --model bert_base --batch-size 128
    python benchmarks/throughput.py --lengths msmarco   # Cranfield's texts, MS MARCO-like lengths
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    LENGTHS,
    REPO,
    compose,
    header,
    make_batches,
    peak_rss_mb,
    table,
    token_counts,
    write_json,
)

# The peer's interpreter: its own venv here; COLBERT_PEER_PYTHON elsewhere (gpu_check.sh).
PEER_PYTHON = Path(
    os.environ.get(
        "COLBERT_PEER_PYTHON",
        REPO / "benchmarks" / "peers" / "pylate16" / ".venv" / "bin" / "python",
    )
)
PEER_SCRIPT = REPO / "benchmarks" / "peers" / "pylate16" / "peer_step.py"

# BERT-base's architecture, built offline from sizes (every weight random), BERT's own dropout.
MODEL_OVERRIDES = {
    "tiny": [],
    "bert_base": [
        "model.encoder_config.hidden_size=768",
        "model.encoder_config.num_hidden_layers=12",
        "model.encoder_config.num_attention_heads=12",
        "model.encoder_config.intermediate_size=3072",
        "model.encoder_config.hidden_dropout_prob=0.1",
        "model.encoder_config.attention_probs_dropout_prob=0.1",
    ],
}

# Dense bf16 peak FLOP/s (no sparsity) by a fragment of the device name, for the MFU estimate.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


@dataclass(frozen=True)
class Variant:
    """One configuration of our step: the levers it pulls."""

    name: str
    precision: str  # "32" or "bf16"
    fused_adamw: bool = False
    gathered_maxsim: bool = False
    document_buckets: int = 1

    def describe(self) -> str:
        """A short text of the levers."""
        levers = ["bf16" if self.precision == "bf16" else "fp32"]
        if self.fused_adamw:
            levers.append("fused AdamW")
        if self.gathered_maxsim:
            levers.append("gathered MaxSim")
        if self.document_buckets > 1:
            levers.append(f"{self.document_buckets} length buckets")
        return " + ".join(levers)


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("fp32", "32"),
        Variant("fp32_fused", "32", fused_adamw=True),
        Variant("fp32_gathered", "32", gathered_maxsim=True),
        Variant("fp32_fused_gathered", "32", fused_adamw=True, gathered_maxsim=True),
        Variant("bf16", "bf16"),
        Variant("bf16_fused", "bf16", fused_adamw=True),
        Variant("bf16_gathered", "bf16", gathered_maxsim=True),
        Variant("bf16_fused_gathered", "bf16", fused_adamw=True, gathered_maxsim=True),
        Variant("fp32_all", "32", fused_adamw=True, gathered_maxsim=True, document_buckets=4),
        Variant("bf16_all", "bf16", fused_adamw=True, gathered_maxsim=True, document_buckets=4),
        Variant("bf16_buckets2", "bf16", document_buckets=2),
        Variant("bf16_buckets4", "bf16", document_buckets=4),
        Variant("bf16_buckets8", "bf16", document_buckets=8),
    )
}

# End-to-end Trainer runs: the default config (its speed levers on), the step without them, bf16.
END_TO_END = {
    "default": [],
    "plain": ["speed=plain"],
    "bf16": ["trainer.precision=bf16-mixed"],
}


def parse_variant(spec: str) -> tuple[str, Variant, str]:
    """``name`` (PyLate at the same precision) or ``name@32`` / ``name@bf16`` (PyLate's set)."""
    name, _, peer_precision = spec.partition("@")
    if name not in VARIANTS or peer_precision not in ("", "32", "bf16"):
        raise SystemExit(f"--variants: unknown {spec!r}; names: {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    return spec, variant, peer_precision or variant.precision


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast (what ``trainer.precision=bf16-mixed`` does) or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def build_module(model: str, batch_size: int, nway: int, out: str) -> Any:
    """Our LightningModule as the default training config builds it (no Trainer attached).

    Returns the config, the module and a function giving its optimiser (plain or fused).
    """
    from hydra.utils import instantiate

    from colbert_lightning.modeling import ColBERT

    overrides = [*MODEL_OVERRIDES[model], f"data.batch_size={batch_size}", f"data.nway={nway}"]
    cfg = compose(overrides, out)
    torch.manual_seed(0)
    colbert = ColBERT.from_config(instantiate(cfg.model))
    module = instantiate(cfg.module, model=colbert)
    module.scheduler_factory = None  # the schedule needs a Trainer; it costs nothing per step
    optimizers: dict[bool, Any] = {}

    def optimizer(fused: bool) -> Any:
        if fused not in optimizers:
            module.optimizer_factory.keywords["fused"] = fused or None
            optimizers[fused] = module.configure_optimizers()["optimizer"]
        return optimizers[fused]

    return cfg, module, optimizer


class Peer:
    """PyLate's step in its own venv; one JSON command per line over a pipe."""

    def __init__(self, spec_path: Path, threads: int, device: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen(
            [str(PEER_PYTHON), str(PEER_SCRIPT), "--batches", str(spec_path)]
            + ["--threads", str(threads), "--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if not os.environ.get("PEER_STDERR") else None,
            text=True,
            env=env,
        )
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"the PyLate peer did not start: {ready}")
        self.parameters = ready["parameters"]

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the PyLate peer exited (set PEER_STDERR=1 to see why)")
        return json.loads(line)

    def call(self, **command: Any) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ask the peer to quit and wait for it."""
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def write_peer_spec(module: Any, batches: list[Any], folder: Path, lr: float) -> Path:
    """The encoder (same weights) and the batches as PyLate's collator would pad them."""
    model = module.model
    encoder_dir = folder / "encoder"
    model.encoder.save_pretrained(encoder_dir)
    model.tokenizer.tokenizer.save_pretrained(encoder_dir)
    peer_batches = []
    for batch in batches:
        columns = [
            {"input_ids": batch.queries.input_ids, "attention_mask": batch.queries.attention_mask}
        ]
        # PyLate 1.6's collator tokenises every column with pad=True: documents are padded to
        # document_length (doc_maxlen), whatever their lengths (and its loss stacks the columns)
        padding = model.config.doc_maxlen - batch.documents.input_ids.shape[1]
        pad_id = model.tokenizer.tokenizer.pad_token_id
        for column in range(batch.nway):
            ids = batch.documents.input_ids[column :: batch.nway]
            mask = batch.documents.attention_mask[column :: batch.nway]
            columns.append(
                {
                    "input_ids": torch.nn.functional.pad(ids, (0, padding), value=pad_id),
                    "attention_mask": torch.nn.functional.pad(mask, (0, padding), value=0),
                }
            )
        peer_batches.append(columns)
    config = model.config
    spec = {
        "encoder_dir": str(encoder_dir),
        "linear_weight": model.linear.weight.detach().cpu().clone(),
        "dim": config.dim,
        "query_token": config.query_token,
        "doc_token": config.doc_token,
        "query_maxlen": config.query_maxlen,
        "doc_maxlen": config.doc_maxlen,
        "lr": lr,
        "batches": peer_batches,
    }
    path = folder / "peer_spec.pt"
    torch.save(spec, path)
    return path


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the input embedding tables (what the 6ND FLOP count uses)."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "embeddings." in name and "Norm" not in name
    )
    return total - embeddings


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, if known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, flops in PEAK_BF16_FLOPS.items():
        if fragment in name:
            return flops
    return None


def our_runner(module: Any, optimizer: Any, batches: list[Any], device: torch.device) -> Any:
    """A function running N of our steps (cycling over the batches) and returning seconds."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    position = 0

    def run(steps: int, precision: str) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process, all threads) of ``steps`` steps."""
        nonlocal position
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(steps):
            batch = batches[position % len(batches)]
            position += 1
            with autocast(device, precision):
                loss = module.batch_loss(batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - started, time.process_time() - cpu_started

    return run


def variant_runner(
    module: Any, optimizer: Any, variant: Variant, batches: list[Any], device: torch.device
) -> Any:
    """:func:`our_runner` with the variant's levers set on the module and its optimiser."""
    module.gathered_maxsim = variant.gathered_maxsim
    module.document_buckets = variant.document_buckets
    return our_runner(module, optimizer(variant.fused_adamw), batches, device)


def profile_table(run: Any, steps: int, precision: str, device: torch.device, rows: int) -> str:
    """torch.profiler's top operators (by self time) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        run(steps, precision)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def model_step_section(args: argparse.Namespace, device: torch.device, out: str) -> dict:
    """(a): our variants against PyLate on the same fixed batches, alternating."""
    results: dict[str, Any] = {"variants": {}, "pairs": []}
    variants = [parse_variant(spec) for spec in args.variants]
    # One module for every variant (a lever only changes how its step is computed).
    cfg, module, optimizer = build_module(args.model, args.batch_size, args.nway, out=out)
    module.to(device)
    batches = make_batches(
        module.model.tokenizer,
        args.batches,
        args.batch_size,
        args.nway,
        args.corpus,
        lengths=args.lengths,
    )
    counts = [token_counts(batch) for batch in batches]
    real = sum(count[0] for count in counts) / len(counts)
    padded = sum(count[1] for count in counts) / len(counts)
    doc_widths = [batch.documents.input_ids.shape[1] for batch in batches]
    lengths = sorted(
        int(length) for batch in batches for length in batch.documents.attention_mask.sum(dim=1)
    )
    distribution = {
        "mean": statistics.fmean(lengths),
        "median": statistics.median(lengths),
        "p90": lengths[int(0.9 * (len(lengths) - 1))],
        "max": lengths[-1],
    }
    print(
        f"   {args.batches} fixed batches of {args.corpus} texts, {args.lengths} lengths: batch "
        f"{args.batch_size}, nway {args.nway}; document tokens (with markers) mean "
        f"{distribution['mean']:.0f}, median {distribution['median']:.0f}, 90th percentile "
        f"{distribution['p90']}, max {distribution['max']}; padded width "
        f"{min(doc_widths)}-{max(doc_widths)}; real tokens {real / padded:.0%} of padded "
        f"({real:.0f} / {padded:.0f} per batch)"
    )
    results["tokens_per_batch"] = {"real": real, "padded": padded}
    results["document_lengths"] = distribution
    on_device = [batch.to(device) for batch in batches]
    lr = float(cfg.module.optimizer.lr)
    peer = None
    workdir = tempfile.TemporaryDirectory(prefix="colbert-bench-")
    if args.peer:
        if not PEER_PYTHON.exists():
            raise SystemExit(
                f"no PyLate venv at {PEER_PYTHON}: run bash benchmarks/peers/pylate16/setup.sh "
                "(or pass --no-peer)"
            )
        spec = write_peer_spec(module, batches, Path(workdir.name), lr)
        peer = Peer(spec, args.threads, str(device))
        ours = sum(p.numel() for p in module.parameters())
        print(f"   PyLate peer ready: {peer.parameters:,} parameters (ours {ours:,})")
    flops_per_token = 6 * non_embedding_parameters(module.model)
    peak = peak_flops(device)
    try:
        for key, variant, peer_precision in variants:
            run = variant_runner(module, optimizer, variant, on_device, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run(args.warmup, variant.precision)
            if peer is not None:
                peer.call(cmd="run", steps=args.warmup, precision=peer_precision)
            ours_seconds, peer_seconds, ratios, cpu_ratios, ours_cpu = [], [], [], [], []
            for pair in range(args.pairs):
                seconds, cpu_seconds = run(args.steps, variant.precision)
                ours_seconds.append(seconds)
                ours_cpu.append(cpu_seconds)
                row = {
                    "variant": key,
                    "pair": pair,
                    "ours_s_per_step": seconds / args.steps,
                }
                if peer is not None:
                    answer = peer.call(cmd="run", steps=args.steps, precision=peer_precision)
                    peer_seconds.append(answer["seconds"])
                    ratios.append(answer["seconds"] / seconds)
                    cpu_ratios.append(answer["cpu_seconds"] / cpu_seconds)
                    row["pylate_s_per_step"] = answer["seconds"] / args.steps
                    row["ratio"] = ratios[-1]
                    row["cpu_ratio"] = cpu_ratios[-1]
                results["pairs"].append(row)
            step_s = statistics.median(ours_seconds) / args.steps
            summary = {
                "levers": variant.describe(),
                "pylate_precision": "bf16" if peer_precision == "bf16" else "fp32",
                "s_per_step": step_s,
                "cpu_s_per_step": statistics.median(ours_cpu) / args.steps,
                "triples_per_s": args.batch_size / step_s,
                "real_tokens_per_s": real / step_s,
                "padded_tokens_per_s": padded / step_s,
                "peak_memory_mb": (
                    torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda"
                    else peak_rss_mb()
                ),
            }
            if peak is not None:
                summary["mfu_real"] = flops_per_token * real / step_s / peak
                summary["mfu_padded"] = flops_per_token * padded / step_s / peak
            if peer is not None:
                peer_step = statistics.median(peer_seconds) / args.steps
                summary["pylate_s_per_step"] = peer_step
                summary["pylate_triples_per_s"] = args.batch_size / peer_step
                summary["ratios"] = ratios
                summary["median_ratio"] = statistics.median(ratios)
                summary["cpu_ratios"] = cpu_ratios
                summary["median_cpu_ratio"] = statistics.median(cpu_ratios)
            results["variants"][key] = summary
            shown = f"{summary['median_ratio']:.2f}x" if peer is not None else "-"
            print(
                f"   {key:<22} {step_s * 1e3:7.1f} ms/step  ours/PyLate "
                f"({summary['pylate_precision']}) {shown}  pairs: "
                + " ".join(f"{ratio:.2f}" for ratio in ratios)
                + (
                    f"; by CPU time {summary['median_cpu_ratio']:.2f}x: "
                    + " ".join(f"{ratio:.2f}" for ratio in cpu_ratios)
                    if peer is not None
                    else ""
                )
            )
            sys.stdout.flush()
        if args.profile_steps:
            first, last = variants[0][1], variants[-1][1]
            for label, variant in (("before", first), ("after", last)):
                run = variant_runner(module, optimizer, variant, on_device, device)
                results[f"profile_{label}"] = {
                    "variant": variant.name,
                    "table": profile_table(
                        run, args.profile_steps, variant.precision, device, args.profile_rows
                    ),
                }
            if peer is not None:
                answer = peer.call(
                    cmd="profile",
                    steps=args.profile_steps,
                    precision=last.precision,
                    rows=args.profile_rows,
                )
                results["profile_pylate"] = {"variant": last.precision, "table": answer["table"]}
    finally:
        if peer is not None:
            peer.close()
        workdir.cleanup()
    return results


class StepClock:
    """Lightning callback: a timestamp at each batch start and how long each waited for data."""

    def __init__(self, device: torch.device) -> None:
        import lightning.pytorch as pl

        self.device = device
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.real_tokens = 0
        self.padded_tokens = 0
        clock = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
                clock.starts.append(time.perf_counter())
                real, padded = token_counts(batch)
                clock.real_tokens += real
                clock.padded_tokens += padded

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
                synchronize(clock.device)
                clock.ends.append(time.perf_counter())

        self.callback = _Callback()


def end_to_end_section(args: argparse.Namespace, device: torch.device, out: str) -> dict:
    """(b): the real Trainer and DataModule, per lever set, after ``warmup`` steps."""
    from hydra.utils import instantiate

    from colbert_lightning.modeling import ColBERT

    results: dict[str, Any] = {}
    total = args.e2e_warmup + args.e2e_steps
    for name in args.e2e:
        overrides = [
            *MODEL_OVERRIDES[args.model],
            f"data.batch_size={args.batch_size}",
            f"data.nway={args.nway}",
            f"data.num_workers={args.workers}",
            "callbacks=none",
            "logger=none",
            f"trainer.max_steps={total}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "trainer.enable_progress_bar=false",
            "+trainer.enable_checkpointing=false",
            "+trainer.enable_model_summary=false",
            *END_TO_END[name],
            *args.e2e_overrides,
        ]
        cfg = compose(overrides, out)
        torch.manual_seed(0)
        model = ColBERT.from_config(instantiate(cfg.model))
        datamodule = instantiate(cfg.data, tokenizer=model.tokenizer)
        module = instantiate(cfg.module, model=model)
        clock = StepClock(device)
        trainer = instantiate(cfg.trainer, callbacks=[clock.callback], logger=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        wall = time.perf_counter() - started
        starts, ends = clock.starts, clock.ends
        timed = args.e2e_steps
        span = ends[-1] - ends[args.e2e_warmup - 1]
        waits = [starts[i] - ends[i - 1] for i in range(args.e2e_warmup, len(starts))]
        step_s = span / timed
        real = clock.real_tokens / len(starts)
        padded = clock.padded_tokens / len(starts)
        row = {
            "levers": name,
            "workers": args.workers,
            "s_per_step": step_s,
            "triples_per_s": args.batch_size / step_s,
            "real_tokens_per_s": real / step_s,
            "padded_tokens_per_s": padded / step_s,
            "real_share": real / padded,
            "data_wait_share": sum(waits) / span,
            "fit_wall_s": wall,
            "peak_memory_mb": (
                torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else peak_rss_mb()
            ),
        }
        results[name] = row
        print(
            f"   trainer {name:<20} {step_s * 1e3:8.1f} ms/step  "
            f"{row['triples_per_s']:7.1f} triples/s  waiting for data {row['data_wait_share']:.1%}"
        )
        sys.stdout.flush()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="tiny", choices=sorted(MODEL_OVERRIDES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--nway", type=int, default=2)
    parser.add_argument("--corpus", default="cranfield", choices=["cranfield", "scifact"])
    parser.add_argument(
        "--lengths",
        default="natural",
        choices=list(LENGTHS),
        help="document lengths: the corpus' own, or its texts cut to MS MARCO-like lengths",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    parser.add_argument("--batches", type=int, default=8, help="distinct fixed batches")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing, per variant")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--pairs", type=int, default=5, help="alternating ours/PyLate runs")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[
            "fp32",
            "fp32_gathered",
            "fp32_fused_gathered",
            "bf16",
            "bf16_fused",
            "bf16_fused_gathered",
            "bf16_fused_gathered@32",
        ],
        help="our lever sets; name@32 or name@bf16 pairs it with PyLate at that precision "
        f"(default: the same as ours); names: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip PyLate")
    parser.add_argument("--profile-steps", type=int, default=3, help="0: no profiler tables")
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--e2e-steps", type=int, default=20, help="0: skip the Trainer runs")
    parser.add_argument("--e2e-warmup", type=int, default=5)
    parser.add_argument("--e2e", nargs="+", default=list(END_TO_END), choices=list(END_TO_END))
    parser.add_argument("--e2e-overrides", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (Trainer run)")
    parser.add_argument("--out", default=None, help="folder of the JSON (default benchmarks/out)")
    parser.add_argument("--name", default=None, help="JSON file name (default throughput_<device>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both sections, print their tables, write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    info = header(
        f"throughput: {args.model} on {args.device}, batch {args.batch_size}, nway {args.nway}"
    )
    payload: dict[str, Any] = {"machine": info, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="colbert-bench-out-") as out:
        print("-- (a) model step alone, fixed batches, alternating with PyLate")
        payload["model_step"] = model_step_section(args, device, out)
        rows = []
        for name, summary in payload["model_step"]["variants"].items():
            rows.append({"variant": name, **summary})
        columns = [
            "variant",
            "levers",
            "s_per_step",
            "triples_per_s",
            "real_tokens_per_s",
            "padded_tokens_per_s",
            "peak_memory_mb",
            "pylate_precision",
            "pylate_s_per_step",
            "median_ratio",
            "median_cpu_ratio",
        ]
        if device.type == "cuda":
            columns[-2:-2] = ["mfu_real", "mfu_padded"]
        print(table(rows, columns))
        matched = [
            f"{row['levers']}: {row['median_ratio']:.2f}x"
            for row in rows
            if row.get("median_ratio") is not None
            and row["pylate_precision"] == row["levers"].split(" + ")[0]
        ]
        if matched:
            print(
                f"   ours/PyLate at matched precision ({args.lengths} lengths, triples/s, median "
                "of the pairs): " + "; ".join(matched)
            )
        for label in ("before", "after", "pylate"):
            profile = payload["model_step"].get(f"profile_{label}")
            if profile:
                print(f"-- profiler, {label} ({profile['variant']}): top operators by self time")
                print(profile["table"])
        if args.e2e_steps:
            print(f"-- (b) end to end: Trainer + DataModule ({args.workers} worker(s))")
            payload["end_to_end"] = end_to_end_section(args, device, out)
            print(
                table(
                    list(payload["end_to_end"].values()),
                    [
                        "levers",
                        "s_per_step",
                        "triples_per_s",
                        "real_tokens_per_s",
                        "padded_tokens_per_s",
                        "real_share",
                        "data_wait_share",
                        "peak_memory_mb",
                    ],
                )
            )
    write_json(args.out, args.name or f"throughput_{args.device}", payload)
    return payload


if __name__ == "__main__":
    main()
