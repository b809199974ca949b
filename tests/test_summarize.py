"""Sweep summary: loading job folders, the tables, seeds, significance marks, plots, CLI, notebook.

Every test builds a small fake multirun under tmp_path by hand (no training). ``fake_sweep``:
three finished jobs that differ in learning rate (one also sets a seed, one never validated),
plus a job folder without results.json. ``seeded_sweep``: three arms (``variant=baseline``,
``better``, ``same``) x seeds 0, 1, 2, with test, BM25 and per-query results and an extra dev
collection (``val_med``), as training writes them with ``test_split``. ``_build_bm25_sweep``:
jobs whose recorded config names a tiny BEIR folder written under tmp_path as their dev set
(and the shipped Cranfield as an extra collection), for BM25's dashed line on the curves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from colbert_lightning.data.beir import load_dev_set
from colbert_lightning.evaluation import baselines
from colbert_lightning.evaluation.configurations import (
    SweepComparisonError,
    choose_baseline,
    group_configurations,
)
from colbert_lightning.evaluation.curves import plot_curves
from colbert_lightning.evaluation.per_query import HELD_OUT, SEEN, write_per_query
from colbert_lightning.evaluation.summary import summarize_sweep, write_summary
from colbert_lightning.evaluation.sweeps import (
    EmptySweepError,
    Job,
    ValidationCurve,
    load_sweep,
    varying_overrides,
)
from colbert_lightning.evaluation.tables import markdown_table, seed_rows, summary_rows
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.bm25 import BM25Retriever
from colbert_lightning.summarize import main
from tests.reference import naive_retrieval_metrics

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sweep_summary.ipynb"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSV_HEADER = (
    "epoch,step,train/examples_seen,train/loss,train/lr,train/positive_score,"
    "trainer/examples_seen,val/mrr@10,val/ndcg@10,val/recall@10,val/recall@100"
)


def _validation(step: int, mrr: float, ndcg: float, recall100: float) -> dict:
    return {
        "step": step,
        "val/mrr@10": mrr,
        "val/ndcg@10": ndcg,
        "val/recall@10": recall100 / 2,
        "val/recall@100": recall100,
        "trainer/examples_seen": float(step * 32),
    }


def _validation_row(entry: dict) -> str:
    return (
        f",{entry['step']},,,,,{entry['trainer/examples_seen']},{entry['val/mrr@10']},"
        f"{entry['val/ndcg@10']},{entry['val/recall@10']},{entry['val/recall@100']}"
    )


def _training_row(step: int) -> str:
    return f"0,{step},{(step + 1) * 32}.0,3.9,0.0001,21.7,,,,,"


def _write_job(
    folder: Path, overrides: list[str], validations: list[dict], best_step: int | None
) -> None:
    """A finished job: results.json, csv/metrics.csv and .hydra/overrides.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "csv").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = [CSV_HEADER]
    for entry in validations:
        rows.append(_validation_row(entry))
        rows.append(_training_row(entry["step"] + 3))
    # The CSVLogger can write a training row before an earlier validation row; mimic that.
    rows.append(_training_row(1))
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    by_step = {entry["step"]: entry for entry in validations}
    results = {
        "steps": 20,
        "examples_seen": 640,
        "wall_time_s": 12.34,
        "skipped_lines": 0,
        "nonfinite_batches": 0,
        "step0": by_step.get(0),
        "final": validations[-1] if validations else None,
        "best": by_step.get(best_step),
        "best_checkpoint": None,
        "init": {"source": None},
        "git_commit": "0" * 40,
        "config": {"module": {"optimizer": {"lr": 0.0}}},
    }
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    sweep_dir = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")
    _write_job(
        sweep_dir / "0",
        ["module.optimizer.lr=0.0001", "trainer.max_steps=20"],
        [_validation(0, 0.10, 0.05, 0.20), _validation(10, 0.20, 0.15, 0.30)]
        + [_validation(20, 0.40, 0.30, 0.50)],
        best_step=20,
    )
    _write_job(
        sweep_dir / "1",
        ["module.optimizer.lr=0.0003", "trainer.max_steps=20"],
        [_validation(0, 0.10, 0.05, 0.20), _validation(10, 0.60, 0.50, 0.70)]
        + [_validation(20, 0.55, 0.45, 0.65)],
        best_step=10,
    )
    # Finished, but never validated (validation switched off): no metrics, sorted last.
    _write_job(
        sweep_dir / "2",
        ["module.optimizer.lr=0.001", "trainer.max_steps=20", "+seed=7"],
        [],
        best_step=None,
    )
    # Crashed (or still running): no results.json.
    (sweep_dir / "3" / ".hydra").mkdir(parents=True)
    (sweep_dir / "3" / ".hydra" / "overrides.yaml").write_text("- module.optimizer.lr=0.01\n")
    (sweep_dir / "3" / "train.log").write_text("CUDA out of memory\n")
    return sweep_dir


def test_load_sweep_reads_finished_jobs_and_reports_incomplete(fake_sweep: Path) -> None:
    sweep = load_sweep(fake_sweep)

    assert [job.name for job in sweep.jobs] == ["0", "1", "2"]
    assert sweep.jobs[0].overrides == {
        "module.optimizer.lr": "0.0001",
        "trainer.max_steps": "20",
    }
    assert sweep.jobs[2].overrides["seed"] == "7"  # the "+" of an added key is dropped
    assert sweep.jobs[1].results["best"]["step"] == 10
    assert [job.name for job in sweep.incomplete] == ["3"]
    assert "results.json" in sweep.incomplete[0].reason


def test_validation_curve_keeps_validation_rows_sorted_by_step(fake_sweep: Path) -> None:
    curve = load_sweep(fake_sweep).jobs[1].curve

    assert curve.steps == [0, 10, 20]
    assert curve.examples_seen == [0.0, 320.0, 640.0]
    assert curve.metrics["val/ndcg@10"] == [0.05, 0.50, 0.45]
    assert curve.metrics["val/mrr@10"] == [0.10, 0.60, 0.55]
    assert len(load_sweep(fake_sweep).jobs[2].curve) == 0


def test_load_sweep_without_results_raises_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(EmptySweepError, match=str(tmp_path)):
        load_sweep(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_sweep(tmp_path / "missing")


def test_a_single_run_folder_is_a_sweep_of_one_job(fake_sweep: Path) -> None:
    sweep = load_sweep(fake_sweep / "1")

    assert [job.name for job in sweep.jobs] == ["1"]
    assert summary_rows(sweep)[0]["best_ndcg@10"] == 0.50


def test_test_split_metrics_become_columns(fake_sweep: Path) -> None:
    assert "test_ndcg@10" not in summary_rows(load_sweep(fake_sweep))[0]
    results_path = fake_sweep / "0" / "results.json"
    results = json.loads(results_path.read_text())
    results["test"] = {"split": "test", "metrics": {"ndcg@10": 0.61, "recall@100": 0.9}}
    results_path.write_text(json.dumps(results))

    rows = {row["job"]: row for row in summary_rows(load_sweep(fake_sweep))}
    assert (rows["0"]["test_ndcg@10"], rows["0"]["test_recall@100"]) == (0.61, 0.9)
    assert rows["1"]["test_ndcg@10"] is None  # a job without a test evaluation


def test_summary_rows_values_order_and_varying_overrides(fake_sweep: Path) -> None:
    rows = summary_rows(load_sweep(fake_sweep))

    assert [row["job"] for row in rows] == ["1", "0", "2"]  # best nDCG@10 first, None last
    # max_steps is the same everywhere: dropped; lr and seed vary: kept under their short names.
    assert list(rows[0]) == [
        "job",
        "lr",
        "seed",
        "best_ndcg@10",
        "best_step",
        "final_ndcg@10",
        "final_mrr@10",
        "final_recall@100",
        "step0_ndcg@10",
        "steps",
        "examples_seen",
        "wall_time_s",
    ]
    assert rows[0] == {
        "job": "1",
        "lr": "0.0003",
        "seed": None,
        "best_ndcg@10": 0.50,
        "best_step": 10,
        "final_ndcg@10": 0.45,
        "final_mrr@10": 0.55,
        "final_recall@100": 0.65,
        "step0_ndcg@10": 0.05,
        "steps": 20,
        "examples_seen": 640,
        "wall_time_s": 12.34,
    }
    assert rows[1]["best_ndcg@10"] == 0.30 and rows[1]["best_step"] == 20
    assert rows[2]["seed"] == "7"
    assert rows[2]["best_ndcg@10"] is None and rows[2]["final_mrr@10"] is None


def _job(name: str, overrides: dict[str, str]) -> Job:
    curve = ValidationCurve(steps=[], examples_seen=[], metrics={})
    return Job(name=name, folder=Path(name), overrides=overrides, results={}, curve=curve)


def test_jobs_differing_only_in_where_they_wrote_are_one_configuration(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    for name, overrides in [
        ("seed=0,variant=a", ["seed=0", "variant=a"]),
        ("seed=1,variant=a", ["seed=1", "variant=a", "paths.cache_dir=/elsewhere/.cache"]),
        ("seed=0,variant=b", ["seed=0", "variant=b", "paths.cache_dir=/elsewhere/.cache"]),
    ]:
        _write_job(sweep_dir / name, overrides, [_validation(0, 0.1, 0.1, 0.2)], best_step=0)
    jobs = load_sweep(sweep_dir).jobs
    assert varying_overrides(jobs) == {"seed": "seed", "variant": "variant"}
    configurations = group_configurations(jobs)
    assert [c.label for c in configurations] == ["variant=a", "variant=b"]
    assert configurations[0].seeds == ["0", "1"]


def test_varying_overrides_keeps_full_keys_where_short_ones_collide() -> None:
    jobs = [
        _job("0", {"module.optimizer.lr": "1e-4", "module.head.lr": "1e-3", "x.steps": "1"}),
        _job("1", {"module.optimizer.lr": "3e-4", "module.head.lr": "1e-2", "x.steps": "2"}),
    ]

    assert varying_overrides(jobs) == {
        "module.optimizer.lr": "module.optimizer.lr",
        "module.head.lr": "module.head.lr",
        "x.steps": "x.steps",  # "steps" is a summary column already
    }
    assert varying_overrides(jobs[:1]) == {}


def test_write_summary_writes_table_and_pngs(fake_sweep: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = write_summary(load_sweep(fake_sweep), tmp_path / "summary")

    assert {path.name for path in paths.values()} == {
        "summary.md",
        "summary.csv",
        "curves_ndcg_steps.png",
        "curves_ndcg_examples.png",
        "curves_mrr_steps.png",
        "curves_mrr_examples.png",
    }
    for path in paths.values():
        assert path.parent == tmp_path / "summary"
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    table = paths["summary_markdown"].read_text().splitlines()
    assert table[0].startswith("| job | lr | seed | best_ndcg@10 | best_step |")
    assert table[2:] == [
        "| 1 | 0.0003 | - | 0.5000 | 10 | 0.4500 | 0.5500 | 0.6500 | 0.0500 | 20 | 640 | 12.3 |",
        "| 0 | 0.0001 | - | 0.3000 | 20 | 0.3000 | 0.4000 | 0.5000 | 0.0500 | 20 | 640 | 12.3 |",
        "| 2 | 0.001 | 7 | - | - | - | - | - | - | 20 | 640 | 12.3 |",
    ]
    csv_lines = paths["summary_csv"].read_text().splitlines()
    assert csv_lines[0].startswith("job,lr,seed,best_ndcg@10,")
    assert csv_lines[1].startswith("1,0.0003,,0.5,10,0.45,")
    assert markdown_table(summary_rows(load_sweep(fake_sweep))) == "\n".join(table)


def test_cli_prints_table_and_writes_next_to_the_sweep(
    fake_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    main([str(fake_sweep)])

    printed = capsys.readouterr().out
    assert "| 1 | 0.0003 | - | 0.5000 | 10 |" in printed
    assert "incomplete job 3" in printed
    assert str(fake_sweep / "summary.md") in printed
    assert (fake_sweep / "curves_mrr_examples.png").stat().st_size > 0
    # The files written into the sweep folder are not mistaken for a job next time.
    assert [job.name for job in load_sweep(fake_sweep).jobs] == ["0", "1", "2"]


def test_cli_exits_2_naming_a_folder_without_results(tmp_path: Path) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    completed = subprocess.run(
        [sys.executable, "-m", "colbert_lightning.summarize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,  # a bound against a hang, not a speed limit: loaded machines are slow
    )

    assert completed.returncode == 2
    assert str(tmp_path) in completed.stderr
    assert "results.json" in completed.stderr


def _kernel_name_for_this_python(jupyter_dir: Path) -> str:
    """A kernelspec that starts ipykernel with this interpreter, whatever is installed globally."""
    name = "colbert-lightning-test"
    spec_dir = jupyter_dir / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "colbert-lightning test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return name


def _run_notebook(
    sweep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parameters: str = ""
) -> list:
    """Execute the notebook on ``sweep_dir``; its code cells' outputs, none of them an error.

    ``parameters`` is run after the ``parameters`` cell, as papermill injects its values.
    """
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    kernel_name = _kernel_name_for_this_python(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("COLBERT_SWEEP_DIR", str(sweep_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # The committed notebook is stripped, and its first code cell holds the placeholder.
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert code_cells[0].source.startswith("SWEEP_DIR = ")
    assert "parameters" in code_cells[0].metadata.get("tags", [])
    if parameters:
        injected = nbformat.v4.new_code_cell(parameters)
        notebook.cells.insert(notebook.cells.index(code_cells[0]) + 1, injected)
        code_cells.insert(1, injected)

    nbclient.NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    outputs = [output for cell in code_cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # The notebook shows the tables and plots without writing anything next to the sweep.
    assert not (sweep_dir / "summary.md").exists()
    return outputs


def _markdown_and_images(outputs: list) -> tuple[str, list]:
    markdown = "".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    return markdown, images


def test_notebook_runs_against_a_sweep(
    fake_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markdown, images = _markdown_and_images(_run_notebook(fake_sweep, tmp_path, monkeypatch))

    assert "| 1 | 0.0003 | - | 0.5000 | 10 |" in markdown
    assert "| configuration |" not in markdown  # one seed per configuration: no seed table
    assert len(images) == 4


# --- seeds, held-out subsets, BM25, extra dev collections, significance marks ---------------

QUERIES = [f"q{number}" for number in range(40)]
HELD_OUT_QUERIES = QUERIES[:25]  # the rest share relevant documents with training queries
# Per-query shift of each arm's test nDCG@10 over the baseline's: "same" scores exactly as the
# baseline on every query and seed, "better" 0.25 higher on every query.
ARMS = {"baseline": 0.0, "better": 0.25, "same": 0.0}
SEEDS = (0, 1, 2)
SEEDED_CSV_HEADER = (
    "epoch,step,trainer/examples_seen,train/loss,"
    "val/mrr@10,val/ndcg@10,val/recall@100,val_med/mrr@10,val_med/ndcg@10"
)
BM25_NDCG = 0.30


def _per_query_ndcg(arm: str, seed: int) -> dict[str, float]:
    # The same draw for every arm of a seed: "same" matches the baseline query by query.
    base = np.random.default_rng(100 + seed).uniform(0.1, 0.6, len(QUERIES))
    return {query: float(value) + ARMS[arm] for query, value in zip(QUERIES, base, strict=True)}


def _test_entry(folder: Path, file_name: str, ndcg: dict[str, float]) -> dict:
    """A results.json test entry and its per-query TSV, the metrics being the per-query means."""
    per_query = {
        query: {"ndcg@10": value, "mrr@10": value, "recall@10": value, "recall@100": 1.0}
        for query, value in ndcg.items()
    }
    subsets = {query: HELD_OUT if query in HELD_OUT_QUERIES else SEEN for query in ndcg}
    write_per_query(folder / file_name, per_query, subsets)

    def metrics(queries: list[str]) -> dict[str, float]:
        mean = float(np.mean([ndcg[query] for query in queries]))
        return {"ndcg@10": mean, "mrr@10": mean, "recall@10": mean, "recall@100": 1.0}

    seen = [query for query in ndcg if query not in HELD_OUT_QUERIES]
    held_out = [query for query in ndcg if query in HELD_OUT_QUERIES]
    return {
        "model": "checkpoint",
        "split": "test",
        "queries": len(ndcg),
        "excluded_queries": 0,
        "documents": 500,
        "metrics": metrics(list(ndcg)),
        "subsets": {
            HELD_OUT: {"queries": len(held_out), "metrics": metrics(held_out)},
            SEEN: {"queries": len(seen), "metrics": metrics(seen)},
        },
        "per_query_file": file_name,
    }


def _dev_ndcg(arm: str, seed: int) -> list[float]:
    """val/ndcg@10 at steps 0, 10, 20: best at step 10."""
    shift = ARMS[arm] / 5 + 0.01 * seed
    return [0.05, 0.30 + shift, 0.28 + shift]


def _med_ndcg(seed: int) -> list[float]:
    """val_med/ndcg@10 at steps 0, 10, 20: its own best (step 20) is not the dev-best step."""
    return [0.02, 0.10 + 0.01 * seed, 0.20 + 0.01 * seed]


def _write_seeded_job(folder: Path, arm: str, seed: int) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / "csv").mkdir()
    overrides = [f"variant={arm}", f"seed={seed}", "trainer.max_steps=20"]
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    dev, med = _dev_ndcg(arm, seed), _med_ndcg(seed)
    rows = [SEEDED_CSV_HEADER]
    for index, step in enumerate((0, 10, 20)):
        rows.append(
            f",{step},{step * 32}.0,,{dev[index]},{dev[index]},0.5,{med[index]},{med[index]}"
        )
        rows.append(f"0,{step + 3},,3.9,,,,,")
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    best = {"step": 10, "val/ndcg@10": dev[1], "val/mrr@10": dev[1]}
    if seed != 2:  # seed 2 lacks it in results.json: read from metrics.csv at the best step
        best["val_med/ndcg@10"] = med[1]
    results = {
        "steps": 20,
        "examples_seen": 640,
        "wall_time_s": 10.0,
        "step0": {"step": 0, "val/ndcg@10": dev[0]},
        "final": {"step": 20, "val/ndcg@10": dev[2], "val/mrr@10": dev[2]},
        "best": best,
        "test": _test_entry(folder, "test_per_query.tsv", _per_query_ndcg(arm, seed)),
        "test_bm25": _test_entry(
            folder, "test_bm25_per_query.tsv", dict.fromkeys(QUERIES, BM25_NDCG)
        ),
    }
    (folder / "results.json").write_text(json.dumps(results))


def _build_seeded_sweep(sweep_dir: Path, seeds: tuple[int, ...] = SEEDS) -> Path:
    number = 0
    for arm in ARMS:
        for seed in seeds:
            _write_seeded_job(sweep_dir / str(number), arm, seed)
            number += 1
    return sweep_dir


@pytest.fixture
def seeded_sweep(tmp_path: Path) -> Path:
    return _build_seeded_sweep(tmp_path / "ablation")


def _by(rows: list[dict], column: str) -> dict[str, dict]:
    return {row[column]: row for row in rows}


def test_jobs_that_differ_only_in_the_seed_form_one_configuration(seeded_sweep: Path) -> None:
    sweep = load_sweep(seeded_sweep)
    rows = _by(seed_rows(sweep), "configuration")

    assert sorted(rows) == ["variant=baseline", "variant=better", "variant=same"]
    better = rows["variant=better"]
    assert (better["seeds"], better["n"], better["jobs"]) == ("0, 1, 2", 3, "3, 4, 5")
    expected = {
        "best_ndcg@10": [_dev_ndcg("better", seed)[1] for seed in SEEDS],
        "best_val_med_ndcg@10": [_med_ndcg(seed)[1] for seed in SEEDS],
        "test_ndcg@10": [np.mean(list(_per_query_ndcg("better", s).values())) for s in SEEDS],
        "test_heldout_ndcg@10": [
            np.mean([_per_query_ndcg("better", s)[q] for q in HELD_OUT_QUERIES]) for s in SEEDS
        ],
    }
    for column, values in expected.items():
        assert better[f"{column}_mean"] == pytest.approx(np.mean(values)), column
        assert better[f"{column}_std"] == pytest.approx(np.std(values, ddof=1)), column
    assert better["test_bm25_ndcg@10_mean"] == pytest.approx(BM25_NDCG)
    assert better["test_bm25_ndcg@10_std"] == pytest.approx(0.0, abs=1e-12)
    # The interval is over queries of the seed-averaged per-query nDCG@10, around its mean.
    low, high = better["test_ndcg@10_ci_low"], better["test_ndcg@10_ci_high"]
    assert low < better["test_ndcg@10_mean"] < high and high - low < 0.2
    # No baseline was compared: no mark columns.
    assert "vs_baseline" not in better
    table = markdown_table(list(rows.values()))
    assert "| configuration | seeds | n | jobs | best_ndcg@10 |" in table
    mean, std = better["best_ndcg@10_mean"], better["best_ndcg@10_std"]
    assert f"| variant=better | 0, 1, 2 | 3 | 3, 4, 5 | {mean:.4f} ± {std:.4f} |" in table


def test_a_job_without_a_seed_override_joins_its_configuration_as_the_default_seed() -> None:
    jobs = [
        _job("0", {"variant": "a", "seed": "1"}),
        _job("1", {"variant": "a"}),
        _job("2", {"variant": "b", "seed": "1"}),
    ]
    configurations = group_configurations(jobs)

    assert [(c.label, c.seeds) for c in configurations] == [
        ("variant=a", ["1", "default"]),
        ("variant=b", ["1"]),
    ]
    only_seeds = group_configurations([jobs[0], _job("3", {"variant": "a", "seed": "2"})])
    assert [(c.label, c.job_names) for c in only_seeds] == [("all jobs", "0, 3")]


def test_held_out_bm25_and_extra_collection_columns(seeded_sweep: Path) -> None:
    rows = _by(summary_rows(load_sweep(seeded_sweep)), "job")

    # After the dev columns: the extra collection, then test, held-out and BM25 columns.
    assert list(rows["0"])[-8:] == [
        "wall_time_s",
        "best_val_med_ndcg@10",
        "test_ndcg@10",
        "test_recall@100",
        "test_heldout_ndcg@10",
        "test_heldout_queries",
        "test_bm25_ndcg@10",
        "test_bm25_heldout_ndcg@10",
    ]
    job = rows["4"]  # variant=better, seed 1
    ndcg = _per_query_ndcg("better", 1)
    assert job["test_heldout_ndcg@10"] == pytest.approx(
        np.mean([ndcg[q] for q in HELD_OUT_QUERIES])
    )
    assert job["test_heldout_queries"] == len(HELD_OUT_QUERIES)
    assert job["test_bm25_ndcg@10"] == job["test_bm25_heldout_ndcg@10"] == pytest.approx(BM25_NDCG)
    # The extra collection at the step where val/ndcg@10 was best (10), not at its own best (20);
    # seed 2's results.json lacks the key, so it comes from metrics.csv at that step.
    assert job["best_val_med_ndcg@10"] == _med_ndcg(1)[1]
    assert rows["5"]["best_val_med_ndcg@10"] == _med_ndcg(2)[1]


def test_extra_collection_curves_and_seed_bands(seeded_sweep: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = load_sweep(seeded_sweep)
    paths = write_summary(sweep, tmp_path / "out")

    assert {path.name for path in paths.values()} == {
        "summary.md",
        "summary.csv",
        "summary_seeds.md",
        "summary_seeds.csv",
        *(
            f"curves_{m}_{a}.png"
            for m in ("ndcg", "mrr", "med_ndcg")
            for a in ("steps", "examples")
        ),
    }
    assert paths["curves_med_ndcg_steps"].read_bytes().startswith(PNG_SIGNATURE)
    figure = plot_curves(sweep, "val_med/ndcg@10", "steps")
    [axes] = figure.axes
    assert "val_med/ndcg@10" in axes.get_title() and "'med'" in axes.get_title()
    # One mean line and one min-max band per configuration, not one line per seed.
    assert len(axes.lines) == 3 and len(axes.collections) == 3
    [baseline_line] = [line for line in axes.lines if "variant=baseline" in line.get_label()]
    assert "mean of 3 seeds" in baseline_line.get_label()
    assert list(baseline_line.get_ydata()) == pytest.approx(
        np.mean([_med_ndcg(seed) for seed in SEEDS], axis=0)
    )
    assert "dev split" in plot_curves(sweep, "val/ndcg@10", "steps").axes[0].get_title()


def test_an_arm_clearly_better_than_the_baseline_is_marked_and_an_equal_one_is_not(
    seeded_sweep: Path,
) -> None:
    summary = summarize_sweep(load_sweep(seeded_sweep))  # the default baseline: variant=baseline

    assert summary.comparison is not None
    assert summary.comparison.baseline.label == "variant=baseline"
    rows = _by(summary.seed_rows, "configuration")
    assert rows["variant=baseline"]["vs_baseline"] == "baseline"
    better, same = rows["variant=better"], rows["variant=same"]
    assert better["vs_baseline"] == "*" and better["p_holm"] < 0.01
    assert better["delta_test_ndcg@10"] == pytest.approx(0.25)
    assert better["delta_test_ndcg@10_ci_low"] <= 0.25 <= better["delta_test_ndcg@10_ci_high"]
    assert same["vs_baseline"] == "" and same["p_holm"] == 1.0
    assert same["delta_test_ndcg@10"] == pytest.approx(0.0, abs=1e-12)
    # Marks go into the grouped table; the per-job table stays without them.
    assert "vs_baseline" not in summary.rows[0]
    seeds_markdown = summary.seeds_markdown()
    assert (
        "delta_test_ndcg@10 [95% CI]" in seeds_markdown
        and "Holm over 2 comparisons" in seeds_markdown
    )
    assert "| +0.2500 [+0.2500, +0.2500] |" in seeds_markdown
    # Another per-query metric: recall@100 is 1.0 on every query of every arm, so no mark.
    recall = summarize_sweep(load_sweep(seeded_sweep), metric="recall@100", permutations=99)
    marks = {row["configuration"]: row["vs_baseline"] for row in recall.seed_rows}
    assert marks == {"variant=baseline": "baseline", "variant=better": "", "variant=same": ""}
    assert "test_recall@100_ci_low" in recall.seed_rows[0]
    assert "delta_test_recall@100" in recall.seed_rows[0]


def test_with_one_seed_per_configuration_the_per_job_table_carries_the_marks(
    tmp_path: Path,
) -> None:
    sweep = load_sweep(_build_seeded_sweep(tmp_path / "single", seeds=(0,)))
    summary = summarize_sweep(sweep, permutations=999, resamples=999)

    assert summary.seed_rows is None and summary.seeds_markdown() is None
    rows = _by(summary.rows, "variant")
    assert [rows[arm]["vs_baseline"] for arm in ARMS] == ["baseline", "*", ""]
    assert "Holm over 2 comparisons" in summary.jobs_markdown()


def test_per_query_files_on_different_queries_raise_naming_the_jobs(seeded_sweep: Path) -> None:
    def drop_query(job: str) -> None:
        path = seeded_sweep / job / "test_per_query.tsv"
        path.write_text("".join(line for line in path.read_text().splitlines(True)[:-1]))

    # One arm's seeds all lack a query the baseline has: the arm and the baseline are named.
    for job in ("3", "4", "5"):
        drop_query(job)
    with pytest.raises(SweepComparisonError, match=r"variant=better.*job\(s\) 3, 4, 5.*0, 1, 2"):
        summarize_sweep(load_sweep(seeded_sweep), permutations=99, resamples=99)
    # Within one configuration: the two seeds and their files are named.
    drop_query("0")
    with pytest.raises(SweepComparisonError, match="job 0 .* and job 1 .*different queries"):
        summarize_sweep(load_sweep(seeded_sweep), permutations=99, resamples=99)


def test_choose_baseline_by_key_value_and_its_errors(seeded_sweep: Path) -> None:
    configurations = group_configurations(load_sweep(seeded_sweep).jobs)

    assert choose_baseline(configurations, {"variant": "same"}).label == "variant=same"
    with pytest.raises(SweepComparisonError, match="matches no configuration.*'baseline'"):
        choose_baseline(configurations, {"variant": "nope"})
    with pytest.raises(SweepComparisonError, match="matches 3 configurations"):
        choose_baseline(configurations, {"trainer.max_steps": "20"})
    with pytest.raises(SweepComparisonError, match="cannot select a seed"):
        choose_baseline(configurations, {"seed": "0"})
    with pytest.raises(SweepComparisonError, match="no job sets 'lr'"):
        choose_baseline(configurations, {"lr": "1"})
    # Without "baseline" among the values there is no default.
    assert choose_baseline(group_configurations(load_sweep(seeded_sweep).jobs[3:])) is None


def _configuration_lines(text: str) -> dict[str, str]:
    """The seed table's lines in ``text``, by configuration label (``"variant=same"``)."""
    return {
        line.split(" | ")[0].removeprefix("| "): line
        for line in text.splitlines()
        if line.startswith("| variant=")
    }


def test_cli_baseline_option_marks_against_the_chosen_configuration(
    seeded_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    main([str(seeded_sweep), "--output", str(tmp_path / "out"), "--baseline", "variant=same"])

    printed = capsys.readouterr().out
    assert "configurations (jobs that differ only in the seed)" in printed
    lines = _configuration_lines(printed)
    assert lines["variant=same"].endswith("| baseline |")
    assert lines["variant=better"].endswith("| * |")
    assert lines["variant=baseline"].endswith("|  |")  # equal to "same": no mark
    assert "against the baseline 'variant=same'" in printed
    assert (
        (tmp_path / "out" / "summary_seeds.csv")
        .read_text()
        .startswith("configuration,seeds,n,jobs,best_ndcg@10_mean,best_ndcg@10_std,")
    )

    with pytest.raises(SystemExit) as exit_info:
        main([str(seeded_sweep), "--output", str(tmp_path / "out"), "--baseline", "variant=nope"])
    assert exit_info.value.code == 2
    assert "--baseline variant=nope matches no configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(seeded_sweep), "--baseline", "variant"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_notebook_shows_seeds_marks_and_extra_collection_curves(
    seeded_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = _run_notebook(
        seeded_sweep, tmp_path, monkeypatch, parameters='BASELINE = {"variant": "same"}'
    )
    markdown, images = _markdown_and_images(outputs)

    assert "| configuration | seeds | n | jobs | best_ndcg@10 |" in markdown
    assert "against the baseline 'variant=same'" in markdown
    lines = _configuration_lines(markdown)
    assert lines["variant=same"].endswith("| baseline |")
    assert lines["variant=better"].endswith("| * |")
    assert len(images) == 6  # nDCG@10, MRR@10 and val_med/ndcg@10, against steps and examples


# --- BM25 on the dev curves ------------------------------------------------------------------

TINY_DOCUMENTS = {
    "d1": "cats purr when they sleep in the sun",
    "d2": "dogs bark at the mailman every morning",
    "d3": "a cat and a dog can share a house",
    "d4": "the sun is a star at the centre of the solar system",
    "d5": "solar panels turn sunlight into electricity",
    "d6": "electric cars need charging stations",
    "d7": "stars shine at night far from city lights",
    "d8": "morning coffee helps people wake up",
}
TINY_QUERIES = {
    "q1": "why do cats purr",
    "q2": "solar electricity",
    "q3": "dog barking in the morning",
    "q4": "night stars",
    "q5": "sun star",
}
# Dev and test judge different queries, so that BM25 on the wrong qrels gives other figures.
TINY_QRELS = {
    "dev": {"q1": {"d1": 2, "d3": 1}, "q2": {"d5": 1, "d4": 0}, "q5": {"d7": 1}},
    "test": {"q3": {"d2": 1, "d8": 1}, "q4": {"d7": 1}},
}
BM25_CSV_HEADER = "epoch,step,trainer/examples_seen,val/mrr@10,val/ndcg@10,val_{extra}/ndcg@10"


def _write_tiny_beir(root: Path) -> Path:
    """A BEIR folder of 8 documents and 5 queries, judged in qrels/dev.tsv and qrels/test.tsv."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n"
            for doc_id, text in TINY_DOCUMENTS.items()
        )
    )
    (root / "queries.jsonl").write_text(
        "".join(
            json.dumps({"_id": query_id, "text": text}) + "\n"
            for query_id, text in TINY_QUERIES.items()
        )
    )
    for split, qrels in TINY_QRELS.items():
        lines = ["query-id\tcorpus-id\tscore"] + [
            f"{query_id}\t{doc_id}\t{grade}"
            for query_id, judged in qrels.items()
            for doc_id, grade in judged.items()
        ]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def _write_bm25_job(folder: Path, lr: str, config: dict, extra: str) -> None:
    """A finished job whose results.json records the config naming its dev files."""
    _write_job(
        folder,
        [f"module.optimizer.lr={lr}"],
        [_validation(0, 0.1, 0.05, 0.2), _validation(10, 0.5, 0.4, 0.6)],
        best_step=10,
    )
    rows = [BM25_CSV_HEADER.format(extra=extra), ",0,0.0,0.1,0.05,0.02", ",10,320.0,0.5,0.4,0.1"]
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    results = json.loads((folder / "results.json").read_text())
    results["config"] = config
    (folder / "results.json").write_text(json.dumps(results))


def _bm25_config(root_dir: Path, dev: dict[str, str], extra: list[str]) -> dict:
    """The parts of a resolved training config that name the dev evaluations."""
    return {
        "paths": {"root_dir": str(root_dir), "cache_dir": str(root_dir / ".cache")},
        "data": {"dev": {**dev, "candidates": None}},
        "callbacks": {"evaluation": {"mode": "exact", "extra": extra, "extra_split": "test"}},
    }


def _build_bm25_sweep(tmp_path: Path, extra: list[str], dev_qrels: tuple[str, ...]) -> Path:
    """One job per entry of ``dev_qrels`` (a qrels split of the tiny folder as its dev set).

    Job 0 names its dev files by absolute path; the others relative to ``paths.root_dir``, as
    a user's override may (training runs with ``hydra.job.chdir=false``), job 1's root spelt
    through another folder and ``..`` (a run from another checkout beside this one).
    """
    _write_tiny_beir(tmp_path / "tiny")
    sweep_dir = tmp_path / "bm25_sweep"
    extra_label = Path(extra[0]).name if extra else "none"
    for number, split in enumerate(dev_qrels):
        base = tmp_path / "tiny" if number == 0 else Path("tiny")
        dev = {
            "corpus": str(base / "corpus.jsonl"),
            "queries": str(base / "queries.jsonl"),
            "qrels": str(base / "qrels" / f"{split}.tsv"),
        }
        root_dir = tmp_path / "elsewhere" / ".." if number == 1 else tmp_path
        config = _bm25_config(root_dir, dev, extra)
        _write_bm25_job(sweep_dir / str(number), f"0.000{number + 1}", config, extra_label)
    return sweep_dir


def _independent_tiny_bm25(split: str) -> dict[str, float]:
    """BM25 on the tiny folder's judged queries of ``split``, metrics by naive loops."""

    qrels = TINY_QRELS[split]
    retriever = BM25Retriever(list(TINY_DOCUMENTS), list(TINY_DOCUMENTS.values()))
    rankings = retriever.search({query: TINY_QUERIES[query] for query in qrels}, k=100)
    return naive_retrieval_metrics(rankings, qrels)


def _dashed_lines(figure) -> dict[str, list[float]]:
    [axes] = figure.axes
    return {
        line.get_label(): list(line.get_ydata())
        for line in axes.lines
        if line.get_linestyle() == "--"
    }


def test_bm25_on_the_dev_sets_equals_an_independent_computation_and_is_drawn_dashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")

    indexed = []

    class CountingRetriever(BM25Retriever):
        def __init__(self, ids, texts, **options) -> None:
            indexed.append(len(ids))
            super().__init__(ids, texts, **options)

    monkeypatch.setattr(baselines, "BM25Retriever", CountingRetriever)
    sweep = load_sweep(_build_bm25_sweep(tmp_path, ["cranfield"], ("dev", "dev")))
    summary = summarize_sweep(sweep)
    paths = write_summary(sweep, tmp_path / "out", summary)

    # The tiny dev set: BM25 gets neither everything nor nothing right on it.
    dev = _independent_tiny_bm25("dev")
    assert 0 < dev["ndcg@10"] < 1 and 0 < dev["mrr@10"] < 1
    cranfield = resource_path("cranfield")
    cranfield_set = load_dev_set(
        f"{cranfield}/corpus.jsonl.gz",
        f"{cranfield}/queries.jsonl.gz",
        f"{cranfield}/qrels/test.tsv",
    )
    cranfield_rankings = BM25Retriever(
        cranfield_set.corpus_ids, cranfield_set.corpus_texts, show_progress=False
    ).search(cranfield_set.queries, k=100)
    extra = naive_retrieval_metrics(cranfield_rankings, cranfield_set.qrels)

    recorded = json.loads(paths["bm25_dev"].read_text())
    settings = {key: recorded[key] for key in ("k1", "b", "k", "skipped")}
    assert settings == {"k1": 0.9, "b": 0.4, "k": 100, "skipped": []}
    figures = {figure["prefix"]: figure for figure in recorded["figures"]}
    assert sorted(figures) == ["val", "val_cranfield"]
    # Job 0 names the files by absolute path, job 1 relative to a root spelt with "..": one figure.
    assert figures["val"]["jobs"] == figures["val_cranfield"]["jobs"] == ["0", "1"]
    assert figures["val"]["queries"] == len(TINY_QRELS["dev"])
    assert figures["val_cranfield"]["queries"] == len(cranfield_set.qrels)
    for prefix, expected in (("val", dev), ("val_cranfield", extra)):
        assert figures[prefix]["metrics"] == pytest.approx(expected, abs=1e-6), prefix
    assert indexed == [len(TINY_DOCUMENTS), len(cranfield_set.corpus_ids)]  # once per files

    assert f"nDCG@10 {dev['ndcg@10']:.4f}" in paths["summary_markdown"].read_text()
    assert {"curves_cranfield_ndcg_steps", "curves_cranfield_ndcg_examples"} <= set(paths)
    for metric, value in (
        ("val/ndcg@10", dev["ndcg@10"]),
        ("val/mrr@10", dev["mrr@10"]),
        ("val_cranfield/ndcg@10", extra["ndcg@10"]),
    ):
        references = summary.bm25_dev.lines(metric)
        for x_axis in ("steps", "examples_seen"):
            dashed = _dashed_lines(plot_curves(sweep, metric, x_axis, references))
            assert dashed == {"BM25": pytest.approx([value, value], abs=1e-6)}, metric


def test_jobs_on_different_dev_sets_get_a_bm25_line_each(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = load_sweep(_build_bm25_sweep(tmp_path, [], ("dev", "dev", "test")))
    summary = summarize_sweep(sweep)

    dev, test = _independent_tiny_bm25("dev"), _independent_tiny_bm25("test")
    assert summary.bm25_dev.lines("val/ndcg@10") == {
        "BM25 (jobs 0, 1)": pytest.approx(dev["ndcg@10"], abs=1e-6),
        "BM25 (job 2)": pytest.approx(test["ndcg@10"], abs=1e-6),
    }
    figure = plot_curves(sweep, "val/ndcg@10", "steps", summary.bm25_dev.lines("val/ndcg@10"))
    assert set(_dashed_lines(figure)) == {"BM25 (jobs 0, 1)", "BM25 (job 2)"}


def test_missing_dev_files_leave_the_bm25_line_out_without_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    # A sweep copied to another machine: the dev folder and the extra collection are not there.
    sweep_dir = _build_bm25_sweep(tmp_path, [str(tmp_path / "gone")], ("dev",))
    (tmp_path / "tiny").rename(tmp_path / "moved")

    main([str(sweep_dir), "--output", str(tmp_path / "out")])

    printed = capsys.readouterr().out
    assert "BM25 not drawn: val: " in printed and "BM25 not drawn: val_gone: " in printed
    recorded = json.loads((tmp_path / "out" / "bm25_dev.json").read_text())
    assert recorded["figures"] == [] and len(recorded["skipped"]) == 2
    assert (tmp_path / "out" / "curves_gone_ndcg_steps.png").stat().st_size > 0
    sweep = load_sweep(sweep_dir)
    summary = summarize_sweep(sweep)
    for metric in ("val/ndcg@10", "val/mrr@10", "val_gone/ndcg@10"):
        assert summary.bm25_dev.lines(metric) == {}
        figure = plot_curves(sweep, metric, "steps", summary.bm25_dev.lines(metric))
        assert _dashed_lines(figure) == {}


def test_cli_no_bm25_skips_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")

    sweep_dir = _build_bm25_sweep(tmp_path, [], ("dev",))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("BM25 computed despite --no-bm25")

    with monkeypatch.context() as patch:
        patch.setattr(baselines, "bm25_metrics", refuse)
        main([str(sweep_dir), "--output", str(tmp_path / "skipped"), "--no-bm25"])
    assert "BM25" not in capsys.readouterr().out
    assert not (tmp_path / "skipped" / "bm25_dev.json").exists()
    assert summarize_sweep(load_sweep(sweep_dir), bm25=False).bm25_dev is None

    main([str(sweep_dir), "--output", str(tmp_path / "default")])
    assert "BM25 (k1=0.9, b=0.4, top 100) on the same dev queries" in capsys.readouterr().out
    assert (tmp_path / "default" / "bm25_dev.json").exists()
