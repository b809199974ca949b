"""Prepared data is keyed on its inputs' content: an edited input is never answered from cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from colbert_lightning.data import fingerprints
from colbert_lightning.data.beir import load_qrels, write_qrels
from colbert_lightning.data.fingerprints import RACY_WINDOW_NS, fingerprint, same_content
from colbert_lightning.data.negatives import prepare_triples
from colbert_lightning.resources import resource_path

CRANFIELD = Path(resource_path("cranfield"))


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    """Cranfield with a qrels split of its first 10 judged queries (a small, quick prepare)."""
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl.gz", "queries.jsonl.gz"):
        shutil.copy2(CRANFIELD / name, root / name)
    qrels = load_qrels(CRANFIELD / "qrels" / "test.tsv")
    write_qrels(root / "qrels" / "small.tsv", {q: qrels[q] for q in sorted(qrels, key=int)[:10]})
    return root


def prepare(root: Path, output_dir: Path, dev_queries: int = 2):
    return prepare_triples(root, "small", output_dir, dev_queries=dev_queries, show_progress=False)


def change_one_digit(path: Path) -> None:
    """Rewrite a qrels file with one grade changed: same path, same size."""
    lines = path.read_text(encoding="utf-8").splitlines()
    query_id, doc_id, grade = lines[1].split("\t")
    lines[1] = "\t".join([query_id, doc_id, str((int(grade) + 1) % 10)])
    before = path.stat().st_size
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size == before


def test_cutting_the_qrels_file_invalidates_the_cache(beir, tmp_path):
    output_dir = tmp_path / "prepared"
    first = prepare(beir, output_dir)
    assert first.counts["train_queries"] + first.counts["dev_queries"] == 10
    split = beir / "qrels" / "small.tsv"
    qrels = load_qrels(split)
    write_qrels(split, {q: qrels[q] for q in sorted(qrels, key=int)[:3]})  # 10 queries -> 3

    second = prepare(beir, output_dir, dev_queries=2)
    assert not second.cached
    assert second.counts["train_queries"] + second.counts["dev_queries"] == 3
    assert len(load_qrels(second.train_qrels)) + len(load_qrels(second.dev_qrels)) == 3
    assert prepare(beir, output_dir).cached  # and the new output is reused


def test_a_same_size_edit_of_the_qrels_invalidates_the_cache(beir, tmp_path):
    output_dir = tmp_path / "prepared"
    prepare(beir, output_dir)
    split = beir / "qrels" / "small.tsv"
    change_one_digit(split)
    again = prepare(beir, output_dir)
    assert not again.cached
    grades = {**load_qrels(again.train_qrels), **load_qrels(again.dev_qrels)}
    assert grades == {q: g for q, g in load_qrels(split).items() if any(v > 0 for v in g.values())}
    manifest = json.loads(Path(again.manifest).read_text())
    assert manifest["inputs"]["qrels"] == again.inputs["qrels"]
    assert manifest["inputs"]["qrels"]["sha256"] == fingerprints.file_sha256(split)


def test_an_edit_that_keeps_size_and_time_is_caught_while_the_time_is_recent(beir, tmp_path):
    """A file rewritten within the file system's timestamp granularity keeps its time."""
    output_dir = tmp_path / "prepared"
    split = beir / "qrels" / "small.tsv"
    prepare(beir, output_dir)
    stat = split.stat()
    change_one_digit(split)
    os.utime(split, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time
    assert not prepare(beir, output_dir).cached


def test_touching_an_input_keeps_the_cache_and_the_hash_is_then_trusted(
    beir, tmp_path, monkeypatch
):
    output_dir = tmp_path / "prepared"
    prepare(beir, output_dir)
    split = beir / "qrels" / "small.tsv"
    old = split.stat().st_mtime_ns - 10 * RACY_WINDOW_NS
    os.utime(split, ns=(old, old))  # new time, same bytes: the hash confirms them
    assert prepare(beir, output_dir).cached
    recorded = json.loads((output_dir / "manifest.json").read_text())["inputs"]["qrels"]
    assert recorded["mtime_ns"] == old  # recorded, so that the next check needs no read

    def must_not_hash(path):
        raise AssertionError(f"{path} was read although its size and time vouch for it")

    monkeypatch.setattr(fingerprints, "file_sha256", must_not_hash)
    assert prepare(beir, output_dir).cached


def test_same_content_reads_only_what_it_must(tmp_path, monkeypatch):
    path = tmp_path / "file.txt"
    path.write_text("abc")
    recorded = fingerprint(path)
    assert recorded["size"] == 3 and recorded["sha256"] == fingerprints.file_sha256(path)
    old = recorded["recorded_ns"] - 2 * RACY_WINDOW_NS
    os.utime(path, ns=(old, old))
    recorded = fingerprint(path)
    hashed = []
    monkeypatch.setattr(
        fingerprints, "file_sha256", lambda p: hashed.append(p) or "not the recorded hash"
    )
    assert same_content(recorded, path) == recorded and not hashed  # size and time vouch
    path.write_text("abcd")
    assert same_content(recorded, path) is None and not hashed  # another size: changed
    path.write_text("abd")
    assert same_content(recorded, path) is None and hashed  # same size, new time: hashed
    assert same_content({"size": 3}, path) is None  # a fingerprint this code did not write
