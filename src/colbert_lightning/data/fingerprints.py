"""Content fingerprints of input files: what a cache of data derived from them is keyed on.

A fingerprint is a plain dict (it goes into JSON manifests and ``results.json``)::

    {"path": ..., "size": ..., "mtime_ns": ..., "sha256": ..., "recorded_ns": ...}

:func:`same_content` trusts an unchanged size and modification time (no read), hashes the file
when either differs (a ``touch`` or a copy keeps the content, so the cache still holds), and
hashes it too when the recorded time was too close to the recording to be trusted: a file
rewritten within the file system's timestamp granularity keeps its modification time.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RACY_WINDOW_NS = 2_000_000_000
"""A modification time this close to the recording (or later) proves nothing: hash instead."""
CHUNK_BYTES = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size, modification time and SHA-256 of a file, and when they were recorded.

    Raises:
        RuntimeError: the file changed while it was being hashed.
    """
    path = Path(path).resolve()
    before = path.stat()
    sha256 = file_sha256(path)
    after = path.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise RuntimeError(f"{path} changed while it was being read; run again once it is written")
    return {
        "path": str(path),
        "size": after.st_size,
        "mtime_ns": after.st_mtime_ns,
        "sha256": sha256,
        "recorded_ns": time.time_ns(),
    }


def stat_unchanged(recorded: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Whether ``path`` has the size and modification time of ``recorded`` (no read)."""
    stat = Path(path).stat()
    return (stat.st_size, stat.st_mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns"))


def same_content(recorded: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any] | None:
    """``path``'s fingerprint if its content is the one ``recorded`` describes, else None.

    Reads the file only when the size is the same but the modification time differs or is too
    close to when ``recorded`` was taken (see :data:`RACY_WINDOW_NS`). A file whose size differs
    has changed; one whose hash differs has changed.

    Returns:
        ``recorded`` itself when the size and time vouch for it; a fresh fingerprint (the same
        hash, the new time) when the hash had to confirm it; None when the content differs.
    """
    try:
        size, mtime_ns = recorded["size"], recorded["mtime_ns"]
        sha256, recorded_ns = recorded["sha256"], recorded["recorded_ns"]
    except (KeyError, TypeError):
        return None  # a fingerprint this code did not write
    stat = Path(path).stat()
    if stat.st_size != size:
        return None
    if stat.st_mtime_ns == mtime_ns and mtime_ns < recorded_ns - RACY_WINDOW_NS:
        return dict(recorded)
    current = fingerprint(path)
    return current if current["sha256"] == sha256 else None
