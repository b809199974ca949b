"""Checkpoint files: written whole with a checksum, read back verified or refused by name.

A checkpoint is ``torch.save``'s zip archive of a dict. :func:`write_checkpoint` adds
``colbert_checksum``, a SHA-256 of everything else in the dict (every tensor's bytes, every
value), writes a temporary file beside the target and renames it into place. :func:`read_checkpoint`
loads a file and recomputes the checksum, so a byte changed on disk or in a copy is refused
instead of loaded as wrong weights; a file written before checksums loads with a warning.
Empty, truncated and foreign files give one :class:`CheckpointError` naming the file and what
is wrong with it, never a bare ``EOFError`` or a zip-library message.

Temporaries are named ``.<target>.tmp-<pid>`` (:func:`temporary_path`), so that those of a
process that was killed mid-write are recognised and removed (:func:`remove_stale_temporaries`);
prepared data uses the same naming.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKSUM_KEY = "colbert_checksum"
CHECKSUM_VERSION = 1
ZIP_START = b"PK\x03\x04"
ZIP_END = b"PK\x05\x06"  # end-of-central-directory record, within the last 64 KiB + 22 bytes
LEGACY_TORCH_START = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch < 1.6
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>[0-9]+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: empty, truncated, damaged, foreign or non-finite."""


# ---- temporaries ------------------------------------------------------------------------------


def temporary_path(target: str | os.PathLike) -> Path:
    """Where this process writes ``target`` before renaming it: beside it, never in /tmp.

    Example:
        >>> temporary_path("/runs/a/last.ckpt").name == f".last.ckpt.tmp-{os.getpid()}"
        True
    """
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(folder: str | os.PathLike, min_age_s: float = 60.0) -> list[Path]:
    """Delete the :func:`temporary_path` files in ``folder`` whose writing process is gone.

    A write killed before its rename leaves one (a checkpoint's is as large as the checkpoint).
    Those of a live process are kept, and so are those written to in the last ``min_age_s``
    seconds: on a folder shared between machines, the process id may be another machine's.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = TEMPORARY_NAME.match(entry.name)
        if not match or not entry.is_file() or _process_alive(int(match["pid"])):
            continue
        if time.time() - entry.stat().st_mtime >= min_age_s:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        names = ", ".join(path.name for path in removed)
        log.warning(
            "removed %d file(s) left by interrupted writes in %s: %s", len(removed), folder, names
        )
    return removed


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no harmless liveness probe (os.kill would end the process): keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False  # no process has such a number
    return True


def write_atomically(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path``: a temporary file beside it, fsync, rename.

    A process killed mid-write leaves the previous ``path`` intact (and a temporary file that
    :func:`remove_stale_temporaries` recognises).
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        temporary.write_bytes(data)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ---- checksum ---------------------------------------------------------------------------------


def checksum(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint dict's contents, its own checksum entry left out.

    Tensors count by dtype, shape and bytes (not by storage layout or device), mappings by their
    items in order, so the value is the same after a save and a load.

    Example:
        >>> checksum({"w": torch.ones(2)}) == checksum({"w": torch.ones(2)})
        True
        >>> checksum({"w": torch.ones(2)}) == checksum({"w": torch.tensor([1.0, 2.0])})
        False
    """
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY})
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        tensor = tensor.to_dense() if tensor.layout != torch.strided else tensor
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        digest.update(f"tensor:{tensor.dtype}:{tuple(tensor.shape)}:{raw.nbytes};".encode())
        digest.update(raw)
    elif isinstance(value, np.ndarray) and value.dtype != object:
        raw = np.ascontiguousarray(value)
        digest.update(f"array:{raw.dtype.str}:{raw.shape}:{raw.nbytes};".encode())
        digest.update(raw.reshape(-1).view(np.uint8))
    elif isinstance(value, Mapping):
        digest.update(f"mapping:{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"sequence:{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (bytes, bytearray)):
        digest.update(f"bytes:{len(value)};".encode())
        digest.update(value)
    elif isinstance(value, str):
        encoded = value.encode("utf-8", "surrogatepass")
        digest.update(f"str:{len(encoded)};".encode())
        digest.update(encoded)
    elif value is None or isinstance(value, (bool, int, float, complex, np.generic)):
        text = f"{type(value).__name__}:{value!r}"
        digest.update(f"scalar:{len(text)};{text}".encode())
    else:  # anything else torch.save accepts: its pickle
        pickled = pickle.dumps(value, protocol=4)
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        digest.update(f"object:{name}:{len(pickled)};".encode())
        digest.update(pickled)


# ---- writing and reading ----------------------------------------------------------------------


def write_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``checkpoint`` with its :func:`checksum`, atomically.

    See :func:`write_atomically`: a process killed mid-write leaves the previous file intact.

    Raises:
        OSError: the file could not be written (full disk, no permission); the message names
            it and says whether an earlier one is intact.
    """
    path = Path(path)
    buffer = io.BytesIO()
    sealed = {
        **checkpoint,
        CHECKSUM_KEY: {"version": CHECKSUM_VERSION, "sha256": checksum(checkpoint)},
    }
    torch.save(sealed, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, buffer.getbuffer())
    except OSError as error:
        kept = "the previous one is intact" if path.exists() else "no earlier one exists"
        raise OSError(
            error.errno, f"could not write checkpoint {path} ({error.strerror}); {kept}"
        ) from error


def read_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    weights_only: bool | None = True,
    mmap: bool = False,
    checksummed: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`write_checkpoint` and verify its checksum.

    A checkpoint without a checksum (written before checksums, or by another program) loads
    with a logged warning.

    Args:
        path: the ``.ckpt`` file.
        map_location: as ``torch.load``'s.
        weights_only: as ``torch.load``'s (None: torch's default).
        mmap: as ``torch.load``'s.
        checksummed: False for another program's file (a ``pytorch_model.bin``): loaded
            unverified, without the warning, yet refused by name when unreadable.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, truncated, damaged, not a checkpoint, or its
            contents do not match its checksum; the message names the file.
    """
    path = Path(path)
    with open(path, "rb") as handle:  # FileNotFoundError / PermissionError name the file
        start = handle.read(64)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path}: empty file (0 bytes), not a checkpoint")
    if not start.startswith(ZIP_START) and not start.startswith(LEGACY_TORCH_START):
        raise CheckpointError(
            f"checkpoint {path}: not a PyTorch checkpoint ({_describe_start(start)})"
        )
    try:
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=weights_only, mmap=mmap
        )
    except Exception as error:  # torch and pickle raise many types for one damaged file
        raise CheckpointError(
            f"checkpoint {path}: {_unreadable(path, start, size, error)}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path}: holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    recorded = checkpoint.get(CHECKSUM_KEY)
    if recorded is None and not checksummed:
        return checkpoint
    if recorded is None:
        log.warning(
            "checkpoint %s has no checksum (written before checksums were added, or by another "
            "program): loaded unverified",
            path,
        )
        return checkpoint
    if not isinstance(recorded, Mapping) or recorded.get("version") != CHECKSUM_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: damaged: its checksum entry is unreadable ({recorded!r:.80})"
        )
    if checksum(checkpoint) != recorded.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path}: damaged: its contents do not match the checksum written with "
            "it (bytes changed on disk or in a copy)"
        )
    return checkpoint


def _describe_start(start: bytes) -> str:
    text = start.decode("utf-8", "ignore")  # a character cut at the end is dropped
    if len(text.encode()) >= len(start) - 3 and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0] if text.strip() else text
        return f"a text file beginning {first[:40]!r}"
    return f"it begins with the bytes {start[:8]!r}"


def _unreadable(path: Path, start: bytes, size: int, error: Exception) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, size - (65536 + 22)))
        tail = handle.read()
    if start.startswith(ZIP_START) and ZIP_END not in tail:
        return (
            f"truncated, or damaged at its end: no end-of-archive record in its {size} bytes "
            "(an interrupted copy or write?)"
        )
    message = str(error)
    if "WeightsUnpickler error:" in message:  # not torch's advice to load it unrestricted
        reason = message.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
    else:
        reason = message.strip().splitlines()[0] if message.strip() else "no message"
    return f"damaged: PyTorch cannot read it ({type(error).__name__}: {reason[:160]})"


# ---- finite values ----------------------------------------------------------------------------


def nonfinite_tensors(checkpoint: Mapping[str, Any]) -> list[str]:
    """The weights and optimiser-state tensors of a Lightning checkpoint that hold NaN or inf.

    Optimiser state is named by its place (``optimizer_states[0] parameter 3 exp_avg``) and,
    when one weight has that shape, by the weight it likely belongs to.
    """
    found = []
    weights = checkpoint.get("state_dict") or {}
    for name, tensor in weights.items():
        if _nonfinite(tensor):
            found.append(f"weight {name} ({_counts(tensor)})")
    for number, optimizer in enumerate(checkpoint.get("optimizer_states") or []):
        for parameter, state in (optimizer.get("state") or {}).items():
            for key, tensor in state.items():
                if _nonfinite(tensor):
                    hint = _weight_of_shape(weights, tensor)
                    found.append(
                        f"optimizer_states[{number}] parameter {parameter} {key} "
                        f"(shape {tuple(tensor.shape)}{hint}; {_counts(tensor)})"
                    )
    return found


def check_finite(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming every non-finite weight or optimiser-state tensor."""
    found = nonfinite_tensors(checkpoint)
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise CheckpointError(f"checkpoint {path}: non-finite values in {shown}")


def _nonfinite(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and (value.is_floating_point() or value.is_complex())
        and not bool(torch.isfinite(value).all())
    )


def _counts(tensor: torch.Tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return f"{nan} NaN, {inf} inf of {tensor.numel()}"


def _weight_of_shape(weights: Mapping[str, Any], tensor: torch.Tensor) -> str:
    same = [
        name for name, weight in weights.items() if getattr(weight, "shape", None) == tensor.shape
    ]
    return f", the shape of {same[0]}" if len(same) == 1 else ""
