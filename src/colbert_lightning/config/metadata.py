"""What a run records about the code that produced it."""

from __future__ import annotations

import subprocess
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent


def git_commit() -> str | None:
    """The package source's commit (with '-dirty' for uncommitted changes), or None outside git.

    An installed wheel is outside any repository (or inside an unrelated one, e.g. a venv in a
    checkout, which does not track this file): None.
    """
    try:
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", Path(__file__).name],
            capture_output=True,
            check=True,
            cwd=_SOURCE,
        )
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=_SOURCE
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=_SOURCE,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit
