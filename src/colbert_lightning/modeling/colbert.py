"""The ColBERT model: a transformers encoder, a linear projection and L2 normalisation.

This module knows nothing of Lightning, losses or optimisers: it turns tokenised text into
unit-length token embeddings and says which of them are scored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from colbert_lightning.modeling.checkpoints import CheckpointError, check_finite, read_checkpoint
from colbert_lightning.modeling.config import ColBERTConfig
from colbert_lightning.modeling.formats import read_folder, read_projection
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, TokenizedText
from colbert_lightning.scoring import maxsim

log = logging.getLogger(__name__)


@dataclass
class TokenEmbeddings:
    """Unit-length token embeddings and the tokens that take part in MaxSim.

    Attributes:
        embeddings: (B, L, dim) token embeddings.
        mask: (B, L) True where the token is scored.
    """

    embeddings: torch.Tensor
    mask: torch.Tensor


@dataclass
class InitSummary:
    """Which parameters came from a checkpoint and which are freshly random, per module.

    Attributes:
        loaded: parameter counts (numbers, not tensors) loaded, by top-level module name.
        random: parameter counts initialised at random, by top-level module name.
        source: where the loaded weights came from, or None.
    """

    loaded: dict[str, int]
    random: dict[str, int]
    source: str | None

    def table(self) -> str:
        """A small text table for the run's log."""
        names = sorted(set(self.loaded) | set(self.random))
        rows = [f"{'module':<28}{'loaded':>12}{'random':>12}"]
        for name in names:
            rows.append(f"{name:<28}{self.loaded.get(name, 0):>12,}{self.random.get(name, 0):>12,}")
        total_loaded, total_random = sum(self.loaded.values()), sum(self.random.values())
        rows.append(f"{'total':<28}{total_loaded:>12,}{total_random:>12,}")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for results.json."""
        return {"source": self.source, "loaded": self.loaded, "random": self.random}


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Run ``model`` for inference: eval mode and ``torch.inference_mode`` inside the block.

    A model handed over in train mode would otherwise encode with dropout, and give different
    scores on every call. The caller's train/eval mode is restored on leaving, so a model in the
    middle of training can be scored and then train on as before.

    Example:
        >>> layer = nn.Dropout(0.5)
        >>> with inference(layer):
        ...     layer.training, torch.is_inference_mode_enabled()
        (False, True)
        >>> layer.training
        True
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or where commands run a model when none is given: CUDA if present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ColBERT(nn.Module):
    """Late-interaction retriever: ``normalize(encoder(tokens) @ W.T)`` per token.

    Build one with :meth:`from_config` (fresh, in train mode) or :meth:`load` (trained weights, in
    eval mode). :meth:`encode_queries`, :meth:`encode_documents` and :meth:`score` keep whatever
    mode the model is in (training calls them); :meth:`score_texts` always runs in eval mode.

    Args:
        config: the model's hyper-parameters.
        encoder: a transformers base model (``AutoModel``) returning ``last_hidden_state``.
        tokenizer: the ColBERT tokeniser matching the encoder's vocabulary.
    """

    def __init__(self, config: ColBERTConfig, encoder: nn.Module, tokenizer: ColBERTTokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.linear = nn.Linear(encoder.config.hidden_size, config.dim, bias=False)
        self.init_summary: InitSummary | None = None

    @classmethod
    def from_config(
        cls, config: ColBERTConfig, tokenizer: ColBERTTokenizer | None = None
    ) -> ColBERT:
        """A new model: a pretrained encoder or every weight random (see :class:`ColBERTConfig`).

        Args:
            config: the model config.
            tokenizer: ``ColBERTTokenizer.from_config(config)`` when the caller made it already
                (training hands the same one to the data); made here when None.
        """
        if tokenizer is None:
            tokenizer = ColBERTTokenizer.from_config(config)
        elif tokenizer.config != config:
            raise ValueError("the tokenizer was made from another model config")
        hf_tokenizer = tokenizer.tokenizer
        loaded_names: set[str] = set()
        if config.init == "pretrained":
            encoder, info = AutoModel.from_pretrained(
                config.name_or_path, output_loading_info=True, **config.encoder_config
            )
            missing = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
            loaded_names = {name for name, _ in encoder.named_parameters()} - missing
        else:
            encoder = AutoModel.from_config(_encoder_config(config, vocab_size=len(hf_tokenizer)))
        _drop_pooler(encoder)
        rows = encoder.get_input_embeddings().num_embeddings
        if config.init == "pretrained" and len(hf_tokenizer) < rows:
            # padded tables (a few rows, to a multiple of 8 or 64) are common; a table of
            # another vocabulary is not, and gives the tokenizer's ids the wrong embeddings
            log.warning(
                "the tokenizer has %d tokens, the pretrained encoder %s %d embedding rows: if "
                "the tokenizer is not the one the encoder was trained with, its ids name other "
                "tokens' embeddings (set model.tokenizer to the encoder's own, or "
                "model.init=random)",
                len(hf_tokenizer),
                config.name_or_path,
                rows,
            )
        if len(hf_tokenizer) > rows:
            encoder.resize_token_embeddings(len(hf_tokenizer))
            loaded_names.discard(_input_embedding_name(encoder))
        model = cls(config, encoder, tokenizer)
        loaded = {f"encoder.{name}" for name in loaded_names}
        # a colbert-ai / PyLate / exported folder brings its projection: training continues from it
        projection = read_projection(config.name_or_path) if config.init == "pretrained" else None
        if projection is not None:
            if projection.shape != model.linear.weight.shape:
                raise ValueError(
                    f"{config.name_or_path} has a {tuple(projection.shape)} projection; "
                    f"model.dim={config.dim} needs {tuple(model.linear.weight.shape)}"
                )
            model.linear.weight.data.copy_(projection)
            loaded.add("linear.weight")
        # from_pretrained returns the encoder in eval mode, which would train it without dropout
        model.train()
        model.init_summary = _summarise_init(model, loaded, config.name_or_path)
        log.info("ColBERT init (%s):\n%s", config.init, model.init_summary.table())
        return model

    # ---- encoding -------------------------------------------------------------------------

    def _embed(self, tokens: TokenizedText) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).last_hidden_state  # (B, L, hidden)
        embeddings = self.linear(hidden)  # (B, L, dim)
        return nn.functional.normalize(embeddings, p=2, dim=-1)

    def encode_queries(self, queries: TokenizedText) -> TokenEmbeddings:
        """Embed tokenised queries; every position is scored when query augmentation is on."""
        return TokenEmbeddings(self._embed(queries), queries.scored_mask.bool())

    def encode_documents(self, documents: TokenizedText, buckets: int = 1) -> TokenEmbeddings:
        """Embed tokenised documents; padding and (by default) punctuation are not scored.

        ``buckets > 1`` encodes the documents in up to that many groups of similar length, each
        padded only to its own longest (:func:`length_buckets`), then pads the embeddings back
        to the batch's width with zeros: the same embeddings at every attended position, up to
        float rounding, for less encoder work when lengths vary. Dropout draws differ from one
        call over the whole batch, so a training step is equal only without dropout.
        """
        mask = documents.scored_mask.bool()
        if buckets <= 1 or len(documents) < 2:
            return TokenEmbeddings(self._embed(documents), mask)
        lengths = documents.attention_mask.sum(dim=1)
        width = documents.input_ids.shape[1]
        positions = torch.arange(width, device=lengths.device)
        if not torch.equal(documents.attention_mask.bool(), positions < lengths[:, None]):
            raise ValueError("encoding documents in buckets needs right-padded documents")
        order, groups = length_buckets(lengths, buckets)
        parts = []
        for rows in groups:
            longest = int(lengths[rows].max())
            embedded = self._embed(documents[rows, :longest])
            parts.append(nn.functional.pad(embedded, (0, 0, 0, width - longest)))
        return TokenEmbeddings(torch.cat(parts)[order.argsort()], mask)

    def score(self, queries: TokenEmbeddings, documents: TokenEmbeddings) -> torch.Tensor:
        """MaxSim scores, (Q, D), of every query against every document."""
        return maxsim(
            queries.embeddings,
            queries.mask,
            documents.embeddings,
            documents.mask,
            self.config.similarity,
        )

    def score_texts(self, queries: list[str], documents: list[str]) -> torch.Tensor:
        """MaxSim scores, (Q, D), of query strings against document strings.

        Runs under :func:`inference` (no dropout, no autograd), whatever mode the model is in.
        """
        device = self.linear.weight.device
        with inference(self):
            encoded_queries = self.encode_queries(self.tokenizer.queries(queries).to(device))
            encoded_documents = self.encode_documents(
                self.tokenizer.documents(documents).to(device)
            )
            return self.score(encoded_queries, encoded_documents)

    # ---- persistence ----------------------------------------------------------------------

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint needs, besides the weights, to rebuild this model offline."""
        with tempfile.TemporaryDirectory() as folder:
            self.tokenizer.tokenizer.save_pretrained(folder)
            tokenizer_files = {
                name: (Path(folder) / name).read_bytes() for name in sorted(os.listdir(folder))
            }
        return {
            "config": self.config.to_dict(),
            "encoder_config": self.encoder.config.to_dict(),
            "tokenizer_files": tokenizer_files,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ColBERT:
        """An untrained model with the architecture and tokeniser recorded in ``metadata``."""
        config = ColBERTConfig(**metadata["config"])
        with tempfile.TemporaryDirectory() as folder:
            for name, content in metadata["tokenizer_files"].items():
                (Path(folder) / name).write_bytes(content)
            hf_tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder_config = dict(metadata["encoder_config"])
        encoder = AutoModel.from_config(AutoConfig.for_model(**encoder_config))
        _drop_pooler(encoder)
        return cls(config, encoder, ColBERTTokenizer(hf_tokenizer, config))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> ColBERT:
        """Load a model from a Lightning checkpoint written by training, without its config.

        The model comes back in eval mode, ready to encode; call ``.train()`` to train it on.

        Raises:
            CheckpointError: the file is empty, truncated, damaged (its checksum does not
                match), not a colbert-lightning checkpoint, or holds non-finite weights.
        """
        checkpoint = read_checkpoint(path, map_location=map_location, weights_only=False)
        return cls.from_checkpoint_contents(checkpoint, path)

    @classmethod
    def from_checkpoint_contents(
        cls, checkpoint: dict[str, Any], path: str | os.PathLike
    ) -> ColBERT:
        """:meth:`from_checkpoint` for a checkpoint already read (``read_checkpoint``).

        For a caller that needs more of the checkpoint than the model (the queries a training
        run recorded) and reads the file once. ``path`` only names it in errors.

        Raises:
            CheckpointError: not a colbert-lightning checkpoint, or non-finite weights.
        """
        if "colbert" not in checkpoint or "state_dict" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {path}: not a colbert-lightning checkpoint (no 'colbert' entry)"
            )
        check_finite({"state_dict": checkpoint["state_dict"]}, path)
        model = cls.from_metadata(checkpoint["colbert"])
        prefix = "model."
        state = {
            key[len(prefix) :]: value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith(prefix)
        }
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str = "cpu") -> ColBERT:
        """Load a training checkpoint (``.ckpt``) or a colbert-ai, PyLate or ``hf`` folder.

        See :mod:`colbert_lightning.modeling.formats` for the folder layouts. The model comes
        back in eval mode (no dropout), ready to encode; call ``.train()`` to train it on.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such checkpoint or model folder")
        if Path(path).is_file():
            return cls.from_checkpoint(path, map_location=map_location)
        contents = read_folder(path)
        model = cls.from_metadata(contents.metadata)
        model.load_state_dict(contents.state_dict)
        return model.to(map_location).eval()


def _encoder_config(config: ColBERTConfig, vocab_size: int) -> PretrainedConfig:
    """The encoder's architecture for ``init=random``: a named config and/or explicit sizes."""
    overrides = dict(config.encoder_config)
    if config.name_or_path:
        encoder_config = AutoConfig.from_pretrained(config.name_or_path, **overrides)
    else:
        encoder_config = AutoConfig.for_model(**overrides)
    if "vocab_size" not in overrides:
        encoder_config.vocab_size = vocab_size
    return encoder_config


def _drop_pooler(encoder: nn.Module) -> None:
    # ColBERT never uses the pooled [CLS] output; unused parameters would also break DDP.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


def _input_embedding_name(encoder: nn.Module) -> str:
    embedding = encoder.get_input_embeddings()
    for name, module in encoder.named_modules():
        if module is embedding:
            return f"{name}.weight"
    raise RuntimeError("the encoder's input embeddings are not among its modules")


def _summarise_init(model: nn.Module, loaded: set[str], source: str | None) -> InitSummary:
    loaded_counts: Counter = Counter()
    random_counts: Counter = Counter()
    for name, parameter in model.named_parameters():
        # Group by the first two levels: encoder.embeddings, encoder.encoder, linear.
        group = ".".join(name.split(".")[:2]) if name.startswith("encoder.") else name.split(".")[0]
        counts = loaded_counts if name in loaded else random_counts
        counts[group] += parameter.numel()
    return InitSummary(dict(loaded_counts), dict(random_counts), source if loaded else None)


def length_buckets(lengths: torch.Tensor, buckets: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Split rows into at most ``buckets`` groups of similar length, padding the least.

    The rows sorted by length are cut into contiguous groups so that the padded size, the sum
    over groups of rows x the group's longest length, is the smallest possible (dynamic
    programming over the cut points).

    Args:
        lengths: (N,) lengths of the rows.
        buckets: the most groups.

    Returns:
        ``order``, the rows by increasing length, and the groups: index tensors of rows, which
        are consecutive slices of ``order``.

    Example:
        >>> order, groups = length_buckets(torch.tensor([9, 2, 3, 10]), 2)
        >>> [group.tolist() for group in groups]
        [[1, 2], [0, 3]]
    """
    order = lengths.argsort(stable=True)
    ordered = lengths[order].to(torch.float64).cpu()
    count = len(ordered)
    buckets = max(1, min(buckets, count))
    # cost[i, j]: rows i..j-1 of the sorted order in one group, padded to row j-1's length
    starts = torch.arange(count + 1, dtype=torch.float64)[:, None]
    ends = torch.arange(count + 1, dtype=torch.float64)[None, :]
    longest = torch.cat([ordered.new_zeros(1), ordered])[None, :]
    cost = torch.where(ends > starts, (ends - starts) * longest, torch.inf)
    best = cost[0].clone()  # best[j]: rows 0..j-1 in one group
    choices = []
    for _ in range(buckets - 1):
        total = best[:, None] + cost  # (cut i, end j)
        total[:, 0] = torch.inf
        best, cut = total.min(dim=0)
        choices.append(cut)
    # each pass added one non-empty group: walk the cut points back from the last row
    bounds = [count]
    for cut in reversed(choices):
        bounds.append(int(cut[bounds[-1]]))
    bounds.append(0)
    bounds.reverse()
    return order, [order[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)]
