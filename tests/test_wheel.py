"""A non-editable install finds its configs: build the wheel, install it, train from elsewhere.

The fresh venv gets the wheel alone (``--no-deps``); its dependencies come from the test venv's
site-packages through a ``.pth`` line. A plain path entry does not run the ``.pth`` files found
there, so the test venv's editable install of this checkout stays inactive: the wheel's copy is
the only ``colbert_lightning`` the command can import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(root / "dist"), str(REPO)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("colbert_lightning-*.whl")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return env_dir


def test_the_wheel_ships_the_configs_and_imports_from_itself(wheel_venv):
    python = wheel_venv / "bin" / "python"
    probe = (
        "import json, colbert_lightning, colbert_lightning.config.resolvers as r;"
        "print(json.dumps([colbert_lightning.__file__, str(r.CONFIG_DIR),"
        " sorted(p.name for p in r.CONFIG_DIR.iterdir())]))"
    )
    package, config_dir, names = json.loads(
        subprocess.run(
            [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd="/"
        ).stdout
    )
    assert Path(package).is_relative_to(wheel_venv), package
    assert Path(config_dir).is_relative_to(wheel_venv) and Path(config_dir).name == "conf"
    assert {"train.yaml", "model", "data", "evaluate", "experiment"} <= set(names)


def test_colbert_train_runs_from_an_unrelated_folder(wheel_venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [str(wheel_venv / "bin" / "colbert-train"), "debug=fast", "hydra.run.dir=run"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["steps"] == 4
    assert results["final"]["val/ndcg@10"] >= 0
    assert results["git_commit"] is None  # an installed wheel is not a checkout
