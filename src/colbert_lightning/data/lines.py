"""Opening input files and turning their lines into values: the one place every reader shares.

Every line-oriented file in ``data/`` (BEIR JSONL, qrels, runs, TSV collections, training files)
is opened by ``open_binary`` (which alone decides whether a file is gzipped), split by
``numbered_lines`` and decoded by ``decode_line``, so they all agree on line numbers, byte
offsets, UTF-8, a byte-order mark (allowed at the start of the file only) and blank lines.
``json_value`` and ``record_id`` are the field-level rules shared by the JSON formats. Problems of
one line are ``ValueError``s naming the problem only; callers add the file and the line
(``DataFormatError``). Bytes that cannot be decompressed (plain text in a ``.gz`` file, a
truncated or corrupt gzip file) stop ``numbered_lines`` with a ``DataFormatError`` naming the
file and the first line that could not be read, whatever the bad-line policy: nothing after
them can be read.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from colbert_lightning.data.errors import DataFormatError

GZIP_SUFFIX = ".gz"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
"""What reading a damaged gzip file raises (``gzip`` and ``zlib`` give neither file nor line)."""


def is_gzipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a gzip file, by its suffix (any case).

    >>> is_gzipped("corpus.jsonl.GZ"), is_gzipped("corpus.jsonl")
    (True, False)
    """
    return os.fspath(path).lower().endswith(GZIP_SUFFIX)


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes, decompressing a gzip file (see ``is_gzipped``) on the fly."""
    if is_gzipped(path):
        return gzip.open(path, "rb")
    return open(path, "rb")


def gzip_problem(error: BaseException) -> str:
    """What one of ``GZIP_ERRORS`` means, in words for a ``DataFormatError``.

    >>> gzip_problem(EOFError("Compressed file ended before the end-of-stream marker"))
    'the gzip data ends early: the file is truncated (an interrupted download or copy?)'
    """
    if isinstance(error, EOFError):
        return "the gzip data ends early: the file is truncated (an interrupted download or copy?)"
    if str(error).startswith("Not a gzipped file"):
        return "not gzip data, although the name ends in .gz (a plain file to rename?)"
    return f"corrupt gzip data ({error})"


def numbered_lines(file: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line_number, byte_offset, line)`` for each line of a binary file.

    Line numbers are 1-based. Blank lines at the very end of the file (an editor's trailing
    newlines) are left out; blank lines anywhere else are yielded for the caller to reject.
    A first line holding only a byte-order mark counts as blank.

    Raises:
        DataFormatError: the file (``file.name``) cannot be decompressed from the named line on
            (see ``gzip_problem``).
    """
    offset = line_number = 0
    trailing_blanks: list[tuple[int, int, bytes]] = []
    readline = file.readline
    while True:
        try:
            line = readline()
        except GZIP_ERRORS as error:
            name = str(getattr(file, "name", "<file>"))
            raise DataFormatError(name, line_number + 1, gzip_problem(error)) from None
        if not line:
            return
        line_number += 1
        content = line[len(_UTF8_BOM) :] if offset == 0 and line.startswith(_UTF8_BOM) else line
        if content.strip():
            yield from trailing_blanks
            trailing_blanks.clear()
            yield line_number, offset, line
        else:
            trailing_blanks.append((line_number, offset, line))
        offset += len(line)


@contextlib.contextmanager
def named_gzip_errors(path: str | os.PathLike, remove: Path | None = None) -> Iterator[None]:
    """Turn a gzip error raised inside into a ``DataFormatError`` naming ``path`` and the line.

    For a reader that copies a gzip file in large blocks and so knows no line when
    decompression fails: the file is then read again, line by line, up to the damage.

    Args:
        path: the gzip file read inside.
        remove: a partial output to delete first, if there is an error.

    Raises:
        DataFormatError: as ``numbered_lines``.
    """
    try:
        yield
    except GZIP_ERRORS:
        if remove is not None:
            remove.unlink(missing_ok=True)
        with open_binary(path) as file:
            for _ in numbered_lines(file):
                pass
        raise  # not reached: the same bytes fail the same way when read again


def decode_line(line: bytes, first: bool) -> str:
    """The text of one line, without its line ending (and a UTF-8 BOM, if ``first``).

    Args:
        line: the line's bytes, line ending included.
        first: whether the line starts the file (byte offset 0), the only place a BOM may be.

    Raises:
        ValueError: the line is not valid UTF-8, is blank, or starts with a byte-order mark
            though it is not the first line (files joined with their marks); the message names
            the problem.
    """
    line = line.rstrip(b"\r\n")
    if line.startswith(_UTF8_BOM):
        if not first:
            raise ValueError(
                "a byte-order mark (U+FEFF) starts this line; only the first line of a file may "
                "have one (files joined together?)"
            )
        line = line[len(_UTF8_BOM) :]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        if first and line.startswith(_UTF16_BOMS):
            raise ValueError(
                "the file is UTF-16 (by its byte-order mark); convert it to UTF-8"
            ) from None
        raise ValueError(f"invalid UTF-8 at byte {error.start} of the line") from None
    if not text.strip():
        raise ValueError("empty line")
    return text


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a (maybe gzipped) text file, 1-based.

    For files read whole, with no policy for bad lines: the first one stops the read.

    Raises:
        DataFormatError: a line that ``decode_line`` refuses, or bytes that cannot be
            decompressed (see ``numbered_lines``).
    """
    with open_binary(path) as file:
        for line_number, _, line in numbered_lines(file):
            try:
                text = decode_line(line, first=line_number == 1)
            except ValueError as error:
                raise DataFormatError(str(path), line_number, str(error)) from None
            yield line_number, text


def json_value(text: str) -> object:
    """The JSON value on one line.

    >>> json_value('{"_id": 7}')
    {'_id': 7}

    Raises:
        ValueError: ``bad JSON: ...``, with the decoder's reason and column (or limit: an
            integer of over 4,300 digits, nesting too deep for the decoder).
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"bad JSON: {error}") from None


def record_id(value: object, what: str) -> str:
    """An id read from a JSON field: a non-empty string, or an integer taken as its decimal string.

    Ids are compared as strings everywhere, so the JSON integer ``7`` and the string ``"7"`` are
    the same id. A boolean is not an integer here.

    >>> record_id(7, "field '_id'"), record_id("d7", "field '_id'")
    ('7', 'd7')

    Raises:
        ValueError: ``<what> must be a non-empty string or an integer, got <value>``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"{what} must be a non-empty string or an integer, got {value!r}")
