"""Sweeps: the submitit launcher runs jobs in their own processes; wandb groups a multirun."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from tests.helpers import REPO, TINY_OVERRIDES, run_cli

QUICK = [
    *TINY_OVERRIDES,
    "trainer.max_steps=2",
    "data.num_workers=0",
    "data.batch_size=4",
    "callbacks.evaluation.schedule.at_start=false",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "hydra/launcher=slurm",
            "trainer=slurm",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.nodes=2",
        ],
        ["hydra/launcher=local_submitit"],
        ["hydra/launcher=local"],
        ["hparams_search=grid"],
        ["hparams_search=cranfield_grid"],
        ["hparams_search=optuna"],
    ],
)
def test_launcher_and_search_configs_compose(overrides, tmp_path):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", f"paths.root_dir={REPO}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert "_target_" in launcher and "_target_" in cfg.hydra.sweeper
    if "trainer=slurm" in overrides:
        # Lightning's DDP is sized by the launcher: one process per GPU on every node
        assert launcher["tasks_per_node"] == 4
        assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy) == (4, 2, "ddp")
        trainer_kwargs = {**OmegaConf.to_container(cfg.trainer, resolve=True)}
        assert trainer_kwargs["devices"] == 4
    if any(option.startswith("hparams_search") for option in overrides):
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
    instantiate(cfg.model)


def test_two_job_sweep_with_the_submitit_local_executor(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    completed = run_cli(
        [
            "-m",
            "hydra/launcher=local_submitit",
            "module.optimizer.lr=1e-4,3e-4",
            *QUICK,
            f"paths.cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = sorted(sweep_dir.glob("*/results.json"))
    assert [path.parent.name for path in results] == ["0", "1"]
    pids = {json.loads(path.read_text())["config"]["module"]["optimizer"]["lr"] for path in results}
    assert pids == {1e-4, 3e-4}
    # submitit kept each job's own log: the jobs ran as separate processes
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2


def test_wandb_multirun_jobs_share_one_group(tmp_path, cache_dir, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    completed = run_cli(
        [
            "-m",
            "logger=wandb",
            "module.optimizer.lr=1e-4,3e-4",
            *QUICK,
            f"paths.cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    groups, names = set(), set()
    for job in ("0", "1"):
        config = json.loads((sweep_dir / job / "results.json").read_text())["config"]
        groups.add(config["logger"]["wandb"]["group"])
        names.add(config["logger"]["wandb"]["name"])
        [run] = (sweep_dir / job / "wandb").glob("offline-run-*")
        [record] = run.glob("run-*.wandb")
        group = config["logger"]["wandb"]["group"]
        assert group.encode() in record.read_bytes()  # the offline run itself carries the group
    assert len(groups) == 1 and groups != {None}
    assert groups.pop() == f"train-{sweep_dir.name}"
    assert len(names) == 2 and all("lr=" in name for name in names)
    assert os.environ["WANDB_MODE"] == "offline"
