"""The model's hyper-parameters: everything needed to rebuild a ColBERT, nothing about training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from colbert_lightning.scoring import Similarity

Init = Literal["pretrained", "random"]


@dataclass
class ColBERTConfig:
    """Hyper-parameters of a ColBERT model, saved with every checkpoint.

    Attributes:
        init: ``pretrained`` loads the encoder's weights from ``name_or_path``; the projection
            is random unless ``name_or_path`` is a ColBERT folder (colbert-ai, PyLate or an
            export), whose projection is loaded too. ``random`` builds the encoder from a
            config and loads no weight.
        name_or_path: hub name (``bert-base-uncased``) or local folder of the encoder. With
            ``init=random`` it only supplies the architecture config, and may be ``None`` when
            ``encoder_config`` names a ``model_type``.
        tokenizer: hub name or folder of the tokenizer; defaults to ``name_or_path``.
        encoder_config: overrides applied to the encoder config (``hidden_size``,
            ``num_hidden_layers``, ...); with ``name_or_path=None`` it is the whole config.
        dim: size of the token embeddings after projection.
        query_maxlen: every query is exactly this many tokens ([MASK]-padded).
        doc_maxlen: documents are truncated to this many tokens.
        query_token: marker inserted after [CLS] in queries.
        doc_token: marker inserted after [CLS] in documents.
        add_marker_tokens: add the markers to the vocabulary when it lacks them (the encoder's
            embedding matrix grows); otherwise a missing marker is an error.
        query_augmentation: pad queries with [MASK] (scored) rather than [PAD] (not scored).
        attend_to_mask_tokens: whether the text attends to the [MASK] padding of queries.
        mask_punctuation: leave punctuation tokens out of document scores.
        similarity: ``cosine`` (dot product of unit vectors) or ``l2`` (negative squared
            distance). Embeddings are unit vectors, so ``l2`` scores ``2 * cosine - 2`` per
            scored query token: the same rankings, and in training the same as ``cosine`` with
            ``module.temperature=0.5``.
    """

    init: Init = "random"
    name_or_path: str | None = None
    tokenizer: str | None = None
    encoder_config: dict[str, Any] = field(default_factory=dict)
    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_token: str = "[unused0]"
    doc_token: str = "[unused1]"
    add_marker_tokens: bool = False
    query_augmentation: bool = True
    attend_to_mask_tokens: bool = False
    mask_punctuation: bool = True
    similarity: Similarity = "cosine"

    def __post_init__(self) -> None:
        # Hydra hands over DictConfig nodes; keep plain containers so the config pickles and saves.
        self.encoder_config = dict(self.encoder_config or {})
        _check_choice("model.init", self.init, ("pretrained", "random"))
        _check_choice("model.similarity", self.similarity, ("cosine", "l2"))
        for key in ("dim", "query_maxlen", "doc_maxlen"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
        if self.query_maxlen < 3 or self.doc_maxlen < 3:
            raise ValueError(
                "model.query_maxlen and model.doc_maxlen must be at least 3 "
                "([CLS], marker, [SEP]), got "
                f"query_maxlen={self.query_maxlen}, doc_maxlen={self.doc_maxlen}"
            )
        if self.init == "pretrained" and not self.name_or_path:
            raise ValueError("model.init=pretrained needs model.name_or_path (hub name or folder)")
        if (
            self.init == "random"
            and not self.name_or_path
            and "model_type" not in self.encoder_config
        ):
            raise ValueError(
                "model.init=random needs model.name_or_path (a config to copy) or "
                "model.encoder_config.model_type (for example bert)"
            )
        if not (self.tokenizer or self.name_or_path):
            raise ValueError("model.tokenizer is required when model.name_or_path is null")

    @property
    def tokenizer_name_or_path(self) -> str:
        """Where the tokenizer comes from."""
        return self.tokenizer or self.name_or_path  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, as stored in checkpoints."""
        return asdict(self)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
