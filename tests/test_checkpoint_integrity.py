"""Checkpoints: damaged, truncated, empty or foreign files are refused by name, never trained on.

One tiny training run (4 steps, ``last.ckpt`` every 2, no evaluation) makes the checkpoint the
tests damage; Lightning's resume reads through ``AtomicCheckpointIO.load_checkpoint``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from colbert_lightning.evaluation.split import evaluate_split
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.checkpoints import (
    CHECKSUM_KEY,
    CheckpointError,
    read_checkpoint,
    remove_stale_temporaries,
    write_checkpoint,
)
from colbert_lightning.resources import resource_path
from colbert_lightning.training.callbacks import AtomicCheckpointIO
from colbert_lightning.training.run import train
from tests.helpers import TINY_OVERRIDES, compose_train

RUN = [
    *TINY_OVERRIDES,
    "data.num_workers=0",
    "data.batch_size=4",
    "trainer.max_steps=4",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "~callbacks.evaluation",
    "~callbacks.best_checkpoint",
    "logger=none",
]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A finished 4-step run whose checkpoint folder held leftovers of killed writes at start."""
    run_dir = tmp_path_factory.mktemp("run")
    folder = run_dir / "checkpoints"
    folder.mkdir()
    orphan = folder / f".last.ckpt.tmp-{dead_pid()}"
    orphan.write_bytes(b"half a checkpoint")
    os.utime(orphan, (time.time() - 120, time.time() - 120))  # left two minutes ago
    in_progress = folder / f".last.ckpt.tmp-{os.getppid()}"  # a live process' write
    in_progress.write_bytes(b"being written")
    unrelated = folder / ".notes.tmp"
    unrelated.write_text("not ours")
    results = train(compose_train(run_dir, cache_dir, RUN))
    assert results["steps"] == 4
    return {
        "run_dir": run_dir,
        "last": folder / "last.ckpt",
        "results": results,
        "orphan": orphan,
        "in_progress": in_progress,
        "unrelated": unrelated,
    }


def invert(data: bytes, position: int, length: int = 4096) -> bytes:
    damaged = bytearray(data)
    damaged[position : position + length] = bytes(
        b ^ 0xFF for b in data[position : position + length]
    )
    return bytes(damaged)


def test_a_run_removes_stale_temporaries_at_start_and_records_its_inputs(trained):
    assert not trained["orphan"].exists()
    assert trained["in_progress"].exists() and trained["unrelated"].exists()
    written = json.loads((trained["run_dir"] / "results.json").read_text())
    inputs = written["inputs"]
    assert set(inputs) == {"corpus", "queries", "qrels"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) for entry in inputs.values())
    checkpoint = read_checkpoint(trained["last"])
    assert checkpoint[CHECKSUM_KEY]["version"] == 1 and checkpoint["global_step"] == 4


def test_remove_stale_temporaries_keeps_live_and_recent_writers(tmp_path):
    pid = dead_pid()
    dead, recent = tmp_path / f".x.ckpt.tmp-{pid}", tmp_path / f".y.ckpt.tmp-{pid}"
    live = tmp_path / f".x.ckpt.tmp-{os.getpid()}"
    for path in (dead, recent, live):
        path.write_bytes(b"part")
    for path in (dead, live):
        os.utime(path, (time.time() - 120, time.time() - 120))
    # recent: perhaps a process of another machine sharing the folder, still writing
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert live.exists() and recent.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_checkpoint_is_written_beside_its_target_never_in_the_system_temp(tmp_path, monkeypatch):
    asked = []
    (tmp_path / "system-temp").mkdir()

    def system_temp() -> str:
        asked.append(True)
        return str(tmp_path / "system-temp")

    monkeypatch.setattr(tempfile, "gettempdir", system_temp)
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    assert not asked, "a checkpoint write went through the system temp folder"
    assert read_checkpoint(target)["state_dict"]["w"].sum() == 3
    assert [path.name for path in target.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("seed", range(6))
def test_bytes_inverted_anywhere_are_refused_by_name(trained, tmp_path, seed):
    data = trained["last"].read_bytes()
    position = random.Random(seed).randrange(0, len(data) - 4096)
    if seed == 0:
        position = 0  # the zip header
    elif seed == 1:
        position = len(data) - 4096  # the central directory
    damaged = tmp_path / "last.ckpt"
    damaged.write_bytes(invert(data, position))
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {damaged}: ")) as loading:
        ColBERT.load(damaged)
    assert re.search(r"damaged|not a PyTorch checkpoint|truncated", str(loading.value))
    with pytest.raises(CheckpointError, match="Not resuming from it: nothing was written"):
        AtomicCheckpointIO().load_checkpoint(damaged)


def test_a_damaged_checkpoint_is_refused_on_resume_and_left_as_it_was(trained, tmp_path, cache_dir):
    run_dir = tmp_path / "resumed"
    damaged = run_dir / "checkpoints" / "last.ckpt"
    damaged.parent.mkdir(parents=True)
    data = trained["last"].read_bytes()
    damaged.write_bytes(invert(data, len(data) // 2))  # the middle: tensor bytes
    before = damaged.read_bytes()
    message = (
        f"checkpoint {damaged}: damaged: its contents do not match the checksum written with "
        "it (bytes changed on disk or in a copy). Not resuming from it: nothing was written; "
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        train(compose_train(run_dir, cache_dir, [*RUN, f"ckpt_path={damaged}"]))
    assert damaged.read_bytes() == before
    assert [path.name for path in damaged.parent.iterdir()] == ["last.ckpt"]


def test_evaluating_a_damaged_checkpoint_names_it(trained, tmp_path):
    damaged = tmp_path / "best.ckpt"
    data = trained["last"].read_bytes()
    damaged.write_bytes(invert(data, len(data) // 2))
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {damaged}: damaged")):
        evaluate_split(str(damaged), resource_path("cranfield"), "test")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (lambda data: b"", "empty file (0 bytes), not a checkpoint"),
        (lambda data: data[: len(data) // 2], "truncated, or damaged at its end"),
        (lambda data: data[:-100], "truncated, or damaged at its end"),
        (
            lambda data: b"step=4 loss=0.3\nnot a checkpoint\n",
            "not a PyTorch checkpoint (a text file beginning 'step=4 loss=0.3')",
        ),
        (lambda data: random.Random(0).randbytes(5000), "not a PyTorch checkpoint (it begins"),
    ],
    ids=["empty", "half", "short-by-100-bytes", "text", "random-bytes"],
)
def test_truncated_empty_and_foreign_files_are_named(trained, tmp_path, content, problem):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content(trained["last"].read_bytes()))
    expected = re.escape(f"checkpoint {path}: {problem}")
    with pytest.raises(CheckpointError, match=expected):
        ColBERT.load(path)
    with pytest.raises(CheckpointError, match=expected + ".*Not resuming from it"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_nonfinite_weights_or_optimiser_state_are_refused_by_tensor(trained, tmp_path):
    checkpoint = torch.load(trained["last"], weights_only=True)
    state = checkpoint["optimizer_states"][0]["state"]
    parameter = next(iter(state))
    state[parameter]["exp_avg"].view(-1)[0] = float("nan")
    poisoned = tmp_path / "last.ckpt"
    write_checkpoint(checkpoint, poisoned)  # a valid checksum: the values were written so
    message = (
        f"checkpoint {poisoned}: non-finite values in "
        f"optimizer_states[0] parameter {parameter} exp_avg"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        AtomicCheckpointIO().load_checkpoint(poisoned)

    checkpoint["state_dict"]["model.linear.weight"][0, 0] = float("inf")
    write_checkpoint(checkpoint, poisoned)
    with pytest.raises(CheckpointError, match=r"non-finite values in weight model\.linear\.weight"):
        ColBERT.load(poisoned)


def test_a_checkpoint_without_checksum_still_loads_and_resumes(
    trained, tmp_path, cache_dir, caplog
):
    """Written before checksums: loaded with a warning, and a run resumes from it."""
    checkpoint = torch.load(trained["last"], weights_only=True)
    del checkpoint[CHECKSUM_KEY]
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    old = folder / "old.ckpt"
    torch.save(checkpoint, old)
    with caplog.at_level(logging.WARNING):
        model = ColBERT.load(old)
    assert f"checkpoint {old} has no checksum" in caplog.text
    assert torch.isfinite(model.score_texts(["wing lift"], ["lift of a wing"])).all()
    results = train(
        compose_train(
            tmp_path / "run", cache_dir, [*RUN, "trainer.max_steps=6", f"ckpt_path={old}"]
        )
    )
    assert results["steps"] == 6
    assert read_checkpoint(folder / "last.ckpt")[CHECKSUM_KEY]["version"] == 1


def test_another_programs_weights_load_unwarned_and_are_named_when_cut_short(tmp_path, caplog):
    """A colbert-ai folder's pytorch_model.bin never has a checksum: no warning, same errors."""
    path = tmp_path / "pytorch_model.bin"
    torch.save({"linear.weight": torch.ones(2, 2)}, path)
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint(path, checksummed=False)["linear.weight"].sum() == 4
    assert "no checksum" not in caplog.text
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path}: truncated")):
        read_checkpoint(path, checksummed=False)
