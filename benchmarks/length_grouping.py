"""Padding with and without length-grouped batching (``data.length_grouping``).

Streams a real training file through the real stream, Collator and tokenizer of the default
config (Cranfield's prepared triples; ``--data`` another data config that prepares triples, or
``--path`` a training file), as training gets its batches (in one process, no workers), and
prints per setting of ``length_grouping``:

- ``real_share``: real document tokens / padded document tokens (1.0: no padding);
- ``mean_width``: mean padded document width (tokens per document row, ``doc_maxlen`` at most);
- ``seconds``: wall time to produce the batches (read, shuffle, group, tokenise, collate).

The same examples are read in every setting: the first ``--batches`` batches of the same
shuffled stream, rounded up to whole pools of every N (grouping only reorders examples within a
pool of N batches), so the real tokens are the same and only the padding differs.

    python benchmarks/length_grouping.py [--grouping 4 8 16] [--batches 200] [--doc-maxlen 512]
    python benchmarks/length_grouping.py --data scifact
    python benchmarks/length_grouping.py --path triples.jsonl [--format jsonl]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compose, header, table, write_json  # noqa: E402


def datamodule_for(args: argparse.Namespace, grouping: int, out: str) -> Any:
    """The default config's DataModule (or one reading ``--path``), prepared and scanned."""
    from hydra.utils import instantiate

    from colbert_lightning.modeling.tokenization import ColBERTTokenizer
    from colbert_lightning.resources import resource_path

    overrides = [
        "data.num_workers=0",
        f"data.batch_size={args.batch_size}",
        f"data.nway={args.nway}",
        f"data.length_grouping={grouping}",
        f"seed={args.seed}",
    ]
    if args.path is None:
        overrides.append(f"data={args.data}")
    else:
        cranfield = resource_path("cranfield")  # a dev set to fill the slots; never read here
        overrides += [
            "data=triples",
            f"data.train.path={Path(args.path).resolve()}",
            f"data.train.format={args.format}",
            f"data.dev.corpus={cranfield}/corpus.jsonl.gz",
            f"data.dev.queries={cranfield}/queries.jsonl.gz",
            f"data.dev.qrels={cranfield}/qrels/test.tsv",
        ]
    if args.doc_maxlen is not None:
        overrides.append(f"model.doc_maxlen={args.doc_maxlen}")
    cfg = compose(overrides, out)
    tokenizer = ColBERTTokenizer.from_config(instantiate(cfg.model))
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.prepare_data()
    datamodule.valid_lines()  # the set-up scan, outside the timing
    return datamodule


def measure(datamodule: Any, batches: int) -> dict[str, Any]:
    """Padding figures and seconds for the first ``batches`` batches of the endless stream."""
    stream = iter(datamodule.train_dataset(max_passes=None))
    real = padded = width = 0
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
        real += int(batch.documents.attention_mask.sum())
        padded += batch.documents.input_ids.numel()
        width += batch.documents.input_ids.shape[1]
    seconds = time.perf_counter() - started
    return {
        "length_grouping": datamodule.length_grouping,
        "real_tokens": real,
        "padded_tokens": padded,
        "real_share": real / padded,
        "mean_width": width / batches,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure each setting, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grouping", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batches", type=int, default=200, help="batches per setting")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--nway", type=int, default=2)
    parser.add_argument("--doc-maxlen", type=int, default=None, help="default: the config's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", default="cranfield", help="a data config that prepares triples")
    parser.add_argument("--path", default=None, help="a training file instead of --data's")
    parser.add_argument("--format", default="jsonl", help="format of --path (data.train.format)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # whole pools of every setting: the same examples in each
    pools = math.lcm(*(max(1, grouping) for grouping in args.grouping))
    args.batches = -(-args.batches // pools) * pools
    source = args.path or f"data={args.data}'s prepared triples"
    info = header(
        f"length grouping: {source}, batch {args.batch_size}, nway {args.nway}, "
        f"{args.batches} batches per setting"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="colbert-bench-grouping-") as out:
        for grouping in [0, *args.grouping]:
            datamodule = datamodule_for(args, grouping, out)
            row = measure(datamodule, args.batches)
            row["doc_maxlen"] = datamodule.tokenizer.config.doc_maxlen
            rows.append(row)
            print(
                f"   length_grouping={grouping}: real/padded document tokens "
                f"{row['real_share']:.3f}, mean padded width {row['mean_width']:.1f}, "
                f"{row['seconds']:.2f} s"
            )
            sys.stdout.flush()
    baseline = rows[0]["padded_tokens"]
    if any(row["real_tokens"] != rows[0]["real_tokens"] for row in rows):
        raise RuntimeError("the settings read different examples: compare nothing")
    for row in rows:
        row["padded_vs_off"] = row["padded_tokens"] / baseline
    print(
        table(
            rows,
            [
                "length_grouping",
                "doc_maxlen",
                "real_share",
                "mean_width",
                "padded_tokens",
                "padded_vs_off",
                "seconds",
            ],
        )
    )
    payload = {"machine": info, "args": vars(args), "rows": rows}
    write_json(args.out, "length_grouping", payload)
    return payload


if __name__ == "__main__":
    main()
