"""Opening input files and turning their lines into values: the one place every reader shares.

Every line-oriented file in ``data/`` (BEIR JSONL, qrels, runs, TSV collections, training files)
is opened by ``open_binary`` (which alone decides whether a file is gzipped), split by
``numbered_lines`` and decoded by ``decode_line``, so they all agree on line numbers, byte
offsets, UTF-8, a byte-order mark and blank lines. ``json_value`` and ``record_id`` are the
field-level rules shared by the JSON formats. Problems are ``ValueError``s naming the problem
only; callers add the file and the line (``DataFormatError``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from typing import IO

from colbert_lightning.data.errors import DataFormatError

GZIP_SUFFIX = ".gz"
_UTF8_BOM = b"\xef\xbb\xbf"


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


def numbered_lines(file: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line_number, byte_offset, line)`` for each line of a binary file.

    Line numbers are 1-based. Blank lines at the very end of the file (an editor's trailing
    newlines) are left out; blank lines anywhere else are yielded for the caller to reject.
    """
    offset = 0
    trailing_blanks: list[tuple[int, int, bytes]] = []
    for line_number, line in enumerate(file, start=1):
        if line.strip():
            yield from trailing_blanks
            trailing_blanks.clear()
            yield line_number, offset, line
        else:
            trailing_blanks.append((line_number, offset, line))
        offset += len(line)


def decode_line(line: bytes, first: bool) -> str:
    """The text of one line, without its line ending (and a UTF-8 BOM, if ``first``).

    Args:
        line: the line's bytes, line ending included.
        first: whether the line starts the file (byte offset 0), the only place a BOM may be.

    Raises:
        ValueError: the line is not valid UTF-8 or is blank; the message names the problem.
    """
    line = line.rstrip(b"\r\n")
    if first and line.startswith(_UTF8_BOM):
        line = line[len(_UTF8_BOM) :]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"invalid UTF-8 at byte {error.start} of the line") from None
    if not text.strip():
        raise ValueError("empty line")
    return text


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a (maybe gzipped) text file, 1-based.

    For files read whole, with no policy for bad lines: the first one stops the read.

    Raises:
        DataFormatError: a line that is not valid UTF-8, or a blank line before the end.
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
        ValueError: ``bad JSON: ...``, with the decoder's reason and column.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
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
