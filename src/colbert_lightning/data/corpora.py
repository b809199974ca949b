r"""Raw text of corpora, streamed: what the label-free stages (vocabulary, MLM, crops) read.

A corpus is named by a path to one of:

- a BEIR folder: its ``corpus.jsonl[.gz]`` is read;
- a BEIR ``corpus.jsonl[.gz]`` file: each record's title and text (``BeirRecord.titled_text``);
- any other file (``.txt``, ``.txt.gz``, ...): one document per line.

Documents are numbered across all the corpora in order, and shard ``s`` of ``n`` holds the
documents whose number ``i`` has ``i % n == s``: every document in exactly one shard, whatever
the files' sizes. Nothing is held in memory but the current line.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "notes.txt").write_text("lift and drag\n\nshock waves\n")
>>> [(t.line_number, t.text) for t in iter_corpus_texts([folder / "notes.txt"])]
[(1, 'lift and drag'), (3, 'shock waves')]
>>> [t.text for t in iter_corpus_texts([folder / "notes.txt"], shard=1, num_shards=2)]
['shock waves']
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from colbert_lightning.data.beir import find_beir_file, parse_beir_record
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.lines import decode_line, numbered_lines, open_binary

_BEIR_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class CorpusText:
    """One document of a corpus.

    Attributes:
        path: the file it was read from.
        line_number: its 1-based line in that file.
        index: its number across all the corpora read, from 0 (the sharding key).
        text: the document (a BEIR record's title and text); never blank.
    """

    path: str
    line_number: int
    index: int
    text: str


def corpus_files(corpora: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The file each corpus names: a BEIR folder's ``corpus.jsonl[.gz]``, or the file itself.

    Raises:
        ValueError: no corpus is named.
        FileNotFoundError: a path that does not exist, or a folder without a BEIR corpus.
    """
    if isinstance(corpora, (str, os.PathLike)):
        corpora = [corpora]
    if not corpora:
        raise ValueError("no corpus given: name at least one BEIR folder or text file")
    files = []
    for corpus in corpora:
        path = Path(corpus)
        if path.is_dir():
            files.append(find_beir_file(path, "corpus"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such corpus: {path} (a BEIR folder or a text file)")
    return files


def is_beir_corpus(path: str | os.PathLike) -> bool:
    """Whether the file holds BEIR JSON records (by its name: ``*.jsonl`` or ``*.jsonl.gz``).

    >>> is_beir_corpus("scifact/corpus.jsonl.gz"), is_beir_corpus("notes.txt")
    (True, False)
    """
    return os.fspath(path).lower().endswith(_BEIR_SUFFIXES)


def iter_corpus_texts(
    corpora: str | os.PathLike | Sequence[str | os.PathLike],
    shard: int = 0,
    num_shards: int = 1,
) -> Iterator[CorpusText]:
    """Yield the documents of ``corpora`` in shard ``shard`` of ``num_shards``, in file order.

    Blank lines and BEIR records with neither title nor text are not documents: they are
    skipped, and take no number.

    Raises:
        ValueError: ``shard`` is not in ``[0, num_shards)``.
        DataFormatError: a line that cannot be decoded, or a malformed BEIR record, with the
            file, the line and the problem.
    """
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= shard < num_shards, got {shard} and {num_shards}")
    index = 0
    for path in corpus_files(corpora):
        beir = is_beir_corpus(path)
        with open_binary(path) as file:
            for line_number, _, line in numbered_lines(file):
                if not line.strip():
                    continue
                try:
                    text = decode_line(line, first=line_number == 1)
                    if beir:
                        text = parse_beir_record(text).titled_text
                except ValueError as error:
                    raise DataFormatError(str(path), line_number, str(error)) from None
                text = text.strip()
                if not text:
                    continue
                if index % num_shards == shard:
                    yield CorpusText(str(path), line_number, index, text)
                index += 1
