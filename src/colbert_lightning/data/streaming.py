"""A sharded, shuffled stream of training examples read line by line from a file.

The file is read once up front (``scan_lines``) to learn which lines hold a valid example, kept
as one bit per line. Every DataLoader worker of every rank then reads the file in order but
parses only its own shard of the valid lines (the ``v``-th valid line goes to shard
``v % num_shards``), so across all of them each valid line is used exactly once per pass, every
shard gets its share whatever the pattern of bad lines, and the file is never held in memory.
Each bad line is reported by one shard, the one its line number falls to
(``(line - 1) % num_shards``). A bounded shuffle buffer mixes the order; batches are
consecutive examples of that order or, with ``length_grouping`` (off by default), examples of
similar length taken from a pool of consecutive ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from colbert_lightning.data.collate import TextCap
from colbert_lightning.data.crops import CropReader
from colbert_lightning.data.errors import BadLines, DataFormatError, OnBadLine
from colbert_lightning.data.lines import is_gzipped, numbered_lines, open_binary
from colbert_lightning.data.readers import TripleReader, require_negatives
from colbert_lightning.data.types import TrainingBatch, TrainingExample


def check_nway(nway: object) -> None:
    """The one check of ``nway``, by ``ColBERTDataModule`` (the config) and ``TripleStream``.

    At least 2, a positive and a hard negative per query: with ``nway=1`` there would be no
    hard negatives and the n-way loss would be a constant 0.

    Raises:
        ValueError: ``nway`` is not an integer >= 2.
    """
    if isinstance(nway, bool) or not isinstance(nway, int) or nway < 2:
        raise ValueError(
            f"data.nway must be an integer >= 2 (a positive and a negative), got {nway!r}"
        )


def parse_example(
    reader: TripleReader, line: bytes, line_number: int, nway: int
) -> TrainingExample:
    """The example on one line, with all its negatives; what makes a line valid for ``nway``.

    A ``CropReader``'s line is a document, without negatives: they are drawn each pass from
    the file's other documents (``CropReader.draw``), of which it checked there are enough.

    Raises:
        DataFormatError: the reader rejects the line, or it has fewer than ``nway - 1`` negatives.
    """
    example = reader.parse(line, line_number)
    if isinstance(reader, CropReader):
        return example
    # The reader may accept fewer (its min_negatives is its own); training needs these.
    require_negatives(reader.path, line_number, len(example.negatives), nway - 1)
    return example


def check_length_grouping(length_grouping: object) -> None:
    """The one check of ``length_grouping``, by ``ColBERTDataModule`` and ``TripleStream``.

    Raises:
        ValueError: ``length_grouping`` is not an integer >= 0.
    """
    if (
        isinstance(length_grouping, bool)
        or not isinstance(length_grouping, int)
        or length_grouping < 0
    ):
        raise ValueError(
            "data.length_grouping must be an integer >= 0 (0 or 1: off; N >= 2: batches of "
            f"similar length drawn from pools of N batches), got {length_grouping!r}"
        )


def length_key(example: TrainingExample) -> int:
    """What length grouping sorts by: the characters of the example's longest document.

    The batch's documents are padded to its longest one, positive or negative.

    >>> length_key(TrainingExample("query", "a positive", ("negative", "a longer negative")))
    17
    """
    return max(len(example.positive), *(len(text) for text in example.negatives))


def group_by_length(
    pool: list[TrainingExample], batch_size: int, shuffler: random.Random
) -> list[list[TrainingExample]]:
    """A pool of examples cut into batches of similar length, the batches in shuffled order.

    The pool is sorted by ``length_key`` (a stable sort: equal keys keep the pool's order) and
    cut into batches of ``batch_size`` from the shortest; the full batches are shuffled by
    ``shuffler``, and a smaller batch (the longest examples of a pool that does not fill its
    batches) stays last, as a finite stream's last batch.

    >>> pool = [TrainingExample(str(n), "p" * n, ("n",)) for n in (5, 1, 4, 2, 3)]
    >>> batches = group_by_length(pool, 2, random.Random(1))
    >>> [[example.query for example in batch] for batch in batches]
    [['3', '4'], ['1', '2'], ['5']]
    """
    ordered = sorted(pool, key=length_key)
    batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
    full = len(ordered) // batch_size
    shuffled = batches[:full]
    shuffler.shuffle(shuffled)
    return shuffled + batches[full:]


@dataclass(frozen=True)
class ValidLines:
    """Which lines of a training file hold a valid example: one bit per line (40M lines: 5 MB).

    Attributes:
        path: the training file.
        lines: its number of lines (blank lines at its very end are not lines).
        valid: how many of them hold a valid example.
        first_error: the first bad line's error, or None when every line is valid.
        bits: bit ``(n - 1) % 8`` of byte ``(n - 1) // 8`` is set when line ``n`` is valid.
    """

    path: str
    lines: int
    valid: int
    first_error: DataFormatError | None = None
    bits: bytes = field(default=b"", repr=False)

    def __contains__(self, line_number: object) -> bool:
        if not isinstance(line_number, int) or not 1 <= line_number <= self.lines:
            return False
        index = line_number - 1
        return bool(self.bits[index >> 3] >> (index & 7) & 1)

    @property
    def bad(self) -> int:
        """Number of bad lines."""
        return self.lines - self.valid


_PROGRESS_STEP_BYTES = 2**22


def scan_lines(
    reader: TripleReader,
    nway: int,
    bad_lines: BadLines | None = None,
    on_example: Callable[[TrainingExample], object] | None = None,
    description: str | None = None,
) -> ValidLines:
    """Read every line of the reader's file once and record which hold a valid example.

    Args:
        reader: parses each line (its ``path`` is the file read).
        nway: documents per query; a line needs ``nway - 1`` negatives to be valid.
        bad_lines: what to do with a bad line (``error`` raises the first); ``None`` counts
            them in a tally of its own and goes on.
        on_example: called with each valid line's example (all its negatives), in file order.
        description: label of a progress bar (bytes read), or ``None`` for no bar.

    Raises:
        DataFormatError: a bad line, under the ``error`` policy of ``bad_lines``.
    """
    bad_lines = BadLines("skip") if bad_lines is None else bad_lines
    bits = bytearray()
    lines = valid = 0
    first_error: DataFormatError | None = None
    size = None if is_gzipped(reader.path) else os.path.getsize(reader.path)
    with (
        open_binary(reader.path) as file,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=description,
            disable=description is None,
        ) as progress,
    ):
        unreported = 0
        for line_number, _, line in numbered_lines(file):
            index = line_number - 1
            while len(bits) <= index >> 3:
                bits.append(0)
            lines = line_number
            unreported += len(line)
            if unreported >= _PROGRESS_STEP_BYTES:
                progress.update(unreported)
                unreported = 0
            try:
                example = parse_example(reader, line, line_number, nway)
            except DataFormatError as error:
                first_error = first_error or error
                bad_lines.handle(error)
                continue
            bits[index >> 3] |= 1 << (index & 7)
            valid += 1
            if on_example is not None:
                on_example(example)
        progress.update(unreported)
    return ValidLines(reader.path, lines, valid, first_error, bytes(bits))


class TripleStream(IterableDataset):
    """Streams ``TrainingExample``s (or collated ``TrainingBatch``es) from a training file.

    Use it with ``DataLoader(stream, batch_size=None)``: the stream does its own batching so that
    each batch can carry the number of bad lines its worker skipped since its previous batch.

    Each example keeps exactly ``nway - 1`` negatives, sampled from its line's negatives with a
    seed derived from ``(seed, pass, line)`` (their ids and teacher scores, when the line has
    them, follow the same choice); a ``CropReader``'s example is drawn whole (crops
    and negatives) with that seed's generator. The shuffle buffer's random generator is seeded by
    ``(seed, pass, shard)``, so a run is reproducible for a fixed world size and worker count.

    Every shard checks the whole file's ``valid_lines`` before it yields anything, so all shards
    (all DDP processes) stop alike, at the same point, on a file with no valid line, with fewer
    valid lines than shards, or (under ``on_bad_line=error``) with any bad line.

    Args:
        path: the training file (may be ``.gz``); the same file the reader names in its errors.
        reader: parses one line of the training file.
        nway: documents per query: the positive and ``nway - 1`` negatives (see ``check_nway``).
        seed: seeds the shuffle and the choice of negatives.
        shuffle_buffer: examples held for shuffling; ``<= 1`` keeps file order.
        on_bad_line: ``error`` raises on a bad line; ``skip`` counts it and goes on.
        max_passes: full reads of the file before the stream ends; ``None`` never ends.
        rank: this process's rank in distributed training.
        world_size: number of distributed processes.
        batch_size: examples per batch; used only with ``collate``.
        collate: turns a list of examples into a batch; ``None`` yields examples one by one.
            In endless mode batches run across pass boundaries; in finite mode the last batch
            may be smaller.
        skip_batches: batches this process already trained on (from a checkpoint). The
            DataLoader takes batches from its workers in turn, so each worker continues the
            shard of the interrupted run's worker whose batch comes next in its turn, and skips
            that worker's batches below ``skip_batches``: the resumed stream continues exactly
            where the interrupted one stopped, without tokenising the skipped examples again
            (with ``length_grouping``, a partly trained pool is read and grouped again, and its
            trained batches dropped before they are collated).
        valid_lines: the file's ``scan_lines``; ``None`` scans it here, once.
        cap: shortens texts far longer than the model keeps as they are read (see ``TextCap``);
            ``None`` keeps them whole.
        length_grouping: 0 (the default) or 1: off, batches are consecutive examples of the
            shuffled stream. ``N >= 2``: each worker takes ``N * batch_size`` consecutive
            examples of its shuffled stream (a pool), sorts them by the length of their longest
            document (``length_key``), cuts them into ``N`` batches and yields those in an order
            shuffled with a seed of ``(seed, shard, pool)`` (see ``group_by_length``), so each
            batch pads less. The examples of a pass are unchanged, but a batch is no longer a
            random draw from the shuffle buffer: its documents have similar lengths, so its
            in-batch negatives are correlated with length (harder or easier than random ones),
            and the batches of a pool are drawn from only ``N * batch_size`` examples. It saves
            padding only where many documents are shorter than ``doc_maxlen`` (longer ones are
            cut to it). Off by default until it is measured to train as well. Used only with
            ``collate``.

    Attributes:
        bad_lines: the skipped-line tally of the current iteration, in this process (each
            DataLoader worker keeps its own).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        reader: TripleReader,
        nway: int,
        seed: int,
        shuffle_buffer: int,
        on_bad_line: OnBadLine = "error",
        max_passes: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        collate: Callable[[list[TrainingExample]], TrainingBatch] | None = None,
        skip_batches: int = 0,
        valid_lines: ValidLines | None = None,
        cap: TextCap | None = None,
        length_grouping: int = 0,
    ) -> None:
        super().__init__()
        if os.path.abspath(path) != os.path.abspath(reader.path):
            raise ValueError(f"the stream reads {path} but its reader names {reader.path}")
        check_nway(nway)
        if max_passes is not None and max_passes < 1:
            raise ValueError(f"max_passes must be >= 1 or None (endless), got {max_passes}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank} and {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if skip_batches < 0:
            raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
        check_length_grouping(length_grouping)
        self.bad_lines = BadLines(on_bad_line)  # also validates the policy
        if valid_lines is None:
            valid_lines = scan_lines(reader, nway)
        elif os.path.abspath(valid_lines.path) != os.path.abspath(path):
            raise ValueError(f"the stream reads {path} but valid_lines are of {valid_lines.path}")
        self.reader = reader
        self.path = str(path)
        self.nway = nway
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.on_bad_line = on_bad_line
        self.max_passes = max_passes
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.collate = collate
        self.skip_batches = skip_batches
        self.valid_lines = valid_lines
        self.cap = cap
        self.length_grouping = length_grouping

    def check(self, num_shards: int) -> None:
        """Raise what every shard would: the whole file's verdict, the same in every process.

        Raises:
            DataFormatError: the first bad line, under ``on_bad_line=error``.
            ValueError: the file is empty, has no valid line, or fewer valid lines than shards.
        """
        valid = self.valid_lines
        if valid.lines == 0:
            raise ValueError(f"the training file {self.path} is empty")
        if valid.first_error is not None and self.on_bad_line == "error":
            raise valid.first_error
        if valid.valid == 0:
            raise ValueError(
                f"none of the {valid.lines} lines of {self.path} is a valid example "
                f"({valid.bad} bad lines skipped)"
            )
        if valid.valid < num_shards:
            raise ValueError(
                f"the training file {self.path} has {valid.valid} valid lines (of {valid.lines}), "
                f"fewer than the {num_shards} shards (world_size x num_workers); use fewer "
                "workers or more data"
            )

    def __iter__(self) -> Iterator[TrainingExample] | Iterator[TrainingBatch]:
        num_workers, role = self._worker_role()
        num_shards = self.world_size * num_workers
        shard = self.rank * num_workers + role
        # Before anything is yielded: an endless stream with nothing to yield would spin forever.
        self.check(num_shards)
        self.bad_lines = BadLines(self.on_bad_line)
        examples = self._examples(shard, num_shards)
        if self.collate is None:
            return examples
        return self._batches(examples, shard)

    def _worker_role(self) -> tuple[int, int]:
        """``(num_workers, role)``: which worker of the interrupted run this one continues.

        A DataLoader takes batches from its workers in turn, always starting with worker 0, so
        batch ``b`` came from worker ``b % W``. Resumed after ``skip_batches`` batches, worker
        ``w`` serves batches ``skip_batches + w, skip_batches + w + W, ...``: those of the
        interrupted run's worker ``(w + skip_batches) % W``, whose shard it reads.
        """
        worker = get_worker_info()
        if worker is None:
            return 1, 0
        return worker.num_workers, (worker.id + self.skip_batches) % worker.num_workers

    def _examples(self, shard: int, num_shards: int) -> Iterator[TrainingExample]:
        pass_index = 0
        while self.max_passes is None or pass_index < self.max_passes:
            yield from self._one_pass(pass_index, shard, num_shards)
            pass_index += 1

    def _one_pass(self, pass_index: int, shard: int, num_shards: int) -> Iterator[TrainingExample]:
        # A string seed is hashed with SHA-512, the same in every process (unlike hash()).
        shuffler = random.Random(f"shuffle:{self.seed}:{pass_index}:{shard}")
        buffer: list[TrainingExample] = []
        valid_lines = self.valid_lines
        lines = valid_so_far = 0
        with open_binary(self.path) as file:
            for line_number, _, line in numbered_lines(file):
                lines = line_number
                if line_number not in valid_lines:
                    # Later passes meet the same bad lines again: count (or raise) them once.
                    if pass_index == 0 and (line_number - 1) % num_shards == shard:
                        self._bad_line(line, line_number)
                    continue
                valid_so_far += 1
                if (valid_so_far - 1) % num_shards != shard:
                    continue
                example = self._example(line, line_number, pass_index)
                if self.shuffle_buffer <= 1:
                    yield example
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(example)
                else:
                    slot = shuffler.randrange(len(buffer))
                    yield buffer[slot]
                    buffer[slot] = example
        if (lines, valid_so_far) != (valid_lines.lines, valid_lines.valid):
            raise self._changed(f"{lines} lines, {valid_so_far} valid")
        shuffler.shuffle(buffer)
        yield from buffer

    def _changed(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{self.path} changed after it was scanned ({self.valid_lines.lines} lines, "
            f"{self.valid_lines.valid} valid; now {what}); restart to read it again"
        )

    def _bad_line(self, line: bytes, line_number: int) -> None:
        """Count (or raise) the problem of a line the scan found bad."""
        try:
            parse_example(self.reader, line, line_number, self.nway)
        except DataFormatError as error:
            self.bad_lines.handle(error)
            return
        raise self._changed(f"line {line_number} is valid")

    def _example(self, line: bytes, line_number: int, pass_index: int) -> TrainingExample:
        """The valid line's example with ``nway - 1`` sampled (or drawn) negatives, texts capped."""
        needed = self.nway - 1
        try:
            example = parse_example(self.reader, line, line_number, self.nway)
        except DataFormatError as error:
            raise self._changed(f"line {line_number} is bad: {error.problem}") from None
        chooser = random.Random(f"negatives:{self.seed}:{pass_index}:{line_number}")
        if isinstance(self.reader, CropReader):
            example = self.reader.draw(example, line_number, chooser, needed)
            chosen = range(needed)
        else:
            # sampling positions draws exactly what sampling the texts would
            chosen = chooser.sample(range(len(example.negatives)), needed)
        negatives = tuple(example.negatives[i] for i in chosen)
        negative_ids, scores = example.negative_ids, example.scores
        query, positive = example.query, example.positive
        if self.cap is not None:
            query, positive = self.cap.query(query), self.cap.document(positive)
            negatives = tuple(self.cap.document(text) for text in negatives)
        return dataclasses.replace(
            example,
            query=query,
            positive=positive,
            negatives=negatives,
            negative_ids=None if negative_ids is None else tuple(negative_ids[i] for i in chosen),
            # the positive's score, then those of the chosen negatives (crops have none)
            scores=None if scores is None else (scores[0], *(scores[1 + i] for i in chosen)),
        )

    def _batches(self, examples: Iterator[TrainingExample], shard: int) -> Iterator[TrainingBatch]:
        assert self.collate is not None
        num_workers, role = self._worker_role()
        # Batches r, r + W, r + 2W, ... of the interrupted run came from its worker r.
        already_trained = max(0, (self.skip_batches - role + num_workers - 1) // num_workers)
        # Without grouping a pool is one batch, taken in stream order.
        grouping = self.length_grouping >= 2
        pool_batches = self.length_grouping if grouping else 1
        pool_size = pool_batches * self.batch_size
        pool_index, trained_in_pool = divmod(already_trained, pool_batches)
        # Whole pools already trained: their examples are passed over, never collated.
        for _ in range(pool_index * pool_size):
            if next(examples, None) is None:
                return
        # Bad lines met while fast-forwarding were reported by the interrupted run.
        reported = self.bad_lines.total
        while pool := list(itertools.islice(examples, pool_size)):
            batches = [pool]
            if grouping:
                # A string seed is hashed with SHA-512, the same in every process.
                shuffler = random.Random(f"length-groups:{self.seed}:{shard}:{pool_index}")
                batches = group_by_length(pool, self.batch_size, shuffler)
            if trained_in_pool:
                # The pool's bad lines went with its first batch, already trained.
                batches, reported = batches[trained_in_pool:], self.bad_lines.total
                trained_in_pool = 0
            for batch in batches:
                collated = self.collate(batch)
                skipped, reported = self.bad_lines.total - reported, self.bad_lines.total
                yield dataclasses.replace(collated, skipped_lines=skipped)
            pool_index += 1
