"""ColBERT tokenisation: marker tokens, [MASK] query augmentation and the punctuation skiplist.

Layout (BERT uncased ids), as colbert-ai and PyLate produce it::

    query:    [CLS] [unused0] what is ... [SEP] [MASK] [MASK] ...  (exactly query_maxlen)
    document: [CLS] [unused1] the text ... [SEP] [PAD] ...          (batch's longest <= doc_maxlen)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from colbert_lightning.modeling.config import ColBERTConfig


@dataclass
class TokenizedText:
    """A batch of token ids ready for the encoder.

    Attributes:
        input_ids: (B, L) token ids.
        attention_mask: (B, L) 1 where the encoder attends to the token.
        scored_mask: (B, L) True where the token's embedding takes part in MaxSim.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    scored_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenizedText:
        """Copy to a device."""
        return TokenizedText(
            self.input_ids.to(device), self.attention_mask.to(device), self.scored_mask.to(device)
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: Any) -> TokenizedText:
        """The same rows (and columns) of all three tensors: ``tokens[rows, :length]``."""
        return TokenizedText(
            self.input_ids[index], self.attention_mask[index], self.scored_mask[index]
        )


# A letter or a digit: tokenisers keep them (WordPiece, SentencePiece and byte-level BPE alike),
# so only texts without one need tokenising to know whether they are empty.
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def tokenizes_to_nothing(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether ``text`` gives no token but the special ones: the test of an empty text.

    True for a blank text and for one of only characters the tokeniser drops: with BERT's,
    NULs, zero-width spaces, other control and format characters, lone combining marks.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        text: a query or document.
    """
    if _LETTER_OR_DIGIT.search(text):
        return False
    encoded = tokenizer(text, add_special_tokens=False, truncation=True, max_length=1)
    return not encoded["input_ids"]


def load_tokenizer(config: ColBERTConfig) -> PreTrainedTokenizerBase:
    """Load the word-piece tokenizer named by the config, adding the markers if asked to.

    Raises:
        ValueError: a marker is not in the vocabulary and ``add_marker_tokens`` is false.
    """
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
    vocab = tokenizer.get_vocab()
    missing = [token for token in (config.query_token, config.doc_token) if token not in vocab]
    if missing and not config.add_marker_tokens:
        raise ValueError(
            f"the tokenizer {config.tokenizer_name_or_path!r} has no token {missing}; pick "
            "markers it has (model.query_token / model.doc_token) or set "
            "model.add_marker_tokens=true to add them"
        )
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return tokenizer


class ColBERTTokenizer:
    """Turns query and document strings into ColBERT's token layout.

    Args:
        tokenizer: a Hugging Face tokenizer with [CLS], [SEP], [MASK] and [PAD] tokens.
        config: the model config (lengths, markers, augmentation, skiplist switch).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ColBERTConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        for name in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"tokenizer {tokenizer.name_or_path!r} defines no {name}")
        self.query_token_id = tokenizer.convert_tokens_to_ids(config.query_token)
        self.doc_token_id = tokenizer.convert_tokens_to_ids(config.doc_token)
        # colbert-ai's skiplist: the first word piece of each ASCII punctuation character.
        self.skiplist = sorted(
            {tokenizer.encode(symbol, add_special_tokens=False)[0] for symbol in string.punctuation}
        )
        self._skiplist_tensor = torch.tensor(self.skiplist, dtype=torch.long)

    def is_empty(self, text: str) -> bool:
        """Whether ``text`` tokenises to nothing (see :func:`tokenizes_to_nothing`)."""
        return tokenizes_to_nothing(self.tokenizer, text)

    @classmethod
    def from_config(cls, config: ColBERTConfig) -> ColBERTTokenizer:
        """The tokeniser the config names (:func:`load_tokenizer`), in ColBERT's layout."""
        return cls(load_tokenizer(config), config)

    def queries(self, queries: list[str]) -> TokenizedText:
        """Tokenise queries to exactly ``query_maxlen`` tokens."""
        maxlen = self.config.query_maxlen
        encoded = self.tokenizer(
            list(queries),
            padding="max_length",
            truncation=True,
            max_length=maxlen - 1,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        input_ids, attention_mask = self._insert_marker(
            encoded["input_ids"], encoded["attention_mask"], self.query_token_id
        )
        if not self.config.query_augmentation:
            return TokenizedText(input_ids, attention_mask, attention_mask.bool())
        padding = attention_mask == 0
        input_ids = input_ids.masked_fill(padding, self.tokenizer.mask_token_id)
        if self.config.attend_to_mask_tokens:
            attention_mask = torch.ones_like(attention_mask)
        # Every query position is scored, the [MASK] expansion included.
        return TokenizedText(input_ids, attention_mask, torch.ones_like(padding))

    def documents(self, documents: list[str]) -> TokenizedText:
        """Tokenise documents, truncated to ``doc_maxlen`` and padded to the batch's longest."""
        encoded = self.tokenizer(
            list(documents),
            padding="longest",
            truncation=True,
            max_length=self.config.doc_maxlen - 1,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        input_ids, attention_mask = self._insert_marker(
            encoded["input_ids"], encoded["attention_mask"], self.doc_token_id
        )
        scored_mask = attention_mask.bool()
        if self.config.mask_punctuation:
            scored_mask &= ~torch.isin(input_ids, self._skiplist_tensor)
        return TokenizedText(input_ids, attention_mask, scored_mask)

    @staticmethod
    def _insert_marker(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, marker_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Insert ``marker_id`` at position 1, shifting the text right by one."""
        batch_size = input_ids.shape[0]
        marker = torch.full((batch_size, 1), marker_id, dtype=input_ids.dtype)
        ones = torch.ones((batch_size, 1), dtype=attention_mask.dtype)
        input_ids = torch.cat([input_ids[:, :1], marker, input_ids[:, 1:]], dim=1)
        attention_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        return input_ids, attention_mask
