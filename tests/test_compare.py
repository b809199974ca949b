"""``python -m colbert_lightning.compare``: the table, --subset, --names, --output and the errors.

Every test writes per-query TSVs under tmp_path with ``write_per_query`` (no evaluation run):
a baseline, a run clearly better on every query, and a run that differs only by noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from colbert_lightning.compare import compare_files, default_run_names, main
from colbert_lightning.evaluation.per_query import HELD_OUT, METRIC_NAMES, SEEN, write_per_query

QUERIES = 120
PERMUTATIONS = "2000"
TABLE_HEADER = (
    "| run | queries | mean | baseline mean | difference | 95% CI | p | p (Holm) | sig. |"
)


def _per_query(ndcg: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-query rows whose other metrics are simple functions of ndcg@10 (all distinct)."""
    return {
        f"q{number:03d}": {
            name: float(value) ** (position + 1) for position, name in enumerate(METRIC_NAMES)
        }
        for number, value in enumerate(ndcg)
    }


def _subsets() -> dict[str, str]:
    return {f"q{number:03d}": HELD_OUT if number % 3 == 0 else SEEN for number in range(QUERIES)}


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Three runs in folders bm25/, colbert/ and noisy/, each with per_query_test.tsv."""
    generator = np.random.default_rng(0)
    baseline = generator.uniform(0.2, 0.8, QUERIES)
    scores = {
        "bm25": baseline,
        "colbert": np.clip(baseline + 0.1 + generator.normal(0.0, 0.02, QUERIES), 0.0, 1.0),
        "noisy": baseline + generator.normal(0.0, 0.02, QUERIES),
    }
    return {
        name: (
            write_per_query(tmp_path / name / "per_query_test.tsv", _per_query(values), _subsets()),
            values,
        )
        for name, values in scores.items()
    }


def _table_rows(output: str) -> dict[str, list[str]]:
    """Run name -> the cells of its table row."""
    lines = output.splitlines()
    start = lines.index(TABLE_HEADER) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def _interval(cell: str) -> tuple[float, float]:
    low, high = cell.strip("[]").split(",")
    return float(low), float(high)


def test_the_table_shows_the_means_differences_and_tests(runs, capsys):
    paths = [str(path) for path, _ in runs.values()]
    main([*paths, "--permutations", PERMUTATIONS, "--resamples", PERMUTATIONS])
    output = capsys.readouterr().out
    rows = _table_rows(output)
    assert list(rows) == ["colbert", "noisy"]
    baseline = runs["bm25"][1]
    for name in ("colbert", "noisy"):
        values = runs[name][1]
        run, queries, mean, baseline_mean, difference, interval, p_value, holm, mark = rows[name]
        assert int(queries) == QUERIES
        assert float(mean) == pytest.approx(np.mean(values), abs=5e-5)
        assert float(baseline_mean) == pytest.approx(np.mean(baseline), abs=5e-5)
        assert float(difference) == pytest.approx(np.mean(values - baseline), abs=5e-5)
        low, high = _interval(interval)
        assert low <= float(difference) <= high
        assert 0.0 < float(p_value) <= float(holm) <= 1.0
    assert rows["colbert"][-1] == "*"
    assert float(rows["colbert"][6]) == pytest.approx(1 / 2001, abs=1e-4)
    assert rows["noisy"][-1] == ""
    assert float(rows["noisy"][6]) > 0.05
    assert output.startswith("ndcg@10 against baseline bm25 (")
    assert (
        "Two-sided paired randomisation test (2000 random sign flips); 95% CI: percentile "
        "bootstrap (2000 resamples); Holm over 2 comparisons; * = p (Holm) <= 0.05." in output
    )


def test_another_metric_and_names(runs, capsys):
    paths = [str(path) for path, _ in runs.values()]
    main(
        [
            *paths,
            "--metric",
            "recall@10",
            "--names",
            "BM25, ColBERT ,Noise",
            "--permutations",
            "200",
        ]
    )
    rows = _table_rows(capsys.readouterr().out)
    assert list(rows) == ["ColBERT", "Noise"]
    recall = runs["ColBERT".lower()][1] ** 3  # recall@10 is the third metric column
    assert float(rows["ColBERT"][2]) == pytest.approx(np.mean(recall), abs=5e-5)


def test_subset_keeps_only_its_queries(runs, capsys):
    paths = [str(path) for path, _ in runs.values()]
    main([*paths, "--subset", HELD_OUT, "--permutations", "200"])
    output = capsys.readouterr().out
    rows = _table_rows(output)
    held_out = np.arange(QUERIES) % 3 == 0
    baseline = runs["bm25"][1][held_out]
    colbert = runs["colbert"][1][held_out]
    assert int(rows["colbert"][1]) == held_out.sum() == 40
    assert float(rows["colbert"][2]) == pytest.approx(np.mean(colbert), abs=5e-5)
    assert float(rows["colbert"][3]) == pytest.approx(np.mean(baseline), abs=5e-5)
    assert f"subset {HELD_OUT}" in output


def test_subset_needs_the_subset_column(runs, tmp_path, capsys):
    unlabelled = write_per_query(
        tmp_path / "plain" / "per_query_test.tsv", _per_query(runs["colbert"][1])
    )
    with pytest.raises(SystemExit) as caught:
        main([str(runs["bm25"][0]), str(unlabelled), "--subset", SEEN])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert str(unlabelled) in error and "subset column" in error


def test_output_writes_the_table_and_a_json_with_the_same_numbers(runs, tmp_path, capsys):
    paths = [str(path) for path, _ in runs.values()]
    report = tmp_path / "reports" / "test.md"
    main([*paths, "--permutations", PERMUTATIONS, "--output", str(report), "--seed", "3"])
    printed = capsys.readouterr().out
    table = report.read_text(encoding="utf-8")
    assert TABLE_HEADER in table and table in printed
    summary = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    assert summary["metric"] == "ndcg@10" and summary["subset"] is None
    assert summary["baseline"] == {"name": "bm25", "path": paths[0]}
    assert (summary["alpha"], summary["permutations"], summary["seed"]) == (0.05, 2000, 3)
    comparisons = {entry["name"]: entry for entry in summary["comparisons"]}
    assert list(comparisons) == ["colbert", "noisy"]
    rows = _table_rows(table)
    baseline = runs["bm25"][1]
    for name, entry in comparisons.items():
        values = runs[name][1]
        assert entry["path"] == str(runs[name][0])
        assert entry["queries"] == QUERIES
        assert entry["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert entry["baseline_mean"] == pytest.approx(np.mean(baseline), rel=1e-12)
        assert entry["mean_difference"] == pytest.approx(np.mean(values - baseline), abs=1e-12)
        assert f"{entry['mean']:.4f}" == rows[name][2]
        assert f"{entry['p_value']:.4f}" == rows[name][6]
        assert f"{entry['adjusted_p_value']:.4f}" == rows[name][7]
        assert entry["significant"] == (rows[name][8] == "*")
    assert comparisons["colbert"]["significant"] is True


def test_compare_files_is_callable_without_the_command_line(runs):
    paths = [path for path, _ in runs.values()]
    results = compare_files(paths, ["a", "b", "c"], "mrr@10", permutations=200, resamples=200)
    assert [result.name for result in results] == ["b", "c"]
    assert results[0].mean == pytest.approx(np.mean(runs["colbert"][1] ** 2))


def _expect_exit(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


def test_a_missing_file_exits_2_naming_it(runs, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "per_query_test.tsv"
    error = _expect_exit(capsys, [str(runs["bm25"][0]), str(missing)])
    assert str(missing) in error and "no such per-query file" in error


def test_a_malformed_file_exits_2_naming_it(runs, tmp_path, capsys):
    malformed = tmp_path / "broken" / "per_query_test.tsv"
    malformed.parent.mkdir()
    malformed.write_text("query_id\tndcg@10\nq000\tnot-a-number\n", encoding="utf-8")
    error = _expect_exit(capsys, [str(runs["bm25"][0]), str(malformed)])
    assert str(malformed) in error and "'not-a-number' is not a number" in error


def test_mismatched_query_sets_exit_2_naming_both_files(runs, tmp_path, capsys):
    fewer = write_per_query(
        tmp_path / "fewer" / "per_query_test.tsv", _per_query(runs["colbert"][1][:100])
    )
    error = _expect_exit(capsys, [str(runs["bm25"][0]), str(runs["noisy"][0]), str(fewer)])
    assert f"{fewer} vs baseline {runs['bm25'][0]}" in error
    assert "run 'fewer' has 100 queries and baseline 'bm25' has 120" in error
    assert "20 only in 'bm25': 'q100', 'q101'" in error


def test_subsets_that_disagree_are_a_mismatch(runs, tmp_path, capsys):
    relabelled = {query_id: HELD_OUT for query_id in _subsets()}
    other = write_per_query(
        tmp_path / "relabelled" / "per_query_test.tsv", _per_query(runs["colbert"][1]), relabelled
    )
    error = _expect_exit(capsys, [str(runs["bm25"][0]), str(other), "--subset", HELD_OUT])
    assert str(other) in error and "has 120 queries and baseline 'bm25' has 40" in error


def test_an_unknown_metric_exits_2_naming_the_file(runs, capsys):
    error = _expect_exit(capsys, [str(runs["bm25"][0]), str(runs["colbert"][0]), "--metric", "map"])
    assert f"{runs['bm25'][0]}: no metric 'map'" in error and "ndcg@10" in error


def test_a_header_only_file_exits_2(runs, tmp_path, capsys):
    empty = write_per_query(tmp_path / "empty" / "per_query_test.tsv", {})
    error = _expect_exit(capsys, [str(empty), str(runs["colbert"][0])])
    assert f"{empty}: no queries" in error


@pytest.mark.parametrize("names", ["a,b", "a,b,b", "a,,c"])
def test_bad_names_exit_2(runs, capsys, names):
    paths = [str(path) for path, _ in runs.values()]
    error = _expect_exit(capsys, [*paths, "--names", names])
    assert "--names needs 3 distinct non-empty names" in error


def test_a_json_output_path_is_refused(runs, tmp_path, capsys):
    paths = [str(path) for path, _ in runs.values()]
    error = _expect_exit(capsys, [*paths, "--output", str(tmp_path / "report.json")])
    assert "name a .md file" in error


def test_default_names_stay_unambiguous(tmp_path):
    assert default_run_names([tmp_path / "a.tsv", tmp_path / "b.tsv"]) == ["a", "b"]
    assert default_run_names([Path("x/run/t.tsv"), Path("y/run/t.tsv")]) == ["x/run/t", "y/run/t"]
    assert default_run_names([Path("out/run.tsv"), Path("out/run.csv")]) == [
        "out/run.tsv",
        "out/run.csv",
    ]
    assert default_run_names([Path("r.tsv"), Path("r.tsv")]) == ["r.tsv#1", "r.tsv#2"]


def test_runs_as_a_module(runs, tmp_path):
    paths = [str(path) for path, _ in runs.values()]
    completed = subprocess.run(
        [sys.executable, "-m", "colbert_lightning.compare", *paths, "--permutations", "100"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert TABLE_HEADER in completed.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "colbert_lightning.compare", paths[0], "missing.tsv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 2 and "missing.tsv" in failed.stderr
