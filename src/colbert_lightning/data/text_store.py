"""Id -> text lookup over a collection or queries file, without holding the texts in memory.

The store makes one pass over the file and keeps two int64 arrays: a 64-bit hash of each id and
the byte offset of its line, sorted by hash (16 bytes per record; MS MARCO's 8.8M passages take
about 140 MB). A lookup hashes the id, finds it with ``np.searchsorted``, seeks to the line,
parses it and checks the id, so hash collisions cost a second read and never a wrong text.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import numpy as np
from tqdm.auto import tqdm

from colbert_lightning.data.beir import join_title, parse_beir_record
from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.lines import (
    GZIP_SUFFIX,
    decode_line,
    is_gzipped,
    named_gzip_errors,
    numbered_lines,
    open_binary,
)
from colbert_lightning.modeling.checkpoints import temporary_path

StoreFormat = Literal["auto", "beir", "tsv"]

# Files at least this large get a progress bar while they are indexed or decompressed.
PROGRESS_MIN_BYTES = 50 * 2**20
_SUFFIX_FORMATS = {".jsonl": "beir", ".json": "beir", ".tsv": "tsv"}


class UnknownIdError(KeyError):
    """An id that the store's file does not hold.

    Args:
        record_id: the id looked up.
        path: the file the store reads.
    """

    def __init__(self, record_id: str, path: str) -> None:
        super().__init__(record_id)
        self.record_id = record_id
        self.path = str(path)

    def __str__(self) -> str:
        return f"id {self.record_id!r} is not in {self.path}"

    def __reduce__(self):  # keep both fields when raised inside a DataLoader worker
        return (type(self), (self.record_id, self.path))


def id_hash(record_id: str) -> int:
    """The signed 64-bit hash under which the store files an id.

    >>> id_hash("7") == id_hash("7") and id_hash("7") != id_hash("8")
    True
    """
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def resolve_format(path: str | os.PathLike, fmt: StoreFormat = "auto") -> Literal["beir", "tsv"]:
    """The concrete format of a collection or queries file, by ``fmt`` or by the file's suffix.

    >>> resolve_format("corpus.jsonl.gz")
    'beir'
    >>> resolve_format("collection.tsv")
    'tsv'

    Raises:
        ValueError: ``fmt`` is unknown, or ``auto`` cannot tell the format from the suffix.
    """
    if fmt in ("beir", "tsv"):
        return fmt
    if fmt != "auto":
        raise ValueError(f"unknown text file format {fmt!r}; expected 'auto', 'beir' or 'tsv'")
    name = Path(path).name.lower()
    if is_gzipped(name):
        name = name[: -len(GZIP_SUFFIX)]
    suffix = Path(name).suffix
    if suffix not in _SUFFIX_FORMATS:
        raise ValueError(
            f"cannot tell the format of {path} from its suffix; name it .jsonl, .json or .tsv "
            "(optionally .gz), or pass fmt='beir' or fmt='tsv'"
        )
    return _SUFFIX_FORMATS[suffix]


def _parse_beir(line: str) -> tuple[str, str]:
    record = parse_beir_record(line)
    return record.id, record.titled_text


def _parse_tsv(line: str) -> tuple[str, str]:
    columns = line.split("\t")
    if len(columns) not in (2, 3):
        raise ValueError(
            f"expected 2 or 3 tab-separated columns (id, text[, title]), found {len(columns)}"
        )
    if not columns[0]:
        raise ValueError("empty id")
    title = columns[2] if len(columns) == 3 else ""
    return columns[0], join_title(title, columns[1])


def _progress(total_bytes: int, description: str) -> tqdm:
    return tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc=description,
        disable=total_bytes < PROGRESS_MIN_BYTES,
    )


class TextStore:
    """Read-only ``id -> text`` mapping over a BEIR JSONL or a TSV file, backed by the file.

    BEIR lines are ``{"_id": ..., "title": ..., "text": ...}``, checked by ``parse_beir_record``
    exactly as ``load_corpus`` checks them; TSV lines are ``id<TAB>text`` or colbert-ai's
    ``id<TAB>text<TAB>title``. A non-empty title is joined in front of the text with a space.
    Empty texts are kept: callers decide whether they are errors. Gzip files are decompressed
    once into ``cache_dir`` (or a temporary folder removed with the store), because seeking in
    gzip is slow; plain files are read in place.

    The store pickles without its file handle, which each process reopens on first use, so it
    can go to DataLoader workers.

    Args:
        path: the collection or queries file (``.jsonl``, ``.json``, ``.tsv``, each maybe ``.gz``).
        fmt: ``beir``, ``tsv``, or ``auto`` to choose by the file's suffix.
        bad_lines: what to do with malformed lines and duplicate ids; ``None`` raises on the first.
        cache_dir: where a gzip file's decompressed copy goes; reused while the source is unchanged.

    Raises:
        DataFormatError: a malformed line or a duplicate id, under the ``error`` policy; a gzip
            file that cannot be decompressed, whatever the policy.
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: StoreFormat = "auto",
        bad_lines: BadLines | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = str(path)
        self.fmt = resolve_format(path, fmt)
        if Path(path).is_dir():
            raise IsADirectoryError(f"{self.path} is a folder, not a text file")
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such text file: {self.path}")
        bad_lines = BadLines() if bad_lines is None else bad_lines
        self._parse_text = _parse_beir if self.fmt == "beir" else _parse_tsv
        self._file: IO[bytes] | None = None
        self._pid: int | None = None
        if is_gzipped(self.path):
            self._data_path = self._decompressed_copy(cache_dir)
        else:
            self._data_path = self.path
        self._hashes, self._offsets = self._build_index(bad_lines)

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, record_id: object) -> bool:
        if isinstance(record_id, int) and not isinstance(record_id, bool):
            record_id = str(record_id)
        return isinstance(record_id, str) and self._find(record_id) is not None

    def __getitem__(self, record_id: str) -> str:
        """The text filed under ``record_id`` (an int is taken as its decimal string).

        Raises:
            UnknownIdError: the file holds no such id.
        """
        if isinstance(record_id, int) and not isinstance(record_id, bool):
            record_id = str(record_id)
        text = self._find(record_id) if isinstance(record_id, str) else None
        if text is None:
            raise UnknownIdError(record_id, self.path)
        return text

    def ids(self) -> Iterator[str]:
        """The ids in file order, malformed and duplicate lines left out."""
        offsets = np.sort(self._offsets)
        with open(self._data_path, "rb") as file:
            for offset in offsets.tolist():
                yield self._read_indexed(file, offset)[0]

    def close(self) -> None:
        """Close this process's file handle; the next lookup reopens it."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        state.pop("_finalizer", None)
        return state

    def __repr__(self) -> str:
        return f"TextStore({self.path!r}, fmt={self.fmt!r}, {len(self)} records)"

    def _parse(self, line: bytes, line_number: int) -> tuple[str, str]:
        """``(id, text)`` of line ``line_number`` (1-based), met while indexing."""
        try:
            return self._parse_text(decode_line(line, first=line_number == 1))
        except ValueError as error:
            raise DataFormatError(self.path, line_number, str(error)) from None

    def _read_indexed(self, file: IO[bytes], offset: int) -> tuple[str, str]:
        """``(id, text)`` of the line indexed at byte ``offset``, read back from ``file``."""
        if file.tell() != offset:
            file.seek(offset)
        try:
            # Offset 0 is line 1, whose BOM (if any) indexing stripped too.
            return self._parse_text(decode_line(file.readline(), first=offset == 0))
        except ValueError as error:
            raise RuntimeError(
                f"{self.path} changed after it was indexed ({error}); rebuild the store"
            ) from None

    def _handle(self) -> IO[bytes]:
        # DataLoader workers inherit or unpickle the store; each process needs its own handle.
        if self._file is None or self._pid != os.getpid():
            self._file = open(self._data_path, "rb")
            self._pid = os.getpid()
        return self._file

    def _find(self, record_id: str) -> str | None:
        key = id_hash(record_id)
        position = int(np.searchsorted(self._hashes, key, side="left"))
        file = self._handle()
        while position < len(self._hashes) and self._hashes[position] == key:
            found_id, text = self._read_indexed(file, int(self._offsets[position]))
            if found_id == record_id:
                return text
            position += 1
        return None

    def _decompressed_copy(self, cache_dir: str | os.PathLike | None) -> str:
        source = Path(self.path)
        if cache_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="colbert-text-store-"))
            # Removed when this (the creating process's) store goes; pickled copies do not own it.
            self._finalizer = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        else:
            folder = Path(cache_dir)
            folder.mkdir(parents=True, exist_ok=True)
        stat = source.stat()
        # The name changes when the source changes, so a stale copy is never reused.
        key = hashlib.blake2b(
            f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=8
        ).hexdigest()
        target = folder / f"{source.name[: -len(GZIP_SUFFIX)]}.{key}"
        if target.is_file():
            return str(target)
        # named as every other write-then-rename here, so a killed copy is recognised as such
        partial = temporary_path(target)
        with (
            named_gzip_errors(source, remove=partial),
            open_binary(source) as compressed,
            open(partial, "wb") as plain,
            _progress(stat.st_size, f"decompressing {source.name}") as progress,
        ):
            while chunk := compressed.read(2**22):
                plain.write(chunk)
                # A .gz source opens as a GzipFile, whose fileobj has read the compressed bytes.
                progress.n = compressed.fileobj.tell()
                progress.refresh()
        # Atomic, so several ranks decompressing at once all end with a whole file.
        os.replace(partial, target)
        return str(target)

    def _build_index(self, bad_lines: BadLines) -> tuple[np.ndarray, np.ndarray]:
        hashes, offsets, line_numbers = array("q"), array("q"), array("q")
        size = os.path.getsize(self._data_path)
        reported = 0
        with (
            open(self._data_path, "rb") as file,
            _progress(size, f"indexing {Path(self.path).name}") as progress,
        ):
            for line_number, offset, line in numbered_lines(file):
                if offset - reported >= 2**22:
                    progress.update(offset - reported)
                    reported = offset
                try:
                    record_id, _ = self._parse(line, line_number)
                except DataFormatError as error:
                    bad_lines.handle(error)
                    continue
                hashes.append(id_hash(record_id))
                offsets.append(offset)
                line_numbers.append(line_number)
            progress.update(size - reported)
        hash_array = np.array(hashes, dtype=np.int64)
        # Stable, so records with equal hashes stay in file order (first occurrence first).
        order = np.argsort(hash_array, kind="stable")
        hash_array = hash_array[order]
        offset_array = np.array(offsets, dtype=np.int64)[order]
        line_array = np.array(line_numbers, dtype=np.int64)[order]
        keep = self._drop_duplicates(hash_array, offset_array, line_array, bad_lines)
        return hash_array[keep], offset_array[keep]

    def _drop_duplicates(
        self,
        hashes: np.ndarray,
        offsets: np.ndarray,
        line_numbers: np.ndarray,
        bad_lines: BadLines,
    ) -> np.ndarray:
        """Mask of records to keep: all but the repeats of an id, reported through ``bad_lines``."""
        keep = np.ones(len(hashes), dtype=bool)
        equal_to_previous = np.flatnonzero(hashes[1:] == hashes[:-1]) + 1
        if len(equal_to_previous) == 0:
            return keep
        # Only ids whose hashes collide are read back, to tell real repeats from hash collisions.
        errors = []
        with open(self._data_path, "rb") as file:
            group_starts = sorted(set((equal_to_previous - 1).tolist()) - set(equal_to_previous))
            for start in group_starts:
                end = start + 1
                while end < len(hashes) and hashes[end] == hashes[start]:
                    end += 1
                first_line: dict[str, int] = {}
                for position in range(start, end):
                    record_id, _ = self._read_indexed(file, int(offsets[position]))
                    line_number = int(line_numbers[position])
                    if record_id in first_line:
                        first = first_line[record_id]
                        problem = f"duplicate id {record_id!r} (first at line {first})"
                        errors.append(DataFormatError(self.path, line_number, problem))
                        keep[position] = False
                    else:
                        first_line[record_id] = line_number
        for error in sorted(errors, key=lambda error: error.line):
            bad_lines.handle(error)
        return keep
