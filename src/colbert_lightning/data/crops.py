"""Label-free training examples: random crops of a corpus's documents (``format: crops``).

Contriever's independent cropping (Izacard et al., 2022): each document of a corpus gives one
example per pass, its query a random span of the document and its positive another span drawn
independently (or, with ``positive: document``, the whole document). A span's length is a ratio
of the document's words drawn uniformly from ``[min_ratio, max_ratio]`` (at least ``min_words``,
at most the whole document), its start uniform over where it fits. Spans are runs of
whitespace-separated words, so cropping needs no tokenizer. The ``nway - 1`` negatives are
spans (whole documents under ``positive: document``) of other documents of the same file, drawn
at random; the rest of the batch adds its in-batch negatives.

Each line of the file is one document: a BEIR ``corpus.jsonl[.gz]`` record (its title and
text, see ``BeirRecord.titled_text``), or, for any other file, the line itself. A blank line, a
record with neither title nor text, a text the tokenizer keeps nothing of and a document of
fewer than ``min_words`` words are bad lines (``DataFormatError``), raised or counted by
``on_bad_line`` like a training file's; a malformed BEIR record names the field.

Every draw comes from the one random generator the stream derives from ``(seed, pass, line)``
(``TripleStream``), so an example is the same in every run and every sharding, and changes from
pass to pass. The negatives are read back from the file through an index of the documents'
byte offsets (16 bytes per document; a gzip file is decompressed once into a temporary copy),
so the corpus is never held in memory.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import weakref
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm.auto import tqdm

from colbert_lightning.data.beir import parse_beir_record
from colbert_lightning.data.corpora import is_beir_corpus
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.lines import (
    GZIP_SUFFIX,
    decode_line,
    is_gzipped,
    named_gzip_errors,
    numbered_lines,
    open_binary,
)
from colbert_lightning.data.types import TrainingExample

CROPS_FORMAT = "crops"
POSITIVES = ("span", "document")
_PROGRESS_MIN_BYTES = 50 * 2**20


@dataclass(frozen=True)
class CropSpec:
    """How documents are cropped into examples (``data.crops``).

    Attributes:
        min_ratio: shortest span, as a share of the document's words.
        max_ratio: longest span, as a share of the document's words.
        min_words: fewest words in a span; shorter documents are bad lines.
        positive: ``span``, an independent span of the query's document, or ``document``, the
            whole document (then the negatives are whole documents too).
    """

    min_ratio: float = 0.1
    max_ratio: float = 0.5
    min_words: int = 5
    positive: str = "span"

    def __post_init__(self) -> None:
        for name in ("min_ratio", "max_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"data.crops.{name} must be a number in (0, 1], got {value!r}")
        if self.min_ratio > self.max_ratio:
            raise ValueError(
                f"data.crops.min_ratio ({self.min_ratio}) is above max_ratio ({self.max_ratio})"
            )
        if isinstance(self.min_words, bool) or not isinstance(self.min_words, int):
            raise ValueError(f"data.crops.min_words must be an integer, got {self.min_words!r}")
        if self.min_words < 1:
            raise ValueError(f"data.crops.min_words must be >= 1, got {self.min_words}")
        if self.positive not in POSITIVES:
            raise ValueError(
                f"data.crops.positive must be one of {POSITIVES}, got {self.positive!r}"
            )


def crop(words: Sequence[str], spec: CropSpec, generator: random.Random) -> str:
    """A random run of ``words``, joined by spaces; its length a uniform ratio of theirs.

    The length is ``round(ratio * len(words))`` for ``ratio`` uniform in
    ``[spec.min_ratio, spec.max_ratio]``, raised to ``spec.min_words`` and capped at
    ``len(words)``; the start is uniform over the places where it fits.

    >>> words = "shock waves in a supersonic flow over a thin wing".split()
    >>> span = crop(words, CropSpec(min_ratio=0.3, max_ratio=0.3, min_words=1), random.Random(0))
    >>> len(span.split()), span in " ".join(words)
    (3, True)
    """
    ratio = generator.uniform(spec.min_ratio, spec.max_ratio)
    length = min(len(words), max(spec.min_words, round(ratio * len(words))))
    start = generator.randrange(len(words) - length + 1)
    return " ".join(words[start : start + length])


class CropReader:
    """Reads a corpus for ``format: crops``: each line a document, cropped afresh each pass.

    ``parse`` checks a line and returns its document as an example without negatives (the
    whole document as query and positive), which is what makes a line valid; ``draw`` makes
    the pass's example of it with the stream's generator. Building the reader reads the file
    once to index its documents.

    The reader pickles without its file handle, which each process reopens on first use, so it
    can go to DataLoader workers.

    Args:
        path: the corpus: a BEIR ``*.jsonl[.gz]``, or any other file with one document a line.
        spec: the cropping.
        min_negatives: negatives each example needs (``nway - 1``); the file must hold at
            least one more document than that.
        is_empty: the tokenizer's test of a text that gives no token, or None.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file has fewer than ``min_negatives + 1`` documents.
        DataFormatError: a gzip file that cannot be decompressed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        spec: CropSpec,
        min_negatives: int = 1,
        is_empty: Callable[[str], bool] | None = None,
    ) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such corpus file: {path}")
        self.path = str(path)
        self.spec = spec
        self.min_negatives = min_negatives
        self.is_empty = is_empty
        self.beir = is_beir_corpus(path)
        self._file: IO[bytes] | None = None
        self._pid: int | None = None
        self._data_path = self._seekable_copy() if is_gzipped(self.path) else self.path
        self._line_numbers, self._offsets = self._index()
        if len(self) < min_negatives + 1:
            raise ValueError(
                f"{self.path} has {len(self)} documents to crop; each example needs "
                f"{min_negatives} negatives from other documents (nway={min_negatives + 1}), "
                f"so at least {min_negatives + 1} are needed"
            )

    def __len__(self) -> int:
        """Number of documents (valid lines)."""
        return len(self._line_numbers)

    def parse(self, line: bytes, line_number: int) -> TrainingExample:
        """The document on one line, whole, as query and positive; no negatives.

        Raises:
            DataFormatError: a bad line (see the module's docstring), naming file and line.
        """
        document_id, text = self._document(line, line_number)
        return TrainingExample(
            text, text, (), source=f"{self.path}:{line_number}", positive_id=document_id
        )

    def draw(
        self,
        document: TrainingExample,
        line_number: int,
        generator: random.Random,
        negatives: int,
    ) -> TrainingExample:
        """The example of a parsed document for one pass: crops drawn with ``generator``.

        Args:
            document: what ``parse`` returned for line ``line_number``.
            line_number: the document's line.
            generator: the stream's generator of ``(seed, pass, line)``.
            negatives: how many negatives to draw, each of a distinct other document.

        Raises:
            RuntimeError: the file changed after it was indexed.
        """
        words = document.positive.split()
        query = crop(words, self.spec, generator)
        whole = self.spec.positive == "document"
        positive = document.positive if whole else crop(words, self.spec, generator)
        own = int(np.searchsorted(self._line_numbers, line_number))
        if own == len(self) or self._line_numbers[own] != line_number:
            raise self._changed(f"line {line_number} is not an indexed document")
        # positions among the other documents, shifted past this one
        others = [p + (p >= own) for p in generator.sample(range(len(self) - 1), negatives)]
        negative_ids, negative_texts = [], []
        for position in others:
            document_id, text = self._read(position)
            negative_ids.append(document_id)
            negative_texts.append(text if whole else crop(text.split(), self.spec, generator))
        return TrainingExample(
            query,
            positive,
            tuple(negative_texts),
            source=document.source,
            positive_id=document.positive_id,
            negative_ids=tuple(negative_ids),
        )

    def close(self) -> None:
        """Close this process's file handle; the next draw reopens it."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        state.pop("_finalizer", None)  # pickled copies do not own the temporary copy
        return state

    def __repr__(self) -> str:
        return f"CropReader({self.path!r}, {self.spec}, {len(self)} documents)"

    def _document(self, line: bytes, line_number: int) -> tuple[str, str]:
        """``(id, text)`` of a line's document: a BEIR record's id, else the line number."""
        try:
            text = decode_line(line, first=line_number == 1)
            if self.beir:
                record = parse_beir_record(text)
                document_id, text = record.id, record.titled_text
            else:
                document_id = str(line_number)
        except ValueError as error:
            raise DataFormatError(self.path, line_number, str(error)) from None
        if not text.strip():
            raise DataFormatError(self.path, line_number, "empty document: no title or text")
        if self.is_empty is not None and self.is_empty(text):
            problem = "the document gives no token (only characters the tokenizer drops)"
            raise DataFormatError(self.path, line_number, problem)
        words = len(text.split())
        if words < self.spec.min_words:
            problem = (
                f"document too short to crop: {words} words, fewer than "
                f"data.crops.min_words={self.spec.min_words}"
            )
            raise DataFormatError(self.path, line_number, problem)
        return document_id, text

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """Line numbers and byte offsets of the documents, in file order; bad lines left out."""
        line_numbers, offsets = array("q"), array("q")
        size = os.path.getsize(self._data_path)
        with (
            open(self._data_path, "rb") as file,
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc=f"indexing {Path(self.path).name}",
                disable=size < _PROGRESS_MIN_BYTES,
            ) as progress,
        ):
            for line_number, offset, line in numbered_lines(file):
                if offset - progress.n >= 2**22:
                    progress.update(offset - progress.n)
                try:
                    self._document(line, line_number)
                except DataFormatError:
                    continue  # reported by the stream, under its policy
                line_numbers.append(line_number)
                offsets.append(offset)
            progress.update(size - progress.n)
        return np.array(line_numbers, dtype=np.int64), np.array(offsets, dtype=np.int64)

    def _read(self, position: int) -> tuple[str, str]:
        """``(id, text)`` of the document at ``position`` of the index, read back from disk."""
        if self._file is None or self._pid != os.getpid():
            self._file = open(self._data_path, "rb")
            self._pid = os.getpid()
        line_number = int(self._line_numbers[position])
        self._file.seek(int(self._offsets[position]))
        try:
            return self._document(self._file.readline(), line_number)
        except DataFormatError as error:
            raise self._changed(f"line {line_number} is bad: {error.problem}") from None

    def _changed(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{self.path} changed after it was indexed ({what}); restart to read it again"
        )

    def _seekable_copy(self) -> str:
        """A decompressed copy of the gzip file, removed with this reader (seeking gzip is slow)."""
        folder = Path(tempfile.mkdtemp(prefix="colbert-crops-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        target = folder / Path(self.path).name[: -len(GZIP_SUFFIX)]
        with (
            named_gzip_errors(self.path, remove=target),
            open_binary(self.path) as compressed,
            open(target, "wb") as plain,
        ):
            shutil.copyfileobj(compressed, plain, 2**22)
        return str(target)
