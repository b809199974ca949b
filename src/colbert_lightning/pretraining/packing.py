"""The data of masked-language-model pretraining: documents packed into full sequences, masked.

Documents are read with :func:`~colbert_lightning.data.corpora.iter_corpus_texts`, tokenised
without special tokens and concatenated, a ``[SEP]`` between consecutive documents, into one
stream of tokens per shard; the stream is cut into bodies of ``max_length - 2`` tokens, each
wrapped as ``[CLS] body [SEP]``. Every sequence is exactly ``max_length`` tokens (no padding,
no attention mask), and no token is lost between consecutive sequences: a document longer than
a body runs on into the next sequence. A body may start or end with the separator ``[SEP]``.

Masks are drawn when a batch is assembled (dynamic masking: each pass masks a document anew),
by :class:`TokenMasker`, from a generator seeded by the run's seed and the shard.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from colbert_lightning.data.corpora import CorpusText, corpus_files, iter_corpus_texts

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a position that is not predicted (``torch.nn.functional.cross_entropy``'s default)."""
MIN_MAX_LENGTH = 8
"""The shortest sequence allowed: [CLS], [SEP] and a body of six tokens."""
_TOKENIZE_CHUNK = 64  # documents per tokenizer call: batched calls are much faster


def shard_index(rank: int, worker_id: int, world_size: int, num_workers: int) -> tuple[int, int]:
    """``(shard, num_shards)`` of DataLoader worker ``worker_id`` in process ``rank``.

    Example:
        >>> [shard_index(rank, worker, 2, 3)[0] for rank in (0, 1) for worker in (0, 1, 2)]
        [0, 1, 2, 3, 4, 5]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got {rank} and {world_size}")
    if num_workers < 1 or not 0 <= worker_id < num_workers:
        raise ValueError(f"need 0 <= worker_id < num_workers, got {worker_id} and {num_workers}")
    return rank * num_workers + worker_id, world_size * num_workers


def pack_sequences(
    documents: Iterable[Sequence[int]], max_length: int, cls_token_id: int, sep_token_id: int
) -> Iterator[list[int]]:
    """Concatenate documents' token ids, ``[SEP]`` between documents, and cut full sequences.

    Args:
        documents: each document's token ids, without special tokens.
        max_length: the length of every sequence yielded, ``[CLS]`` and ``[SEP]`` included.
        cls_token_id: the id that starts each sequence.
        sep_token_id: the id that ends each sequence and separates documents.

    Yields:
        Lists of exactly ``max_length`` ids. Tokens left over when ``documents`` ends (less
        than one body) are dropped.

    Example (``1`` = [CLS], ``2`` = [SEP]):
        >>> list(pack_sequences([[10, 11, 12], [20], [30, 31, 32, 33]], 6, 1, 2))
        [[1, 10, 11, 12, 2, 2], [1, 20, 2, 30, 31, 2]]
    """
    if max_length < 3:
        raise ValueError(f"max_length must leave room for a body, got {max_length}")
    body = max_length - 2
    pending: list[int] = []
    for number, tokens in enumerate(documents):
        if number:
            pending.append(sep_token_id)
        pending.extend(tokens)
        start = 0
        while len(pending) - start >= body:
            yield [cls_token_id, *pending[start : start + body], sep_token_id]
            start += body
        del pending[:start]


def shuffle_buffered(items: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """``items`` in a random order, holding at most ``buffer_size`` of them (<= 1: in order).

    Example:
        >>> sorted(shuffle_buffered(range(10), 4, random.Random(0))) == list(range(10))
        True
    """
    if buffer_size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def seeded_generator(label: str) -> torch.Generator:
    """A torch generator seeded from a string, the same in every process (unlike ``hash``)."""
    seed = random.Random(label).getrandbits(63)
    return torch.Generator().manual_seed(seed)


@dataclass
class MaskedBatch:
    """Packed sequences, some of their tokens masked, and what the model should predict.

    Attributes:
        input_ids: (B, L) token ids after masking; every sequence is full (no padding).
        labels: (B, L) the original id at each masked position, ``IGNORE_INDEX`` elsewhere.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class TokenMasker:
    """BERT's masking: about ``probability`` of the tokens that are not special are predicted.

    In each sequence ``round(probability * maskable)`` positions (at least one) are chosen
    uniformly among its non-special tokens; of those, 80% become ``[MASK]``, 10% a random
    non-special token and 10% stay as they are. Special tokens ([CLS], [SEP], [PAD], ...) are
    never chosen, and never drawn as the random replacement.

    Args:
        special_token_ids: ids never masked nor drawn as replacements.
        mask_token_id: the ``[MASK]`` id.
        vocab_size: ids are ``0 .. vocab_size - 1``.
        probability: the fraction of maskable tokens to predict, in (0, 1).
    """

    def __init__(
        self,
        special_token_ids: Sequence[int],
        mask_token_id: int,
        vocab_size: int,
        probability: float = 0.15,
    ) -> None:
        if isinstance(probability, bool) or not 0 < probability < 1:
            raise ValueError(f"data.mask_probability must be in (0, 1), got {probability!r}")
        self.special_token_ids = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        self.mask_token_id = mask_token_id
        self.probability = float(probability)
        ordinary = torch.ones(vocab_size, dtype=torch.bool)
        ordinary[self.special_token_ids] = False
        self.replacement_ids = ordinary.nonzero().squeeze(1)  # (V - specials,)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, probability: float = 0.15
    ) -> TokenMasker:
        """The masker of a tokenizer's vocabulary and special tokens."""
        return cls(tokenizer.all_special_ids, tokenizer.mask_token_id, len(tokenizer), probability)

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator) -> MaskedBatch:
        """Mask (B, L) ``input_ids`` (not changed in place) with draws from ``generator``."""
        maskable = ~torch.isin(input_ids, self.special_token_ids)  # (B, L)
        counts = (maskable.sum(dim=1) * self.probability).round().long()  # (B,)
        counts = torch.minimum(counts.clamp(min=1), maskable.sum(dim=1))
        # a random order of each row's maskable positions; the first `count` are chosen
        scores = torch.rand(input_ids.shape, generator=generator)  # (B, L)
        scores = scores.masked_fill(~maskable, 2.0)
        rank = scores.argsort(dim=1).argsort(dim=1)  # (B, L) place of each position in the order
        chosen = rank < counts.unsqueeze(1)  # (B, L)
        action = torch.rand(input_ids.shape, generator=generator)  # (B, L)
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        draws = torch.randint(
            len(self.replacement_ids), input_ids.shape, generator=generator
        )  # (B, L)
        masked = input_ids.masked_fill(to_mask, self.mask_token_id)
        masked = torch.where(to_random, self.replacement_ids[draws], masked)
        labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
        return MaskedBatch(masked, labels)


class PackedCorpusStream(IterableDataset):
    """An endless stream of masked batches of packed sequences from the corpora.

    Use it with ``DataLoader(stream, batch_size=None)``: the stream batches and masks. DataLoader
    worker ``w`` of ``W`` in process ``rank`` of ``world_size`` reads shard
    ``rank * W + w`` of ``world_size * W`` (:func:`shard_index`): the documents whose number
    ``i`` (across the corpora) has ``i % num_shards == shard``, those below ``skip_documents``
    (the held-out validation documents) left out. Each shard reads its documents pass after
    pass, in an order shuffled by a buffer seeded by ``(seed, start_step, pass, shard)``, and
    packs them into one continuous token stream (a pass runs on into the next). Masks come from
    a generator seeded by ``(seed, start_step, shard)``: a run is reproducible for a fixed world
    size and worker count.

    Args:
        corpora: BEIR folders, BEIR corpus files or text files (one document a line).
        tokenizer: the vocabulary; tokenises in the DataLoader workers.
        max_length: tokens per sequence, ``[CLS]`` and ``[SEP]`` included.
        batch_size: sequences per batch.
        masker: draws the masks of each batch.
        seed: seeds the shuffle and the masks.
        shuffle_buffer: documents held for shuffling (<= 1: file order).
        skip_documents: documents numbered below this are not trained on (validation's).
        rank: this process' rank in distributed training.
        world_size: number of distributed processes.
        start_step: the optimiser step the run starts (or resumes) at. A resumed run restarts
            its passes from the beginning of the corpora, shuffled and masked anew: it does not
            replay the order of the interrupted run.
    """

    def __init__(
        self,
        corpora: Sequence[str | os.PathLike],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        batch_size: int,
        masker: TokenMasker,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        skip_documents: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        shard_index(rank, 0, world_size, 1)  # checks rank and world_size
        self.corpora = [str(corpus) for corpus in corpora]
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.masker = masker
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.skip_documents = skip_documents
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    def __iter__(self) -> Iterator[MaskedBatch]:
        worker = get_worker_info()
        num_workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        shard, num_shards = shard_index(self.rank, worker_id, self.world_size, num_workers)
        return self.batches(shard, num_shards)

    def documents(self, shard: int, num_shards: int, pass_index: int) -> Iterator[CorpusText]:
        """The training documents of one shard in one pass, in their shuffled order."""
        texts = (
            text
            for text in iter_corpus_texts(self.corpora, shard, num_shards)
            if text.index >= self.skip_documents
        )
        shuffler = random.Random(f"shuffle:{self.seed}:{self.start_step}:{pass_index}:{shard}")
        return shuffle_buffered(texts, self.shuffle_buffer, shuffler)

    def token_ids(self, shard: int, num_shards: int) -> Iterator[list[int]]:
        """Each document's token ids, pass after pass, without end.

        Raises:
            RuntimeError: the shard holds no document (fewer training documents than shards).
        """
        for pass_index in itertools.count():
            documents = 0
            for chunk in _chunks(self.documents(shard, num_shards, pass_index), _TOKENIZE_CHUNK):
                documents += len(chunk)
                yield from tokenize(self.tokenizer, [text.text for text in chunk])
            if not documents:
                raise RuntimeError(
                    f"shard {shard} of {num_shards} of {self.corpora} holds no training "
                    f"document: the corpora have fewer than {num_shards} documents after the "
                    f"{self.skip_documents} held out for validation"
                )

    def batches(self, shard: int, num_shards: int) -> Iterator[MaskedBatch]:
        """Shard ``shard`` of ``num_shards`` as masked batches, without end."""
        tokenizer = self.tokenizer
        sequences = pack_sequences(
            self.token_ids(shard, num_shards),
            self.max_length,
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
        )
        generator = seeded_generator(f"mask:{self.seed}:{self.start_step}:{shard}")
        for rows in _chunks(sequences, self.batch_size):
            yield self.masker(torch.tensor(rows, dtype=torch.long), generator)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, without special tokens, whatever its length."""
    # verbose=False: documents longer than the model's maximum are expected here (packing cuts
    # them), and the warning about them would be noise
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class PackedCorpusDataModule(pl.LightningDataModule):
    """The corpora as packed, masked sequences for MLM pretraining, and a held-out set.

    The first ``validation_documents`` documents of the corpora (in file order) are held out:
    never trained on (every training shard skips them), they are packed in order and masked
    once, with a fixed seed, so every evaluation scores the same predictions.

    Args:
        corpora: BEIR folders, BEIR corpus files or text files (one document a line).
        tokenizer: the vocabulary (``AutoTokenizer.from_pretrained(folder)``).
        max_length: tokens per sequence, ``[CLS]`` and ``[SEP]`` included (>= 8).
        mask_probability: fraction of the non-special tokens to predict.
        batch_size: sequences per batch, per process (also for validation).
        num_workers: DataLoader worker processes (reading, tokenising, packing, masking).
        shuffle_buffer: documents held for shuffling (<= 1: file order).
        validation_documents: documents held out for validation; 0: no validation.
        seed: seeds the shuffle and the masks.
    """

    def __init__(
        self,
        corpora: Sequence[str | os.PathLike],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 128,
        mask_probability: float = 0.15,
        batch_size: int = 64,
        num_workers: int = 1,
        shuffle_buffer: int = 1000,
        validation_documents: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(corpora, (str, os.PathLike)):
            corpora = [corpora]
        self.corpora = [str(path) for path in corpora]
        corpus_files(self.corpora)  # a missing corpus fails here, before any weight is built
        _check_int("data.max_length", max_length, MIN_MAX_LENGTH)
        _check_int("data.batch_size", batch_size, 1)
        _check_int("data.num_workers", num_workers, 0)
        _check_int("data.shuffle_buffer", shuffle_buffer, 0)
        _check_int("data.validation_documents", validation_documents, 0)
        for name in ("cls_token", "sep_token", "mask_token", "pad_token"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"the tokenizer has no {name}: MLM pretraining needs one")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.masker = TokenMasker.from_tokenizer(tokenizer, mask_probability)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.validation_documents = validation_documents
        self.seed = seed
        self._validation: list[MaskedBatch] | None = None

    def setup(self, stage: str) -> None:
        """Check, in every process alike, that every shard has documents; hold out validation."""
        if stage != "fit":
            return
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        num_shards = world_size * max(1, self.num_workers)
        needed = self.validation_documents + num_shards
        # shard s has a document iff some number >= validation_documents is s modulo num_shards
        found = sum(1 for _ in itertools.islice(iter_corpus_texts(self.corpora), needed))
        if found < needed:
            raise ValueError(
                f"{self.corpora} hold {found} documents: too few for "
                f"data.validation_documents={self.validation_documents} plus one document for "
                f"each of the {num_shards} shards (processes x data.num_workers)"
            )
        self.validation_batches()
        log.info(
            "rank %d: %d validation sequences held out (the first %d documents)",
            rank,
            sum(len(batch) for batch in self.validation_batches()),
            self.validation_documents,
        )

    def validation_batches(self) -> list[MaskedBatch]:
        """The held-out sequences, masked once (the same every call); empty without validation.

        Raises:
            ValueError: the validation documents fill no sequence of ``max_length``.
        """
        if self._validation is None:
            texts = itertools.islice(iter_corpus_texts(self.corpora), self.validation_documents)
            token_ids = (
                ids
                for chunk in _chunks(texts, _TOKENIZE_CHUNK)
                for ids in tokenize(self.tokenizer, [text.text for text in chunk])
            )
            sequences = pack_sequences(
                token_ids, self.max_length, self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
            )
            generator = seeded_generator(f"validation:{self.seed}")
            self._validation = [
                self.masker(torch.tensor(rows, dtype=torch.long), generator)
                for rows in _chunks(sequences, self.batch_size)
            ]
            if self.validation_documents and not self._validation:
                raise ValueError(
                    f"the {self.validation_documents} validation documents fill no sequence of "
                    f"data.max_length={self.max_length} tokens: raise data.validation_documents"
                )
        return self._validation

    def train_dataset(
        self, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> PackedCorpusStream:
        """The training stream of one process of ``world_size``."""
        return PackedCorpusStream(
            self.corpora,
            self.tokenizer,
            self.max_length,
            self.batch_size,
            self.masker,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            skip_documents=self.validation_documents,
            rank=rank,
            world_size=world_size,
            start_step=start_step,
        )

    def train_dataloader(self) -> DataLoader:
        """An endless stream of batches; ``trainer.max_steps`` ends training.

        Built after a checkpoint is restored: a resumed run's stream starts at its step.
        """
        rank, world_size, start_step = 0, 1, 0
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
            start_step = self.trainer.global_step
        return DataLoader(
            self.train_dataset(rank, world_size, start_step),
            batch_size=None,  # the stream batches and masks
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )


def _check_int(key: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
