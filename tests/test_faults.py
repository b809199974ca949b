"""Nothing lost: kill and resume exactly, non-finite losses, full disks, impossible configs."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.modeling import ColBERT
from colbert_lightning.training.run import train
from tests.helpers import REPO, TINY_OVERRIDES, compose_train

# Dropout on, one DataLoader worker and a shuffle buffer: resuming must restore the random
# state and the stream position, not only the weights and the optimiser.
RESUMABLE = [
    *TINY_OVERRIDES,
    "model.encoder_config.hidden_dropout_prob=0.1",
    "data.batch_size=4",
    "data.num_workers=1",
    "data.shuffle_buffer=64",
    "trainer.max_steps=24",
    "callbacks.last_checkpoint.every_n_train_steps=4",
    "callbacks.evaluation.schedule.at_start=false",
    "callbacks.evaluation.schedule.first=1000",
    "callbacks.evaluation.schedule.interval=1000",
    "logger=csv",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def checkpoint_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def start_run(run_dir: Path, cache_dir: Path, extra: list[str] = ()) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    args = [*RESUMABLE, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "colbert_lightning.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_checkpoint(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def assert_same_weights(resumed: dict, reference: dict) -> None:
    assert resumed.keys() == reference.keys()
    worst = max((resumed[k].float() - reference[k].float()).abs().max().item() for k in reference)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run by {worst}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    """Final weights of an uninterrupted run, by number of DataLoader workers."""
    reference: dict[int, dict[str, torch.Tensor]] = {}

    def weights_for(workers: int) -> dict[str, torch.Tensor]:
        if workers not in reference:
            run_dir = tmp_path_factory.mktemp(f"uninterrupted{workers}")
            overrides = [*RESUMABLE, f"data.num_workers={workers}"]
            assert train(compose_train(run_dir, cache_dir, overrides))["steps"] == 24
            reference[workers] = weights(run_dir / "checkpoints" / "last.ckpt")
        return reference[workers]

    return weights_for


@pytest.mark.parametrize(
    ("kill_signal", "workers"),
    [(signal.SIGKILL, 1), (signal.SIGTERM, 1), (signal.SIGKILL, 2)],
    ids=["SIGKILL-1-worker", "SIGTERM-1-worker", "SIGKILL-2-workers"],
)
def test_killed_run_resumes_to_the_same_weights(
    kill_signal, workers, tmp_path, cache_dir, uninterrupted
):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = start_run(run_dir, cache_dir, [f"data.num_workers={workers}"])
    wait_for_checkpoint(last, process)
    process.send_signal(kill_signal)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 or kill_signal == signal.SIGTERM, output[-2000:]
    step = checkpoint_step(last)
    assert 4 <= step < 24, step
    if kill_signal == signal.SIGTERM:
        assert f"SIGTERM at step {step}: saved" in output, output[-2000:]
    torch.load(last, weights_only=False)  # a kill never leaves a corrupt last.ckpt

    overrides = [*RESUMABLE, f"data.num_workers={workers}", f"ckpt_path={last}"]
    resumed = train(compose_train(run_dir, cache_dir, overrides))
    assert resumed["steps"] == 24
    assert resumed["examples_seen"] == 24 * 4
    assert_same_weights(weights(last), uninterrupted(workers))


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path, cache_dir, monkeypatch
):
    poison_at = 6
    calls = {"n": 0}
    original = torch.nn.functional.cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == poison_at + 1 else loss

    monkeypatch.setattr("colbert_lightning.losses.F.cross_entropy", poisoned)
    overrides = [*RESUMABLE, "data.num_workers=0"]
    with pytest.raises(
        FloatingPointError, match=f"non-finite training loss .* at step {poison_at}"
    ):
        train(compose_train(tmp_path, cache_dir, overrides))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == 4  # the last good checkpoint, intact

    calls["n"] = 0
    results = train(
        compose_train(tmp_path / "skip", cache_dir, [*overrides, "module.skip_nonfinite=true"])
    )
    assert results["steps"] == 24
    assert results["nonfinite_batches"] == 1


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, cache_dir, monkeypatch):
    saves = {"n": 0}
    original = Path.write_bytes

    def disk_full_on_second_save(self, data):
        if ".ckpt.tmp-" in self.name:  # the temporary file a checkpoint is written to
            saves["n"] += 1
            if saves["n"] == 2:
                original(self, b"partial")  # what a full disk leaves behind
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_on_second_save)
    overrides = [
        *RESUMABLE,
        "data.num_workers=0",
        "callbacks.best_checkpoint.every_n_train_steps=1000",
    ]
    with pytest.raises(OSError, match="could not write checkpoint .*last.ckpt .*No space left"):
        train(compose_train(tmp_path, cache_dir, overrides))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == 4
    assert not list(last.parent.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "module.scheduler.warmup_steps=500",
            "warmup_steps=500 must be between 0 and trainer.max_steps=24",
        ),
        ("module.scheduler.warmup_steps=1.5", "warmup_steps"),
        ("trainer.max_steps=0", "trainer.max_steps must be a positive integer"),
        ("module.optimizer.lr=-1", "module.optimizer.lr must be a positive number"),
        (
            "data.train.path=/nonexistent/triples.jsonl",
            "data.train.path=/nonexistent/triples.jsonl: no such file",
        ),
        ("data.prepare.root=/nonexistent", "data.prepare.root=/nonexistent: no such BEIR folder"),
        ("data.root=/nonexistent", "data.root=/nonexistent: no such BEIR folder"),
        ("data.nway=1", "data.nway must be an integer >= 2"),
        ("data.batch_size=abc", "data.batch_size must be a positive integer"),
        ("model.query_maxlen=0", "model.query_maxlen"),
        ("model.similarity=dot", "model.similarity must be one of"),
        ("ckpt_path=/nonexistent.ckpt", "ckpt_path=/nonexistent.ckpt: no such checkpoint"),
    ],
)
def test_bad_config_fails_before_any_model_is_built(
    override, message, tmp_path, cache_dir, monkeypatch
):
    def must_not_build(*args, **kwargs):
        raise AssertionError("a model was built despite a bad config")

    monkeypatch.setattr(ColBERT, "from_config", must_not_build)
    # Hydra wraps errors raised by a config's class in InstantiationException (naming the key)
    with pytest.raises((ConfigError, ValueError, InstantiationException), match=re.escape(message)):
        train(compose_train(tmp_path, cache_dir, [*RESUMABLE, override]))


def test_unwritable_output_folder_is_a_clear_error(tmp_path, cache_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="paths.output_dir=.*cannot create the folder"):
        train(compose_train(blocker / "run", cache_dir, RESUMABLE))
