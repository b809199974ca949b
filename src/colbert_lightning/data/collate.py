"""Turns a list of training examples into a tokenised ``TrainingBatch``.

Also what tokenising implies for the texts read: ``TextCap`` shortens texts far longer than the
model keeps, and ``VocabularyFit`` watches whether the vocabulary can spell them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from colbert_lightning.data.beir import normalized_text, text_key
from colbert_lightning.data.types import NO_KEY, TrainingBatch, TrainingExample
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, TokenizedText

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 20
"""Where ``TextCap`` first cuts: this many characters per token kept (English text averages 4
to 6). It sets only the cost of a cut, never the tokens kept (see ``TextCap``)."""


def _last_word_end(text: str, limit: int) -> int | None:
    """The largest ``i <= limit`` with ``text[i] == " "`` after a non-space, or None."""
    cut = text.rfind(" ", 1, limit + 1)
    while cut > 0 and text[cut - 1].isspace():
        cut = text.rfind(" ", 1, cut)
    return cut if cut > 0 else None


class TextCap:
    """Shortens texts far longer than the model keeps, once, as they are read; same tokens kept.

    The model keeps the first ``query_maxlen`` / ``doc_maxlen`` tokens of a text, but a
    tokenizer reads the whole text before it truncates (a 10 MB line takes seconds, every time
    it is drawn). A text longer than ``CHARS_PER_TOKEN`` characters per kept token is cut at the
    last space (after a word) within that many characters, and the cut is kept only if the
    shortened text still gives at least as many tokens as the model keeps; otherwise twice as
    many characters are tried, up to the whole text (a text of only very long words, or of
    characters the tokenizer drops, is kept whole).

    Why the kept tokens cannot change: tokenizers split a text at spaces before cutting its
    words into pieces (BERT's WordPiece, SentencePiece, byte-level BPE), so the words before a
    space give the same tokens with or without what follows, and the shortened text's tokens
    are the first tokens of the whole text's. It holds at least as many as are kept, so the
    kept ones are the same.

    Args:
        tokenizer: the model's tokenizer, whose lengths (``query_maxlen``, ``doc_maxlen``) set
            the tokens kept.
    """

    def __init__(self, tokenizer: ColBERTTokenizer) -> None:
        self.tokenizer = tokenizer.tokenizer
        config = tokenizer.config
        # ColBERTTokenizer asks for maxlen - 1 tokens, special ones included, then adds its marker
        specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        self.query_tokens = max(1, config.query_maxlen - 1 - specials)
        self.document_tokens = max(1, config.doc_maxlen - 1 - specials)

    def query(self, text: str) -> str:
        """``text`` shortened for a query: the same first ``query_maxlen`` tokens."""
        return self._cap(text, self.query_tokens)

    def document(self, text: str) -> str:
        """``text`` shortened for a document: the same first ``doc_maxlen`` tokens."""
        return self._cap(text, self.document_tokens)

    def _cap(self, text: str, kept: int) -> str:
        limit = CHARS_PER_TOKEN * kept
        while limit < len(text):
            cut = _last_word_end(text, limit)
            if cut is not None and self._tokens(text[:cut], kept) >= kept:
                return text[:cut]
            limit *= 2
        return text

    def _tokens(self, text: str, at_most: int) -> int:
        encoded = self.tokenizer(
            text, add_special_tokens=False, truncation=True, max_length=at_most
        )
        return len(encoded["input_ids"])


VOCABULARY_CHECK_BATCHES = 100
"""Batches whose texts ``VocabularyFit`` counts."""
UNKNOWN_TOKENS_WARNING = 0.05
"""Share of [UNK] among the text tokens above which ``VocabularyFit`` warns."""
PIECES_PER_WORD_WARNING = 2.5
"""Word pieces per word above which ``VocabularyFit`` warns (English text takes 1.05 to 1.25)."""


@dataclass
class VocabularyFit:
    """How well the tokenizer's vocabulary spells a process's first training batches.

    Two signs of text in a script or language the vocabulary does not cover: [UNK] tokens
    (Chinese or Thai with BERT's English vocabulary), and words cut into many pieces of a letter
    or two (Cyrillic, Greek or Arabic with it: a word of 8 letters becomes 8 pieces). Logged
    once, when ``batches`` batches are counted (or by ``report``, if training ends first); a
    warning above either threshold.

    Attributes:
        tokenizer: the tokenizer's name, for the message.
        batches: batches to count.
        counted: batches counted so far.
        text_tokens: their text tokens.
        unknown_tokens: their [UNK] tokens.
        continued_tokens: their tokens that continue a word (``##`` pieces of WordPiece).
        reported: whether the figures were logged.
    """

    tokenizer: str
    batches: int = VOCABULARY_CHECK_BATCHES
    counted: int = 0
    text_tokens: int = 0
    unknown_tokens: int = 0
    continued_tokens: int = 0
    reported: bool = False

    def add(self, batch: TrainingBatch) -> None:
        """Count a batch's tokens; log the figures once ``batches`` batches are counted."""
        if self.counted >= self.batches:
            return
        self.counted += 1
        self.text_tokens += batch.text_tokens
        self.unknown_tokens += batch.unknown_tokens
        self.continued_tokens += batch.continued_tokens
        if self.counted == self.batches:
            self.report()

    @property
    def unknown_rate(self) -> float:
        """Share of [UNK] among the text tokens counted."""
        return self.unknown_tokens / max(1, self.text_tokens)

    @property
    def pieces_per_word(self) -> float:
        """Text tokens per word (tokens that do not continue a word) counted."""
        return self.text_tokens / max(1, self.text_tokens - self.continued_tokens)

    def report(self) -> None:
        """Log what was counted (once; nothing if no text token was counted)."""
        if self.reported or self.text_tokens == 0:
            return
        self.reported = True
        figures = (
            f"vocabulary check: the first {self.counted} training batches (this process) have "
            f"{self.text_tokens} text tokens: {self.unknown_rate:.1%} [UNK] "
            f"({self.unknown_tokens}), {self.pieces_per_word:.2f} word pieces per word"
        )
        problems = []
        if self.unknown_rate > UNKNOWN_TOKENS_WARNING:
            problems.append(f"{self.unknown_rate:.1%} of them are [UNK] (text it cannot spell)")
        if self.pieces_per_word > PIECES_PER_WORD_WARNING:
            problems.append(
                f"it cuts words into {self.pieces_per_word:.1f} pieces on average (English "
                "text: 1.05 to 1.25), spelling them out a letter or two at a time"
            )
        if not problems:
            log.info("%s", figures)
            return
        log.warning(
            "%s. The tokenizer %s does not fit this text: %s. Is it in another script or "
            "language? Train with a model and tokenizer made for it (model.name_or_path and "
            "model.tokenizer, for example bert-base-multilingual-cased or xlm-roberta-base)",
            figures,
            self.tokenizer,
            "; ".join(problems),
        )


def _continued_token_flags(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor | None:
    """(vocab,) True for each token that continues a word, for a WordPiece vocabulary; else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    prefix = getattr(getattr(backend, "model", None), "continuing_subword_prefix", None)
    if not prefix:
        return None
    vocabulary = tokenizer.get_vocab()
    flags = torch.zeros(max(vocabulary.values()) + 1, dtype=torch.bool)
    for token, token_id in vocabulary.items():
        flags[token_id] = token.startswith(prefix)
    return flags


def document_key(document_id: str | None, text: str) -> int:
    """The key that identifies a document in a batch: of its id when known, else of its text."""
    return text_key(f"id:{document_id}" if document_id is not None else f"text:{text}")


class Collator:
    """Tokenises B examples into B queries and B * nway documents, each positive first.

    Documents are ordered ``[pos_0, neg_0_1, ..., pos_1, neg_1_1, ...]``. The batch also carries
    the keys that let the loss mask false negatives, and the examples' teacher scores when they
    have them (see ``TrainingBatch``).

    Args:
        tokenizer: turns query and document strings into ColBERT's token layout.
        relevant: query id -> ids of the documents judged relevant to it (the training qrels),
            or None when only each example's own positive is known to be relevant.
    """

    def __init__(
        self, tokenizer: ColBERTTokenizer, relevant: Mapping[str, Collection[str]] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        hf_tokenizer = tokenizer.tokenizer
        self.unknown_token_id = hf_tokenizer.unk_token_id
        self._continued_flags = _continued_token_flags(hf_tokenizer)
        # what is not text: [CLS], [SEP], [PAD], [MASK], the markers ([UNK] is text)
        not_text = {*hf_tokenizer.all_special_ids, tokenizer.query_token_id, tokenizer.doc_token_id}
        not_text.discard(self.unknown_token_id)
        self._not_text_ids = torch.tensor(sorted(not_text), dtype=torch.long)
        # keyed once here, not per batch: qrels can name many documents per query
        self.relevant_keys = {
            query_id: [document_key(doc_id, "") for doc_id in doc_ids]
            for query_id, doc_ids in (relevant or {}).items()
        }

    def __call__(self, examples: list[TrainingExample]) -> TrainingBatch:
        """Collate ``examples``; ``skipped_lines`` is left at 0 for the stream to fill in.

        Raises:
            ValueError: no examples, examples with different numbers of negatives, or a batch
                that mixes examples with teacher scores and examples without (naming one of
                each), or scores not aligned with an example's documents.
        """
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        nway = 1 + len(examples[0].negatives)
        for example in examples:
            if 1 + len(example.negatives) != nway:
                raise ValueError(
                    f"every example in a batch needs the same number of negatives: "
                    f"{examples[0].source or 'the first'} has {nway - 1}, "
                    f"{example.source or 'another'} has {len(example.negatives)}"
                )
        documents = [
            text for example in examples for text in (example.positive, *example.negatives)
        ]
        document_keys = [_document_keys(example) for example in examples]
        queries = self.tokenizer.queries([example.query for example in examples])
        documents = self.tokenizer.documents(documents)
        text_tokens, unknown_tokens, continued_tokens = self._count_tokens(queries, documents)
        return TrainingBatch(
            queries=queries,
            documents=documents,
            nway=nway,
            query_keys=torch.tensor([text_key(normalized_text(e.query)) for e in examples]),
            document_keys=torch.tensor([key for keys in document_keys for key in keys]),
            relevant_keys=self._relevant_keys(examples, [keys[0] for keys in document_keys]),
            text_tokens=text_tokens,
            unknown_tokens=unknown_tokens,
            continued_tokens=continued_tokens,
            teacher_scores=teacher_scores(examples),
        )

    def _count_tokens(self, *tokenized: TokenizedText) -> tuple[int, int, int]:
        """Text, [UNK] and word-continuing tokens of the tokenised texts (for ``VocabularyFit``)."""
        text = unknown = continued = 0
        for tokens in tokenized:
            is_text = ~torch.isin(tokens.input_ids, self._not_text_ids)
            text += int(is_text.sum())
            if self.unknown_token_id is not None:
                unknown += int((tokens.input_ids == self.unknown_token_id).sum())
            if self._continued_flags is not None:
                continued += int((self._continued_flags[tokens.input_ids] & is_text).sum())
        return text, unknown, continued

    def _relevant_keys(self, examples: list[TrainingExample], positives: list[int]) -> torch.Tensor:
        """(B, R): each example's positive (its key given) and its query's judged documents."""
        rows = [
            [positive, *self.relevant_keys.get(example.query_id, ())]
            for example, positive in zip(examples, positives, strict=True)
        ]
        width = max(len(row) for row in rows)
        return torch.tensor([row + [NO_KEY] * (width - len(row)) for row in rows])


def _document_keys(example: TrainingExample) -> list[int]:
    negative_ids = example.negative_ids or (None,) * len(example.negatives)
    return [
        document_key(example.positive_id, example.positive),
        *(document_key(i, text) for i, text in zip(negative_ids, example.negatives, strict=True)),
    ]


def teacher_scores(examples: list[TrainingExample]) -> torch.Tensor | None:
    """(B, nway) float32 teacher scores of the examples' documents, positive first; or None.

    Row ``i`` is ``examples[i].scores``, in the order the batch lays out its documents.

    Example:
        >>> scored = [TrainingExample("q", "p", ("n",), scores=(2.0, 0.5))] * 2
        >>> teacher_scores(scored)
        tensor([[2.0000, 0.5000],
                [2.0000, 0.5000]])
        >>> teacher_scores([TrainingExample("q", "p", ("n",))]) is None
        True

    Raises:
        ValueError: some examples have scores and others not (one of each is named by its
            ``source``), or an example's scores are not one per document.
    """
    scored = [example for example in examples if example.scores is not None]
    if not scored:
        return None
    if len(scored) != len(examples):
        unscored = next(example for example in examples if example.scores is None)
        raise ValueError(
            "a batch mixes examples with teacher scores and examples without: "
            f"{scored[0].source or 'one'} has scores, {unscored.source or 'another'} has none; "
            "a training file gives scores on every line or on none"
        )
    for example in examples:
        if len(example.scores) != 1 + len(example.negatives):
            raise ValueError(
                f"{example.source or 'an example'}: {len(example.scores)} teacher scores for "
                f"{1 + len(example.negatives)} documents (the positive and its negatives)"
            )
    return torch.tensor([example.scores for example in examples], dtype=torch.float32)
