"""A WordPiece vocabulary trained on the user's corpora, for a ColBERT built from zero.

The folder written is what ``model.tokenizer=FOLDER`` reads (with ``model.init=random`` and an
``encoder_config``): ``AutoTokenizer.from_pretrained(FOLDER)`` gives a BERT tokenizer that
normalises, splits and decodes as BERT's does, on word pieces learnt from the corpora.

Special tokens, each one token and never split, sit at fixed ids::

    [PAD]=0  [unused0]=1  [unused1]=2  [UNK]=3  [CLS]=4  [SEP]=5  [MASK]=6

``[unused0]`` and ``[unused1]`` are ColBERT's default query and document markers
(``model.query_token``, ``model.doc_token``), so the default model config works unchanged.
Every ASCII punctuation character, digit and letter is in the vocabulary as a token of its own,
seen in the corpora or not: the punctuation skiplist (``model.mask_punctuation``) then holds the
ids of the punctuation characters, never that of ``[UNK]``.

Every other piece's id is its place in sorted order after them, not the trainer's (which
numbers equally frequent pieces differently from run to run): the same corpora and settings give
the same ``vocab.txt``, so the same model from the same seed.

Files in the output folder: ``vocab.txt`` (one token per line, line number = id),
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and the manifest
``vocabulary.json`` (the corpora, the sizes asked and obtained, the settings, the documents read,
the seconds taken, the library versions). They are written to a temporary folder beside the
output, the manifest last, and the folder is renamed into place at the end: a folder under the
output name is complete, and one with ``vocabulary.json`` is a finished vocabulary.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from colbert_lightning.data.corpora import corpus_files, iter_corpus_texts
from colbert_lightning.modeling.checkpoints import temporary_path

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""The special tokens; each one's id is its position here."""
MANIFEST_FILE = "vocabulary.json"
"""The manifest, written last: its presence says the folder holds a finished vocabulary."""
MANIFEST_VERSION = 1
MODEL_MAX_LENGTH = 512  # BERT's position embeddings, as in the shipped bert-base-uncased
CONTINUING_SUBWORD_PREFIX = "##"
# At most this many distinct characters are kept (the most frequent), as in the tokenizers
# library's BertWordPieceTokenizer: a corpus's rare symbols would otherwise each take a row.
MAX_ALPHABET = 1000
_TRAINING_BATCH = 1000  # documents handed to the trainer at a time (one Python->Rust call each)


@dataclass(frozen=True)
class VocabularyResult:
    """What :func:`train_vocabulary` wrote.

    Attributes:
        output_dir: the vocabulary folder (``model.tokenizer=...``).
        vocab_size: the tokens in the vocabulary, the special ones included.
        documents: the documents read from the corpora.
        seconds: the time taken, reading and training included.
    """

    output_dir: str
    vocab_size: int
    documents: int
    seconds: float


def read_vocabulary_manifest(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``vocabulary.json`` of a finished vocabulary folder; None when there is none."""
    path = Path(output_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) else None


def train_vocabulary(
    corpora: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    vocab_size: int = 4096,
    lowercase: bool = True,
    min_frequency: int = 2,
    max_documents: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> VocabularyResult:
    r"""Train a WordPiece vocabulary on ``corpora`` and write it as a BERT tokenizer folder.

    The corpora are streamed (:func:`~colbert_lightning.data.corpora.iter_corpus_texts`): BEIR
    folders, BEIR ``corpus.jsonl[.gz]`` files or text files of one document per line.

    Args:
        corpora: one corpus path or several, read in order.
        output_dir: the folder to write (its parent is created if needed).
        vocab_size: the tokens wanted, special tokens included. Fewer when the corpora have
            fewer pieces seen ``min_frequency`` times; more when the alphabet alone is larger.
        lowercase: lower-case and strip accents before splitting (an uncased vocabulary);
            false keeps case and accents.
        min_frequency: how often a piece must occur to be merged into a larger one.
        max_documents: read only the first this many documents; None reads them all.
        overwrite: replace an existing vocabulary folder at ``output_dir``.
        show_progress: show a tqdm bar of the documents read.

    Returns:
        The folder, the vocabulary size obtained, the documents read and the time taken.

    Raises:
        ValueError: a bad argument, or corpora without a document.
        FileExistsError: ``output_dir`` is a non-empty folder (a file, or a folder that holds
            no vocabulary, even with ``overwrite``).
        FileNotFoundError: a corpus that does not exist.
        DataFormatError: a malformed corpus line, with the file and line.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "notes.txt").write_text("Lift and drag.\nDrag of a wing?\n" * 5)
        >>> result = train_vocabulary(folder / "notes.txt", folder / "vocabulary",
        ...                           vocab_size=120, show_progress=False)
        >>> result.documents, (folder / "vocabulary" / "vocab.txt").read_text().split()[:5]
        (10, ['[PAD]', '[unused0]', '[unused1]', '[UNK]', '[CLS]'])
    """
    _check_arguments(vocab_size, min_frequency, max_documents)
    output_dir = Path(output_dir)
    existing = _check_output_dir(output_dir, overwrite)
    files = corpus_files(corpora)  # a missing corpus fails before any work
    start = time.perf_counter()

    tokenizer = _untrained_tokenizer(lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=_initial_alphabet(lowercase),
        limit_alphabet=MAX_ALPHABET,
        continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
        show_progress=False,  # its bars would interleave with the documents' tqdm bar
    )
    counter = _DocumentCounter()
    texts = _document_batches(corpora, max_documents, counter, show_progress)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if counter.documents == 0:
        names = ", ".join(str(path) for path in files)
        raise ValueError(
            f"no document to train a vocabulary on in {names}: every line is blank "
            "(or a BEIR record without title and text)"
        )
    tokenizer.model = _in_canonical_order(tokenizer)
    _add_post_processor(tokenizer)
    trained_size = tokenizer.get_vocab_size()

    staging = temporary_path(output_dir)
    shutil.rmtree(staging, ignore_errors=True)  # one left by an earlier run of this process id
    try:
        staging.mkdir(parents=True)
        _write_tokenizer_files(tokenizer, staging, lowercase)
        _check_loads_back(staging, trained_size, lowercase)
        seconds = time.perf_counter() - start
        manifest = {
            "version": MANIFEST_VERSION,
            "corpora": [str(Path(corpus).resolve()) for corpus in _as_list(corpora)],
            "files": [str(path.resolve()) for path in files],
            "vocab_size_requested": vocab_size,
            "vocab_size": trained_size,
            "lowercase": lowercase,
            "min_frequency": min_frequency,
            "max_documents": max_documents,
            "documents": counter.documents,
            "seconds": round(seconds, 3),
            "special_tokens": {token: index for index, token in enumerate(SPECIAL_TOKENS)},
            "versions": {
                "tokenizers": tokenizers.__version__,
                "transformers": transformers.__version__,
            },
        }
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        (staging / MANIFEST_FILE).write_text(manifest_text, encoding="utf-8")
        _move_into_place(staging, output_dir, existing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return VocabularyResult(str(output_dir), trained_size, counter.documents, seconds)


def _check_arguments(vocab_size: int, min_frequency: int, max_documents: int | None) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(vocab_size) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be an integer above the {len(SPECIAL_TOKENS)} special tokens, "
            f"got {vocab_size!r}"
        )
    if not is_int(min_frequency) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive integer, got {min_frequency!r}")
    if max_documents is not None and (not is_int(max_documents) or max_documents < 1):
        raise ValueError(
            f"max_documents must be a positive integer or null (all), got {max_documents!r}"
        )


def _check_output_dir(output_dir: Path, overwrite: bool) -> bool:
    """Whether a folder is at ``output_dir`` to be replaced; raise when it must not be."""
    if not output_dir.exists():
        return False
    if not output_dir.is_dir():
        raise FileExistsError(f"output_dir={output_dir} is a file, not a folder")
    if not any(output_dir.iterdir()):
        return True
    if not overwrite:
        raise FileExistsError(
            f"output_dir={output_dir} exists and is not empty; pick another folder or set "
            "overwrite=true to replace the vocabulary in it"
        )
    # overwrite deletes the folder: only one this function wrote, never a mistyped path's files
    if read_vocabulary_manifest(output_dir) is None:
        raise FileExistsError(
            f"output_dir={output_dir} is not empty and holds no {MANIFEST_FILE}: it is no "
            "vocabulary folder, so overwrite=true does not replace it; pick another folder"
        )
    return True


def _as_list(
    corpora: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[str | os.PathLike]:
    return [corpora] if isinstance(corpora, (str, os.PathLike)) else list(corpora)


def _untrained_tokenizer(lowercase: bool) -> Tokenizer:
    """BERT's normaliser, pre-tokeniser and decoder around an empty WordPiece model."""
    tokenizer = Tokenizer(
        WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUING_SUBWORD_PREFIX)
    return tokenizer


def _initial_alphabet(lowercase: bool) -> list[str]:
    """Characters kept as tokens whether the corpora have them or not.

    Punctuation, so that each punctuation character has an id of its own for the skiplist;
    ASCII digits and letters, so that each has one too (a word-initial piece: the continuation
    pieces, ``##x``, are those the corpora hold).
    """
    letters = string.ascii_lowercase if lowercase else string.ascii_letters
    return list(string.punctuation + string.digits + letters)


def _in_canonical_order(tokenizer: Tokenizer) -> WordPiece:
    """The trained word pieces at ids that do not depend on the trainer's hash order.

    The trainer numbers equally frequent pieces in an order that changes from run to run (and
    from call to call in one process): the same pieces at other ids, so another embedding row
    for each and another model from the same seed. WordPiece splits a word by longest match,
    whatever the ids, so the special tokens keep their ids and every other piece takes the next
    free id in sorted (code point) order.
    """
    pieces = tokenizer.get_vocab(with_added_tokens=False)
    trained_specials = [pieces.get(token) for token in SPECIAL_TOKENS]
    if trained_specials != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(
            f"the tokenizers library ({tokenizers.__version__}) trained the special tokens at "
            f"ids {trained_specials}, not 0-{len(SPECIAL_TOKENS) - 1}"
        )
    ordered = [*SPECIAL_TOKENS, *sorted(set(pieces) - set(SPECIAL_TOKENS))]
    return WordPiece(
        vocab={piece: index for index, piece in enumerate(ordered)},
        unk_token="[UNK]",
        continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
        max_input_chars_per_word=tokenizer.model.max_input_chars_per_word,
    )


def _add_post_processor(tokenizer: Tokenizer) -> None:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


class _DocumentCounter:
    """The documents handed to the trainer so far (the stream is consumed inside it)."""

    def __init__(self) -> None:
        self.documents = 0


def _document_batches(
    corpora: str | os.PathLike | Sequence[str | os.PathLike],
    max_documents: int | None,
    counter: _DocumentCounter,
    show_progress: bool,
) -> Iterator[list[str]]:
    """The documents' texts in lists of ``_TRAINING_BATCH``, counted as they go."""
    documents = itertools.islice(iter_corpus_texts(corpora), max_documents)
    batch: list[str] = []
    with tqdm(
        documents,
        desc="vocabulary",
        unit="doc",
        total=max_documents,
        disable=not show_progress,
    ) as progress:
        for document in progress:
            batch.append(document.text)
            counter.documents += 1
            if len(batch) == _TRAINING_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch
    log.info("read %d documents; computing the word pieces", counter.documents)


def _write_tokenizer_files(tokenizer: Tokenizer, folder: Path, lowercase: bool) -> None:
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.model.save(str(folder))  # vocab.txt
    special = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": lowercase,
        "tokenize_chinese_chars": True,
        "model_max_length": MODEL_MAX_LENGTH,
        **special,
    }
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _check_loads_back(folder: Path, vocab_size: int, lowercase: bool) -> None:
    """Load the folder as ``model.tokenizer`` will and compare it with what was trained.

    Raises:
        RuntimeError: the loaded tokenizer differs (a transformers version that reads the
            folder otherwise); the message names the folder and the difference.
    """
    loaded = AutoTokenizer.from_pretrained(folder)
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    found = {
        "vocabulary size": (len(loaded), vocab_size),
        "vocab.txt lines": (len(lines), vocab_size),
        "do_lower_case": (getattr(loaded, "do_lower_case", None), lowercase),
        "special token ids": (
            loaded.convert_tokens_to_ids(list(SPECIAL_TOKENS)),
            list(range(len(SPECIAL_TOKENS))),
        ),
        "model_max_length": (loaded.model_max_length, MODEL_MAX_LENGTH),
    }
    wrong = [
        f"{name} {got!r}, expected {want!r}" for name, (got, want) in found.items() if got != want
    ]
    if wrong:
        raise RuntimeError(
            f"{folder}: AutoTokenizer (transformers {transformers.__version__}) loads the "
            f"written tokenizer otherwise than it was trained: {'; '.join(wrong)}"
        )


def _move_into_place(staging: Path, output_dir: Path, existing: bool) -> None:
    """Rename ``staging`` to ``output_dir``, the folder there (if any) deleted only after."""
    if not existing:
        os.rename(staging, output_dir)
        return
    replaced = output_dir.with_name(f".{output_dir.name}.replaced-{os.getpid()}")
    shutil.rmtree(replaced, ignore_errors=True)
    os.rename(output_dir, replaced)
    try:
        os.rename(staging, output_dir)
    except OSError:
        os.rename(replaced, output_dir)
        raise
    shutil.rmtree(replaced)
