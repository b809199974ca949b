"""Sweep summary: loading job folders, the table, the plots, the CLI and the notebook.

Every test builds a small fake multirun under tmp_path by hand (no training): three finished jobs
that differ in learning rate (one also sets a seed, one never validated), plus a job folder
without results.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from colbert_lightning.evaluation.sweeps import (
    EmptySweepError,
    Job,
    ValidationCurve,
    load_sweep,
    markdown_table,
    summary_rows,
    varying_overrides,
    write_summary,
)
from colbert_lightning.summarize import main

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
        timeout=60,
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


def test_notebook_runs_against_a_sweep(
    fake_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    kernel_name = _kernel_name_for_this_python(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("COLBERT_SWEEP_DIR", str(fake_sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # The committed notebook is stripped, and its first code cell holds the placeholder.
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert code_cells[0].source.startswith("SWEEP_DIR = ")

    nbclient.NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    outputs = [output for cell in code_cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    markdown = "".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    assert "| 1 | 0.0003 | - | 0.5000 | 10 |" in markdown
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 4
    # The notebook shows the plots without writing anything next to the sweep.
    assert not (fake_sweep / "summary.md").exists()
