"""The same seed and config give the same weights, bit for bit, on a loaded machine too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import REPO, TINY_OVERRIDES

# A few steps of the tiny model through the command line, with the default DataLoader worker.
OVERRIDES = [
    *TINY_OVERRIDES,
    "trainer.max_steps=6",
    "data.batch_size=8",
    "logger=none",
    "callbacks=none",  # Lightning's own checkpoint callback still writes last.ckpt
    "trainer.enable_progress_bar=false",
    "cpu_threads=2",
]


def _train(output_dir: Path, cache_dir: Path, environment: dict[str, str]) -> dict:
    """Train in a fresh process; the weights of its ``last.ckpt``."""
    arguments = [
        f"paths.root_dir={REPO}",
        f"paths.output_dir={output_dir}",
        f"paths.cache_dir={cache_dir}",
        *OVERRIDES,
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **environment}
    finished = subprocess.run(
        [sys.executable, "-m", "colbert_lightning.train", *arguments],
        cwd=output_dir.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    checkpoint = torch.load(
        output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    return checkpoint["state_dict"]


def test_weights_are_bit_identical_beside_cpu_burning_processes(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    quiet = _train(tmp_path / "quiet", cache_dir, {})
    burner_count = min(os.cpu_count() or 2, 4)  # enough to keep every core of a small box busy
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burner_count)
    ]
    try:
        # What a busy shared machine or its scheduler hands a job: OpenMP shrinking its thread
        # teams as the load average rises, and fewer threads to start with. Both used to change
        # how each sum was split across threads, and so the weights.
        busy = {"OMP_DYNAMIC": "true", "OMP_NUM_THREADS": "1"}
        loaded = _train(tmp_path / "loaded", cache_dir, busy)
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
    assert quiet.keys() == loaded.keys()
    different = [name for name in quiet if not torch.equal(quiet[name], loaded[name])]
    assert not different, f"{len(different)} of {len(quiet)} tensors differ: {different[:5]}"
