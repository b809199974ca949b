"""Long documents cut into passages of at most ``max_tokens`` word pieces, for indexing.

RAGatouille splits with llama-index's ``SentenceSplitter`` (``chunk_size`` tokens of OpenAI's
tokenizer, ``chunk_overlap = min(chunk_size / 4, 64)``). This splitter needs no llama-index and
counts the tokens the ColBERT model itself sees: its own (fast) Hugging Face tokenizer, no special
tokens.

How a document is cut:

1. A document of at most ``max_tokens`` word pieces is one passage: the text unchanged.
2. Otherwise a window of ``max_tokens`` word pieces starts at the first one. It ends, by
   preference, after the last sentence end (``.``, ``!``, ``?``, a line break) in its second half,
   else at the last word boundary (a gap between two word pieces) in its second half, else
   after its ``max_tokens``-th word piece (one "word" longer than half a window).
3. The passage is the document's characters from the window's first word piece to its last.
4. The next window starts ``overlap`` word pieces before the previous end (moved forward to the
   start of a word, if one lies before that end), so text near a cut is seen whole by one of
   the two passages.

Every word piece of the document lies in at least one passage, passages are in document order,
and a passage re-tokenised is never longer than ``max_tokens`` word pieces (checked; a window is
shortened by one word piece until it holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

SENTENCE_ENDS = frozenset(".!?")


@dataclass(frozen=True)
class Passage:
    """One passage of a document.

    Attributes:
        document: the position of its document in the list given.
        text: the passage: ``document_text[start:end]``.
        start: its first character in the document.
        end: one past its last character.
    """

    document: int
    text: str
    start: int
    end: int


def default_overlap(max_tokens: int) -> int:
    """RAGatouille's overlap for a chunk size: a quarter of it, at most 64 word pieces.

    Example:
        >>> default_overlap(256), default_overlap(100), default_overlap(3)
        (64, 25, 0)
    """
    return min(max_tokens // 4, 64)


def split_documents(
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    max_tokens: int,
    overlap: int | None = None,
) -> list[Passage]:
    """Cut every document into passages of at most ``max_tokens`` word pieces (module docstring).

    Args:
        tokenizer: a fast Hugging Face tokenizer (it must give character offsets).
        documents: the texts.
        max_tokens: the most word pieces in a passage (special tokens not counted).
        overlap: word pieces a window repeats of the one before; default
            :func:`default_overlap`.

    Returns:
        The passages of every document, documents in order, each document's in text order.

    Raises:
        ValueError: ``max_tokens`` below 1, ``overlap`` outside ``0..max_tokens - 1``, or a
            tokenizer that gives no character offsets.
    """
    if max_tokens < 1:
        raise ValueError(f"max_document_length must be at least 1, got {max_tokens}")
    overlap = default_overlap(max_tokens) if overlap is None else overlap
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must be in 0..{max_tokens - 1}, got {overlap}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"splitting documents needs a fast tokenizer (character offsets); "
            f"{type(tokenizer).__name__} is not one"
        )
    documents = list(documents)
    if not documents:
        return []
    encoded = tokenizer(
        documents, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    passages: list[Passage] = []
    for position, (text, offsets) in enumerate(
        zip(documents, encoded["offset_mapping"], strict=True)
    ):
        if len(offsets) <= max_tokens:
            passages.append(Passage(position, text, 0, len(text)))
            continue
        for first, last in _windows(tokenizer, text, offsets, max_tokens, overlap):
            start, end = offsets[first][0], offsets[last - 1][1]
            passages.append(Passage(position, text[start:end], start, end))
    return passages


def _windows(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    offsets: list[tuple[int, int]],
    max_tokens: int,
    overlap: int,
) -> list[tuple[int, int]]:
    """Word-piece ranges ``[first, last)`` of the passages of one long document."""
    count = len(offsets)
    # a word starts at word piece i when a gap (whitespace) separates it from the one before
    word_start = [i == 0 or offsets[i][0] > offsets[i - 1][1] for i in range(count)]
    windows: list[tuple[int, int]] = []
    first = 0
    while True:
        last = min(first + max_tokens, count)
        if last < count:
            last = _cut(text, offsets, word_start, first, last)
        while last - first > 1 and _length(tokenizer, text, offsets, first, last) > max_tokens:
            last -= 1  # re-tokenised differently (a cut inside a word): shorten until it fits
        windows.append((first, last))
        if last >= count:
            return windows
        following = max(last - overlap, first + 1)
        # begin at a word start when one lies between there and the previous end
        first = next((i for i in range(following, last) if word_start[i]), following)


def _cut(
    text: str,
    offsets: list[tuple[int, int]],
    word_start: list[bool],
    first: int,
    limit: int,
) -> int:
    """Where a window starting at ``first`` ends (exclusive), at most at ``limit``."""
    half = first + (limit - first) // 2
    boundaries = [i for i in range(limit, half, -1) if word_start[i]]
    for i in boundaries:
        previous = text[offsets[i - 1][0] : offsets[i - 1][1]]
        gap = text[offsets[i - 1][1] : offsets[i][0]]
        if previous in SENTENCE_ENDS or "\n" in gap:
            return i
    return boundaries[0] if boundaries else limit


def _length(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    offsets: list[tuple[int, int]],
    first: int,
    last: int,
) -> int:
    passage = text[offsets[first][0] : offsets[last - 1][1]]
    return len(tokenizer(passage, add_special_tokens=False, verbose=False)["input_ids"])
