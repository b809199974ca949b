"""A sharded, shuffled stream of training examples read line by line from a file.

Every DataLoader worker of every rank reads the file in order but parses only the lines of its
own shard (``line_index % num_shards == shard``), so across all of them each line is used exactly
once per pass and the file is never held in memory. A bounded shuffle buffer mixes the order.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator

from torch.utils.data import IterableDataset, get_worker_info

from colbert_lightning.data.errors import BadLines, DataFormatError, OnBadLine
from colbert_lightning.data.lines import numbered_lines, open_binary
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


class TripleStream(IterableDataset):
    """Streams ``TrainingExample``s (or collated ``TrainingBatch``es) from a training file.

    Use it with ``DataLoader(stream, batch_size=None)``: the stream does its own batching so that
    each batch can carry the number of bad lines its worker skipped since its previous batch.

    Each example keeps exactly ``nway - 1`` negatives, sampled from its line's negatives with a
    seed derived from ``(seed, pass, line)``. The shuffle buffer's random generator is seeded by
    ``(seed, pass, shard)``, so a run is reproducible for a fixed world size and worker count.

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
            DataLoader takes batches from its workers in turn, so worker ``w`` of ``W`` skips
            the batches numbered ``w, w + W, ...`` below ``skip_batches``: the resumed stream
            continues exactly where the interrupted one stopped, without tokenising the skipped
            examples again.

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
        self.bad_lines = BadLines(on_bad_line)  # also validates the policy

    def __iter__(self) -> Iterator[TrainingExample] | Iterator[TrainingBatch]:
        worker = get_worker_info()
        num_workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        num_shards = self.world_size * num_workers
        shard = self.rank * num_workers + worker_id
        self.bad_lines = BadLines(self.on_bad_line)
        examples = self._examples(shard, num_shards)
        if self.collate is None:
            return examples
        return self._batches(examples)

    def _examples(self, shard: int, num_shards: int) -> Iterator[TrainingExample]:
        pass_index = 0
        while self.max_passes is None or pass_index < self.max_passes:
            yield from self._one_pass(pass_index, shard, num_shards)
            pass_index += 1

    def _one_pass(self, pass_index: int, shard: int, num_shards: int) -> Iterator[TrainingExample]:
        # A string seed is hashed with SHA-512, the same in every process (unlike hash()).
        shuffler = random.Random(f"shuffle:{self.seed}:{pass_index}:{shard}")
        buffer: list[TrainingExample] = []
        lines_in_file = lines_in_shard = valid_in_shard = 0
        with open_binary(self.path) as file:
            for line_number, _, line in numbered_lines(file):
                lines_in_file += 1
                if (line_number - 1) % num_shards != shard:
                    continue
                lines_in_shard += 1
                example = self._parse(line, line_number, pass_index)
                if example is None:
                    continue
                valid_in_shard += 1
                if self.shuffle_buffer <= 1:
                    yield example
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(example)
                else:
                    slot = shuffler.randrange(len(buffer))
                    yield buffer[slot]
                    buffer[slot] = example
        shuffler.shuffle(buffer)
        yield from buffer
        # An endless stream would otherwise spin forever without yielding.
        if lines_in_file == 0:
            raise ValueError(f"the training file {self.path} is empty")
        if lines_in_shard == 0:
            raise ValueError(
                f"the training file {self.path} has {lines_in_file} lines, fewer than the "
                f"{num_shards} shards (world_size x num_workers); use fewer workers or more data"
            )
        if valid_in_shard == 0:
            raise ValueError(
                f"none of the {lines_in_shard} lines of {self.path} in shard {shard} of "
                f"{num_shards} is a valid example ({self.bad_lines.total} bad lines skipped)"
            )

    def _parse(self, line: bytes, line_number: int, pass_index: int) -> TrainingExample | None:
        """The line's example with ``nway - 1`` sampled negatives, or ``None`` if skipped."""
        needed = self.nway - 1
        try:
            example = self.reader.parse(line, line_number)
            # The reader may accept fewer (its min_negatives is its own); this stream needs these.
            require_negatives(self.path, line_number, len(example.negatives), needed)
        except DataFormatError as error:
            # Later passes meet the same bad lines again: count (or raise) them once.
            if pass_index == 0:
                self.bad_lines.handle(error)
            return None
        chooser = random.Random(f"negatives:{self.seed}:{pass_index}:{line_number}")
        # sampling positions draws exactly what sampling the texts would
        chosen = chooser.sample(range(len(example.negatives)), needed)
        negative_ids = example.negative_ids
        return dataclasses.replace(
            example,
            negatives=tuple(example.negatives[i] for i in chosen),
            negative_ids=None if negative_ids is None else tuple(negative_ids[i] for i in chosen),
        )

    def _batches(self, examples: Iterator[TrainingExample]) -> Iterator[TrainingBatch]:
        assert self.collate is not None
        worker = get_worker_info()
        num_workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        # Batches w, w + W, w + 2W, ... of this process come from worker w.
        already_trained = max(0, (self.skip_batches - worker_id + num_workers - 1) // num_workers)
        for _ in range(already_trained * self.batch_size):
            if next(examples, None) is None:
                return
        # Bad lines met while fast-forwarding were reported by the interrupted run.
        reported = self.bad_lines.total
        batch: list[TrainingExample] = []
        for example in examples:
            batch.append(example)
            if len(batch) == self.batch_size:
                collated = self.collate(batch)
                skipped, reported = self.bad_lines.total - reported, self.bad_lines.total
                yield dataclasses.replace(collated, skipped_lines=skipped)
                batch = []
        if batch:
            collated = self.collate(batch)
            yield dataclasses.replace(collated, skipped_lines=self.bad_lines.total - reported)
