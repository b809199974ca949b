"""The LightningDataModule: prepares, streams, tokenises and batches training data."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from colbert_lightning.data.beir import (
    DevSet,
    load_dev_set,
    load_qrels,
    normalized_text,
    text_key,
)
from colbert_lightning.data.collate import Collator, TextCap, VocabularyFit
from colbert_lightning.data.crops import CropReader, CropSpec
from colbert_lightning.data.errors import BadLines, DataFormatError, OnBadLine, check_on_bad_line
from colbert_lightning.data.negatives import prepare_triples
from colbert_lightning.data.readers import TripleReader, make_reader
from colbert_lightning.data.streaming import (
    TripleStream,
    ValidLines,
    check_length_grouping,
    check_nway,
    scan_lines,
)
from colbert_lightning.data.text_store import TextStore
from colbert_lightning.data.types import TrainingBatch, TrainingExample
from colbert_lightning.modeling.tokenization import ColBERTTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainFiles:
    """Where the training examples are.

    Attributes:
        path: the training file (JSONL or TSV; see ``format``), or for ``crops`` a corpus.
        format: ``jsonl`` (texts), ``scored_jsonl`` (texts with teacher scores),
            ``colbert_ids`` (ids, with teacher scores in colbert-ai's distillation form),
            ``msmarco_ids``, ``msmarco_text``, or ``crops``: examples cropped from a corpus's
            documents, no query or judgment (see ``data/crops.py`` and the datamodule's
            ``crops``). See ``data/readers.py``.
        queries: queries file (BEIR JSONL or ``id<TAB>text``) for the id formats.
        collection: collection file (BEIR JSONL or ``id<TAB>text``) for the id formats.
        qrels: BEIR qrels TSV of the training queries (``prepare`` writes ``train_qrels.tsv``),
            for files that name ids: every document it judges relevant to a query is left out
            of that query's in-batch negatives (``module.mask_false_negatives``).
    """

    path: str
    format: str = "jsonl"
    queries: str | None = None
    collection: str | None = None
    qrels: str | None = None


@dataclass
class DevFiles:
    """The dev set evaluated during training.

    Attributes:
        corpus: BEIR ``corpus.jsonl[.gz]``.
        queries: BEIR ``queries.jsonl[.gz]``.
        qrels: BEIR qrels TSV of the dev queries.
        candidates: for ``mode=rerank``: a TREC run or ``qid<TAB>pid`` TSV of candidates.
    """

    corpus: str
    queries: str
    qrels: str
    candidates: str | None = None


@dataclass
class PrepareSpec:
    """Arguments of :func:`colbert_lightning.data.negatives.prepare_triples`, run before training.

    Attributes:
        root: BEIR-layout folder.
        split: the qrels split to build triples from (dev queries are held out of it).
        output_dir: where ``triples.jsonl``, ``train_qrels.tsv`` and ``dev_qrels.tsv`` go.
        negatives_per_positive: BM25 hard negatives written per (query, positive).
        min_rank: first BM25 rank (1-based) negatives are drawn from.
        max_rank: last BM25 rank (1-based, inclusive).
        dev_queries: queries held out for dev: a count, or a fraction if below 1.
        seed: seed of the dev split and the negative sampling.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    root: str
    split: str
    output_dir: str
    negatives_per_positive: int = 8
    min_rank: int = 10
    max_rank: int = 100
    dev_queries: int | float = 50
    seed: int = 0
    k1: float = 0.9
    b: float = 0.4


@dataclass(frozen=True)
class SeenQueries:
    """The queries a model was trained on or chosen with, as keys of their normalised texts.

    A test query whose :func:`normalized_text` matches one of these measures memory, not
    retrieval: evaluation leaves it out (see ``evaluate_split``).

    Attributes:
        train: keys (``text_key(normalized_text(query))``) of the training file's queries.
        dev: keys of the dev queries, which chose the best checkpoint.
    """

    train: frozenset[int]
    dev: frozenset[int]

    def __contains__(self, query: str) -> bool:
        key = text_key(normalized_text(query))
        return key in self.train or key in self.dev

    def to_state(self) -> dict[str, torch.Tensor]:
        """Plain tensors, as checkpoints loaded with ``weights_only=True`` take them."""
        return {
            "train": torch.tensor(sorted(self.train), dtype=torch.long),
            "dev": torch.tensor(sorted(self.dev), dtype=torch.long),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> SeenQueries:
        """Inverse of :meth:`to_state`."""
        return cls(frozenset(state["train"].tolist()), frozenset(state["dev"].tolist()))

    @classmethod
    def of_checkpoint(cls, checkpoint: dict) -> SeenQueries | None:
        """The seen queries a training checkpoint recorded, or None (older or exported)."""
        state = checkpoint.get(ColBERTDataModule.__qualname__, {}).get("seen_queries")
        return None if state is None else cls.from_state(state)


class ColBERTDataModule(pl.LightningDataModule):
    """Streams training examples from disk and serves the dev set.

    Args:
        train: the training file(s).
        tokenizer: the model's ColBERT tokeniser (collation tokenises in the DataLoader workers);
            None only to read the training file without training (``validate_training_file``).
        dev: the dev set files, or None for no evaluation.
        root: the BEIR folder the data comes from, if any; ``prepare`` and
            ``python -m colbert_lightning.evaluate`` read it (the other splits' qrels).
        prepare: build the training triples and dev split first (cached), or None.
        batch_size: queries per batch, per process.
        nway: documents per query (the positive and ``nway - 1`` negatives).
        num_workers: DataLoader worker processes (tokenisation happens there).
        shuffle_buffer: examples held for shuffling (0 or 1: file order).
        seed: seed of the shuffle and the negative sampling.
        on_bad_line: ``error`` stops at the first malformed line; ``skip`` counts them.
        validate: report the training file's bad lines in the pass that reads all its lines at
            set-up: ``error`` raises the first there, ``skip`` logs how many there are and of
            which kinds. Without it that pass is silent: under ``error`` the run still stops at
            the first bad line before its first step (when the training stream starts), under
            ``skip`` bad lines are counted only as the stream meets them.
        crops: how ``train.format: crops`` crops its corpus (None: ``CropSpec()``'s defaults);
            refused with another format.
        length_grouping: 0 or 1: off (the default). ``N >= 2``: each batch holds examples of
            similar document length, taken from a pool of ``N * batch_size`` consecutive
            shuffled examples, so it pads less; its in-batch negatives are then correlated
            with length. Off until measured to train as well (see ``TripleStream``).
    """

    def __init__(
        self,
        train: TrainFiles,
        tokenizer: ColBERTTokenizer | None,
        dev: DevFiles | None = None,
        root: str | None = None,
        prepare: PrepareSpec | None = None,
        batch_size: int = 32,
        nway: int = 2,
        num_workers: int = 1,
        shuffle_buffer: int = 10000,
        seed: int = 0,
        on_bad_line: OnBadLine = "error",
        validate: bool = False,
        crops: CropSpec | None = None,
        length_grouping: int = 0,
    ) -> None:
        super().__init__()
        check_nway(nway)
        check_length_grouping(length_grouping)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        check_on_bad_line(on_bad_line)
        if not isinstance(validate, bool):
            raise ValueError(f"data.validate must be true or false, got {validate!r}")
        self.train_files = train
        self.dev_files = dev
        self.root = root
        self.prepare_spec = prepare
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.nway = nway
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.on_bad_line = on_bad_line
        self.validate = validate
        self.crops = crops
        self.length_grouping = length_grouping
        self._dev_set: DevSet | None = None
        self._seen_queries: SeenQueries | None = None
        self._triple_reader: TripleReader | None = None
        self._valid_lines: ValidLines | None = None
        self._train_query_keys: frozenset[int] | None = None
        self._vocabulary_fit: VocabularyFit | None = None
        self.skipped_store_lines = 0  # bad lines of queries/collection files, when skipping
        self.batches_consumed = 0  # training batches this process handed to the model

    def prepare_data(self) -> None:
        """Build the training triples and dev split (once per machine; cached on disk)."""
        if self.prepare_spec is not None:
            prepare_triples(**asdict(self.prepare_spec))
        missing = [path for path in self._input_paths() if not Path(path).exists()]
        if missing:
            raise FileNotFoundError(f"data files not found: {missing}")

    def setup(self, stage: str) -> None:
        """Before fitting: read every training line once (the valid ones and their queries).

        The queries that training and dev use are saved with checkpoints.
        """
        if stage == "fit":
            self.valid_lines()
            self.seen_queries()

    def _input_paths(self) -> list[str]:
        files = self.train_files
        paths = [files.path, files.queries, files.collection, files.qrels]
        if self.dev_files is not None:
            dev = self.dev_files
            paths += [dev.corpus, dev.queries, dev.qrels, dev.candidates]
        return [path for path in paths if path]

    def train_dataset(
        self, rank: int = 0, world_size: int = 1, max_passes: int | None = None
    ) -> TripleStream:
        """The streaming training set for one process of ``world_size``."""
        return TripleStream(
            path=self.train_files.path,
            reader=self._reader(),
            nway=self.nway,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            on_bad_line=self.on_bad_line,
            max_passes=max_passes,
            rank=rank,
            world_size=world_size,
            batch_size=self.batch_size,
            collate=Collator(self.tokenizer, self._training_relevance()),
            skip_batches=self.batches_consumed,
            valid_lines=self.valid_lines(),
            cap=None if self.tokenizer is None else TextCap(self.tokenizer),
            length_grouping=self.length_grouping,
        )

    def _reader(self) -> TripleReader:
        """The training file's reader, built once (its id stores count their bad lines once)."""
        if self._triple_reader is None:
            files = self.train_files
            queries = self._text_store(files.queries) if files.queries else None
            collection = self._text_store(files.collection) if files.collection else None
            self._triple_reader = make_reader(
                files.format,
                files.path,
                queries=queries,
                collection=collection,
                min_negatives=self.nway - 1,
                # validate_training_file has no tokenizer: only blank texts count as empty
                is_empty=self.tokenizer.is_empty if self.tokenizer is not None else None,
                crops=self.crops,
            )
        return self._triple_reader

    def valid_lines(self) -> ValidLines:
        """Which training lines are valid: every line read once (the queries noted on the way).

        Under ``validate``, bad lines are reported here by ``on_bad_line``; otherwise they are
        passed over, for the stream to raise or count when it trains.

        Raises:
            DataFormatError: the first bad line, under ``validate`` and ``on_bad_line=error``;
                or the first line without teacher scores in a file whose other lines have them
                (a ``colbert_ids`` file), whatever the policy: batches cannot mix the two.
        """
        if self._valid_lines is None:
            reader = self._reader()
            policy = self.on_bad_line if self.validate else "skip"
            bad_lines = BadLines(policy)
            queries: set[int] = set()
            # the first line with teacher scores, and the first without
            first_of: dict[bool, str] = {}

            def remember_query(example: TrainingExample) -> None:
                queries.add(text_key(normalized_text(example.query)))
                first_of.setdefault(example.scores is not None, example.source)

            valid_lines = scan_lines(
                reader,
                self.nway,
                bad_lines,
                # crops train on no query: a crop is drawn anew each pass, none to remember
                on_example=None if isinstance(reader, CropReader) else remember_query,
                description=f"{'validating' if self.validate else 'reading'} "
                f"{Path(reader.path).name}",
            )
            if self.validate:
                _log_validation(valid_lines, bad_lines)
            if len(first_of) == 2:  # batches would mix them (Collator refuses): say so now
                raise DataFormatError(
                    reader.path,
                    int(first_of[False].rpartition(":")[2]),
                    f"no teacher scores, but {first_of[True]} has them: a training file gives "
                    "scores on every line or on none",
                )
            self._valid_lines, self._train_query_keys = valid_lines, frozenset(queries)
        return self._valid_lines

    def seen_queries(self) -> SeenQueries:
        """The training file's and the dev set's queries (read once; one pass over the file).

        Lines the stream would reject are left out: they are never trained on. Crops
        (``train.format: crops``) train on no query: ``train`` is empty.
        """
        if self._seen_queries is None:
            self.valid_lines()
            assert self._train_query_keys is not None
            dev_set = self.dev_set()
            dev = () if dev_set is None else dev_set.queries.values()
            dev_keys = frozenset(text_key(normalized_text(query)) for query in dev)
            self._seen_queries = SeenQueries(self._train_query_keys, dev_keys)
        return self._seen_queries

    def _training_relevance(self) -> dict[str, list[str]] | None:
        """Query id -> ids of the documents the training qrels judge relevant (grade > 0)."""
        if not self.train_files.qrels:
            return None
        judged = load_qrels(self.train_files.qrels)
        return {
            query_id: [doc_id for doc_id, grade in grades.items() if grade > 0]
            for query_id, grades in judged.items()
        }

    def _text_store(self, path: str) -> TextStore:
        bad_lines = BadLines(self.on_bad_line)
        store = TextStore(path, bad_lines=bad_lines)
        if bad_lines.total:
            log.warning(
                "skipped %d bad lines in %s: %s", bad_lines.total, path, dict(bad_lines.counts)
            )
            self.skipped_store_lines += bad_lines.total
        return store

    def train_dataloader(self) -> DataLoader:
        """An endless stream of batches; ``trainer.max_steps`` ends training."""
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        stream = self.train_dataset(rank, world_size)
        # Here, in every process alike, rather than in one worker of one process while the
        # others wait for it in a collective.
        stream.check(world_size * max(1, self.num_workers))
        return DataLoader(
            stream,
            batch_size=None,  # the stream batches, so skipped-line counts travel with batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    def on_after_batch_transfer(self, batch: TrainingBatch, dataloader_idx: int) -> TrainingBatch:
        """Count the batches the model receives: the stream's position for an exact resume.

        How well the vocabulary spells the first batches is logged too (a warning when
        badly: many [UNK], or words cut into many pieces; see ``VocabularyFit``).
        """
        if self.trainer is not None and self.trainer.training:
            self.batches_consumed += 1
            self.vocabulary_fit().add(batch)
        return batch

    def vocabulary_fit(self) -> VocabularyFit:
        """The [UNK] and word-piece counts of this process's first training batches (this run's)."""
        if self._vocabulary_fit is None:
            name = "" if self.tokenizer is None else self.tokenizer.config.tokenizer_name_or_path
            self._vocabulary_fit = VocabularyFit(str(name))
        return self._vocabulary_fit

    def teardown(self, stage: str) -> None:
        """After fitting: log the vocabulary figures if training ended before they were."""
        if stage == "fit" and self._vocabulary_fit is not None:
            self._vocabulary_fit.report()

    def state_dict(self) -> dict[str, object]:
        """Saved in every checkpoint: the stream's position and the queries seen (if read)."""
        state: dict[str, object] = {"batches_consumed": self.batches_consumed}
        if self._seen_queries is not None:
            state["seen_queries"] = self._seen_queries.to_state()
        return state

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        """On resume, before the dataloader is built: continue the stream where it stopped."""
        self.batches_consumed = int(state_dict["batches_consumed"])
        if "seen_queries" in state_dict:
            self._seen_queries = SeenQueries.from_state(state_dict["seen_queries"])

    def dev_set(self) -> DevSet | None:
        """The dev corpus, queries and judgments (loaded once)."""
        if self.dev_files is None:
            return None
        if self._dev_set is None:
            dev = self.dev_files
            self._dev_set = load_dev_set(
                dev.corpus,
                dev.queries,
                dev.qrels,
                dev.candidates,
                is_empty=self.tokenizer.is_empty,
            )
        return self._dev_set


def _log_validation(valid_lines: ValidLines, bad_lines: BadLines) -> None:
    if not bad_lines.total:
        log.info("validated %s: all %d lines are valid", valid_lines.path, valid_lines.lines)
        return
    kinds = bad_lines.counts.most_common()
    problems = ", ".join(f"{problem} ({count})" for (_, problem), count in kinds[:5])
    if len(kinds) > 5:
        problems += f" and {len(kinds) - 5} other problems"
    log.warning(
        "validated %s: %d of its %d lines are bad and will be skipped: %s",
        valid_lines.path,
        bad_lines.total,
        valid_lines.lines,
        problems,
    )


def validate_training_file(
    train: TrainFiles,
    nway: int = 2,
    on_bad_line: OnBadLine = "error",
    tokenizer: ColBERTTokenizer | None = None,
    crops: CropSpec | None = None,
) -> ValidLines:
    """Read every line of a training file once, as training would, and report its bad lines.

    Its queries and collection (id formats) are read too. No model or dev set is
    needed; ``data.validate=true`` does the same at the start of a training run.

    Args:
        train: the training file, its format and (id formats) its queries and collection.
        nway: documents per query a line must supply (the positive and ``nway - 1`` negatives).
        on_bad_line: ``error`` raises the first bad line; ``skip`` logs how many there are.
        tokenizer: the model's tokenizer, to refuse texts that give no token as training does;
            None: only blank texts count as empty.
        crops: the cropping, for ``train.format: crops`` (see ``ColBERTDataModule``).

    Returns:
        Which lines are valid: ``lines``, ``valid``, ``bad`` and ``first_error``.

    Raises:
        DataFormatError: the first bad line, under ``on_bad_line=error``.
    """
    datamodule = ColBERTDataModule(
        train,
        tokenizer=tokenizer,
        nway=nway,
        on_bad_line=on_bad_line,
        validate=True,
        crops=crops,
    )
    return datamodule.valid_lines()
