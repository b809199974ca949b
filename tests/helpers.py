"""Composing the training config for tests: tiny sizes, no network, everything under tmp."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.resources import resource_path

REPO = Path(__file__).resolve().parents[1]

# A model small enough for a few CPU seconds per run.
TINY_OVERRIDES = [
    "model.encoder_config.hidden_size=32",
    "model.encoder_config.num_hidden_layers=1",
    "model.encoder_config.num_attention_heads=2",
    "model.encoder_config.intermediate_size=64",
    "model.dim=32",
    "model.doc_maxlen=64",
    "model.query_maxlen=16",
]


def triples_with_cranfield_dev(triples: Path) -> list[str]:
    """Overrides that train on the file ``triples`` (``data=triples``) with Cranfield as dev set."""
    cranfield = resource_path("cranfield")
    return [
        "data=triples",
        f"data.train.path={triples}",
        f"data.dev.corpus={cranfield}/corpus.jsonl.gz",
        f"data.dev.queries={cranfield}/queries.jsonl.gz",
        f"data.dev.qrels={cranfield}/qrels/test.tsv",
    ]


def compose_train(output_dir: Path, cache_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The training config as the command line would compose it, with run folders under tmp."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root_dir={REPO}",
                f"paths.output_dir={output_dir}",
                f"paths.cache_dir={cache_dir}",
                *overrides,
            ],
        )


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m colbert_lightning.train`` in a subprocess, offline, and return it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"))
    return subprocess.run(
        [sys.executable, "-m", "colbert_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def split_cranfield(folder: Path, test_queries: int = 50) -> Path:
    """Cranfield with its judged queries split in two: ``qrels/train.tsv`` and a held-out
    ``qrels/test.tsv`` of ``test_queries`` (the shipped folder has only ``test``, from which the
    default config draws both training and dev queries)."""
    from colbert_lightning.data.beir import load_qrels, write_qrels

    source = Path(resource_path("cranfield"))
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl.gz", "queries.jsonl.gz"):
        shutil.copy(source / name, folder / name)
    qrels = load_qrels(source / "qrels" / "test.tsv")
    held_out = sorted(qrels, key=int)[-test_queries:]
    write_qrels(folder / "qrels" / "test.tsv", {q: qrels[q] for q in held_out})
    write_qrels(
        folder / "qrels" / "train.tsv", {q: g for q, g in qrels.items() if q not in held_out}
    )
    return folder


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gloo_process_group(rank: int, port: int, world_size: int, **options) -> Iterator[None]:
    """This spawned process in a gloo group of ``world_size`` on ``127.0.0.1:port``, until exit."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, **options)
    try:
        yield
    finally:
        dist.destroy_process_group()
