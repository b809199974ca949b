"""Smoke runs of the training entry point: fast_dev_run, learning, resume, multirun, DDP."""

from __future__ import annotations

import json

import pytest
import torch

from colbert_lightning.modeling import ColBERT
from colbert_lightning.training.run import train
from tests.helpers import REPO, TINY_OVERRIDES, compose_train, run_cli

FAST = [*TINY_OVERRIDES, "data.num_workers=0", "data.batch_size=8", "logger=csv"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Prepared Cranfield triples, shared by the tests of this module."""
    return tmp_path_factory.mktemp("cache")


def test_fast_dev_run(tmp_path, cache_dir):
    cfg = compose_train(tmp_path, cache_dir, [*FAST, "debug=fast_dev_run"])
    results = train(cfg)
    assert results["steps"] == 1
    assert results["step0"] is not None  # evaluation ran before the first update


def test_training_improves_dev_mrr_over_step_zero(tmp_path, cache_dir):
    overrides = [
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.max_steps=120",
        "module.optimizer.lr=1e-3",
        "module.scheduler.warmup_steps=10",
        "callbacks.evaluation.schedule.first=40",
        "callbacks.evaluation.schedule.interval=40",
        "model.encoder_config.hidden_size=64",
        "model.encoder_config.num_hidden_layers=1",
        "model.encoder_config.intermediate_size=128",
        "model.dim=64",
        "model.doc_maxlen=96",
    ]
    results = train(compose_train(tmp_path, cache_dir, overrides))
    step0, final = results["step0"], results["final"]
    assert final["step"] == 120
    assert final["val/mrr@10"] > step0["val/mrr@10"] + 0.05, (step0, final)
    assert final["val/ndcg@10"] > step0["val/ndcg@10"]
    # the run folder holds what a researcher reads afterwards
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["final"] == final and written["init"]["loaded"] == {}
    assert "val/ndcg@10" in (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_resumed_run_ends_with_the_uninterrupted_runs_weights(tmp_path, cache_dir):
    # Dropout on, so that the random state must be restored too. The schedule depends on
    # max_steps, so the interrupted run is the uninterrupted one's checkpoint at step 4.
    overrides = [
        *FAST,
        "model.encoder_config.hidden_dropout_prob=0.1",
        "trainer.max_steps=8",
        "callbacks.last_checkpoint.every_n_train_steps=4",
        "callbacks.last_checkpoint.save_top_k=-1",
        "+callbacks.last_checkpoint.filename='{step}'",
    ]
    straight = train(compose_train(tmp_path / "straight", cache_dir, overrides))
    midway = tmp_path / "straight" / "checkpoints" / "step=4.ckpt"
    assert torch.load(midway, weights_only=False)["global_step"] == 4
    resumed = train(
        compose_train(tmp_path / "resumed", cache_dir, [*overrides, f"ckpt_path='{midway}'"])
    )
    assert resumed["steps"] == straight["steps"] == 8
    assert resumed["examples_seen"] == straight["examples_seen"]
    expected = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    final = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    for name, weight in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name  # bit for bit
    # step-0 metrics travel with the checkpoint, so the resumed run still reports them
    assert resumed["step0"] == straight["step0"]
    assert resumed["final"] == straight["final"]  # the step-8 evaluation of the same weights
    # and the checkpoint alone rebuilds the model, without the training config
    model = ColBERT.from_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt").eval()
    assert model.config.dim == 32
    assert torch.isfinite(model.score_texts(["wing lift"], ["lift of a wing"])).all()


def test_multirun_makes_one_folder_per_job(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    completed = run_cli(
        [
            "-m",
            "module.optimizer.lr=1e-4,3e-4",
            "trainer.max_steps=2",
            *FAST,
            f"paths.cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep_dir}",
            "callbacks.evaluation.schedule.at_start=false",
        ],
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = sorted(sweep_dir.glob("*/results.json"))
    assert [path.parent.name for path in results] == ["0", "1"]
    learning_rates = [
        json.loads(path.read_text())["config"]["module"]["optimizer"]["lr"] for path in results
    ]
    assert learning_rates == [1e-4, 3e-4]


def test_ddp_on_two_cpu_processes(tmp_path, cache_dir):
    completed = run_cli(
        [
            "trainer=ddp_cpu",
            "trainer.max_steps=3",
            "module.gather_across_devices=true",
            *FAST,
            f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["steps"] == 3
    assert results["examples_seen"] == 3 * 8 * 2  # two processes, batch 8 each
    assert results["config"]["trainer"]["devices"] == 2
    # The processes share the dev evaluation and log what one process would: the step-0
    # metrics equal a single-process run's, whose initial weights are the same (same seed).
    single = train(compose_train(tmp_path / "single", cache_dir, [*FAST, "trainer.max_steps=1"]))
    metrics = [key for key in single["step0"] if key.startswith("val/")]
    assert len(metrics) == 4
    for key in metrics:
        assert abs(results["step0"][key] - single["step0"][key]) <= 1e-6, key


def test_wandb_logger_runs_offline(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_train(tmp_path, cache_dir, [*FAST, "logger=wandb", "trainer.max_steps=2"])
    results = train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.iterdir())
    assert results["final"]["step"] == 2
    assert (tmp_path / "csv" / "metrics.csv").exists()  # CSV beside wandb
