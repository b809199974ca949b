"""Streaming memory: peak RSS reading a generated 100k-line and a 5M-line triples file.

Each file is read once, start to end, through the real training stream (``TripleStream`` with the
``jsonl`` reader, the default 10,000-example shuffle buffer and negative sampling) in a fresh
subprocess, which reports its peak RSS (``getrusage`` maxrss) and its RSS after imports. Examples
are not tokenised here: tokenisation works on one batch at a time and does not grow with the
file. The files are generated in a temporary folder and deleted afterwards.

    python benchmarks/streaming_memory.py [--lines 100000 5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, table, write_json  # noqa: E402

WORDS = (
    "flow boundary layer pressure wing shock heat transfer supersonic laminar turbulent "
    "velocity model theory experiment surface mach number jet plate cylinder"
).split()


def generate(path: Path, lines: int, seed: int = 0) -> None:
    """A JSONL triples file: short random texts, one positive and two negatives per line."""
    chooser = random.Random(seed)
    # 1,000 distinct texts, combined per line: fast to write, every line different
    texts = [json.dumps(" ".join(chooser.choices(WORDS, k=8))) for _ in range(1000)]
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, lines, 10_000):
            handle.write(
                "".join(
                    f'{{"query": "{index} {texts[index % 997][1:-1]}", "positive": '
                    f'{texts[index % 991]}, "negatives": [{texts[index % 983]}, '
                    f"{texts[index % 977]}]}}\n"
                    for index in range(start, min(lines, start + 10_000))
                )
            )


def current_rss_mb() -> float:
    """Resident set size now (Linux ``/proc/self/status``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(path: str) -> None:
    """Read the whole file through the training stream; print one JSON line of figures."""
    from colbert_lightning.data.readers import make_reader
    from colbert_lightning.data.streaming import TripleStream

    baseline = current_rss_mb()
    stream = TripleStream(
        path=path,
        reader=make_reader("jsonl", path, min_negatives=1),
        nway=2,
        seed=0,
        shuffle_buffer=10000,
        max_passes=1,
    )
    started = time.perf_counter()
    count = sum(1 for _ in stream)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"examples": count, "seconds": seconds, "rss_after_imports_mb": baseline,
                      "peak_rss_mb": peak}))  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Generate, read each file in a subprocess, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 5_000_000])
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    info = header("streaming memory: peak RSS reading a triples file through TripleStream")
    rows = []
    with tempfile.TemporaryDirectory(prefix="colbert-bench-stream-") as folder:
        for lines in args.lines:
            path = Path(folder) / f"triples_{lines}.jsonl"
            started = time.perf_counter()
            generate(path, lines)
            size_mb = path.stat().st_size / 2**20
            print(f"   generated {lines:,} lines ({size_mb:.0f} MiB) in "
                  f"{time.perf_counter() - started:.0f} s")  # fmt: skip
            result = subprocess.run(
                [sys.executable, __file__, "--child", str(path)],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, HF_HUB_OFFLINE="1"),
            )
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            path.unlink()
            rows.append({"lines": lines, "file_mb": size_mb, **figures,
                         "lines_per_s": figures["examples"] / figures["seconds"]})  # fmt: skip
            print(f"   read {figures['examples']:,} examples in {figures['seconds']:.0f} s: peak "
                  f"RSS {figures['peak_rss_mb']:.0f} MiB")  # fmt: skip
            sys.stdout.flush()
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    growth = [row["peak_rss_mb"] - row["rss_after_imports_mb"] for row in rows]
    print(
        table(
            rows,
            [
                "lines",
                "file_mb",
                "examples",
                "seconds",
                "lines_per_s",
                "rss_after_imports_mb",
                "peak_rss_mb",
            ],
        )  # fmt: skip
    )
    print(
        f"   peak RSS ratio {rows[-1]['lines']:,} / {rows[0]['lines']:,} lines: {ratio:.3f} "
        f"(target <= 1.2); growth over the RSS after imports: "
        + ", ".join(f"{mib:.0f} MiB" for mib in growth)
    )
    payload = {"machine": info, "rows": rows, "peak_rss_ratio": ratio, "growth_mb": growth}
    write_json(args.out, "streaming_memory", payload)
    return payload


if __name__ == "__main__":
    main()
