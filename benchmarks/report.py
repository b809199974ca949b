"""Render the benchmarks' JSON files as Markdown tables (for benchmarks/RESULTS.md).

python benchmarks/report.py [benchmarks/out]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, heading) columns."""
    lines = ["| " + " | ".join(heading for _, heading in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    """One line naming where and when."""
    where = info.get("gpu") or info["cpu"]
    return (
        f"{where}, {info['cpu_count']} CPUs, torch {info['torch']} ({info['torch_threads']} "
        f"threads), commit `{info['commit']}`, {info['date_utc']} UTC, 1-min load average "
        f"{info['load_avg_1min']}"
    )


def throughput(payload: dict[str, Any]) -> str:
    """Tables of throughput.py's JSON."""
    parts = [f"Machine: {machine_line(payload['machine'])}.", ""]
    step = payload["model_step"]
    tokens = step["tokens_per_batch"]
    parts.append(
        f"Per batch: {tokens['real']:.0f} real of {tokens['padded']:.0f} padded tokens "
        f"({tokens['real'] / tokens['padded']:.0%})."
    )
    parts.append("")
    rows = []
    for name, summary in step["variants"].items():
        ratios = summary.get("ratios")
        rows.append(
            {
                "variant": name,
                **summary,
                "ms": summary["s_per_step"] * 1e3,
                "pylate_ms": (summary.get("pylate_s_per_step") or 0) * 1e3 or None,
                "pairs": " ".join(f"{r:.2f}" for r in ratios) if ratios else None,
                "cpu_pairs": " ".join(f"{r:.2f}" for r in summary.get("cpu_ratios", [])) or None,
                "cpu_ms": (summary.get("cpu_s_per_step") or 0) * 1e3 or None,
            }
        )
    columns = [
        ("variant", "ours"),
        ("levers", "levers"),
        ("ms", "ms/step"),
        ("triples_per_s", "triples/s"),
        ("real_tokens_per_s", "real tok/s"),
        ("padded_tokens_per_s", "padded tok/s"),
        ("peak_memory_mb", "peak MiB"),
        ("pylate_precision", "PyLate in"),
        ("pylate_ms", "PyLate ms/step"),
        ("pairs", "ours/PyLate per pair (wall)"),
        ("median_ratio", "median (wall)"),
        ("cpu_ms", "CPU ms/step"),
        ("cpu_pairs", "per pair (CPU time)"),
        ("median_cpu_ratio", "median (CPU time)"),
    ]
    if any("mfu_real" in row for row in rows):
        columns[7:7] = [("mfu_real", "MFU real"), ("mfu_padded", "MFU padded")]
    parts.append(markdown(rows, columns))
    end_to_end = payload.get("end_to_end")
    if end_to_end:
        parts += ["", "End to end (Trainer + DataModule):", ""]
        rows = [{**row, "ms": row["s_per_step"] * 1e3} for row in end_to_end.values()]
        parts.append(
            markdown(
                rows,
                [
                    ("levers", "config"),
                    ("workers", "workers"),
                    ("ms", "ms/step"),
                    ("triples_per_s", "triples/s"),
                    ("real_tokens_per_s", "real tok/s"),
                    ("padded_tokens_per_s", "padded tok/s"),
                    ("data_wait_share", "waiting for data"),
                    ("peak_memory_mb", "peak MiB"),
                ],
            )
        )
    return "\n".join(parts)


def data_pipeline(payload: dict[str, Any]) -> str:
    """Table of data_pipeline.py's JSON."""
    step = payload["step_s"]
    head = (
        f"Machine: {machine_line(payload['machine'])}. Step (tiny, model step alone): fp32 "
        f"{step['32'] * 1e3:.0f} ms, bf16 {step['bf16'] * 1e3:.0f} ms; ratios against the faster."
    )
    table = markdown(
        payload["rows"],
        [
            ("workers", "workers"),
            ("batches_per_s", "batches/s"),
            ("x_step_rate", "x step rate"),
            ("first_batch_s", "first batch s"),
            ("main_wait_ms", "main process waits, ms/batch"),
            ("wait_share_of_step", "wait / step"),
        ],
    )
    return f"{head}\n\n{table}"


def streaming(payload: dict[str, Any]) -> str:
    """Table of streaming_memory.py's JSON."""
    table = markdown(
        payload["rows"],
        [
            ("lines", "lines"),
            ("file_mb", "file MiB"),
            ("seconds", "read s"),
            ("lines_per_s", "lines/s"),
            ("rss_after_imports_mb", "RSS after imports MiB"),
            ("peak_rss_mb", "peak RSS MiB"),
        ],
    )
    return (
        f"Machine: {machine_line(payload['machine'])}.\n\n{table}\n\n"
        f"Peak RSS ratio: {payload['peak_rss_ratio']:.3f}."
    )


def eval_cost(payload: dict[str, Any]) -> str:
    """Tables of eval_cost.py's JSON."""
    parts = [f"Machine: {machine_line(payload['machine'])}.", ""]
    parts.append(
        markdown(
            payload["per_evaluation"],
            [
                ("dev_set", "dev set"),
                ("queries", "queries"),
                ("documents", "documents"),
                ("precision", "precision"),
                ("s_per_eval", "s per evaluation"),
            ],
        )
    )
    run = payload.get("default_run")
    if run:
        steps = ", ".join(f"{e['step']}: {e['seconds']:.1f}" for e in run["evaluations"])
        parts += [
            "",
            f"Default run ({' '.join(run['overrides']) or 'no overrides'}): {run['steps']} steps, "
            f"{len(run['evaluations'])} evaluations (step: s) {steps}; {run['evaluation_s']:.1f} s "
            f"of {run['wall_time_s']:.1f} s wall time = **{run['eval_share']:.1%}**.",
        ]
    return "\n".join(parts)


RENDERERS = {
    "throughput": throughput,
    "data_pipeline": data_pipeline,
    "streaming_memory": streaming,
    "eval_cost": eval_cost,
}


def main() -> None:
    """Print every known JSON of the folder as Markdown."""
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out")
    for path in sorted(folder.glob("*.json")):
        kind = next((key for key in RENDERERS if path.stem.startswith(key)), None)
        if kind is None:
            continue
        print(f"### {path.stem}\n")
        print(RENDERERS[kind](json.loads(path.read_text())))
        print()


if __name__ == "__main__":
    main()
