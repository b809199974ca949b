"""Teachers for distillation: models that score (query, document) pairs of texts.

Two kinds, told apart by :func:`teacher_kind`:

- ``colbert``: anything :meth:`ColBERT.load` reads (a training ``.ckpt``, an exported hf,
  colbert-ai or PyLate folder) or a training run's folder (``train``'s output: its best
  checkpoint, else ``checkpoints/last.ckpt``). A pair's score is the model's MaxSim
  (:func:`colbert_lightning.scoring.maxsim_grouped`), with its own query and document lengths.
- ``cross_encoder``: a local transformers folder of a sequence-classification model
  (``AutoModelForSequenceClassification`` and ``AutoTokenizer``), reading the query and the
  document as one pair. A pair's score is its logit: the only one with one label, the second
  (label 1, "relevant") with two, as sentence-transformers' cross-encoders do.

Both score in eval mode, without gradients, in float32; nothing is fetched from the hub.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from colbert_lightning.modeling.colbert import ColBERT, default_device, inference
from colbert_lightning.modeling.formats import detect_format
from colbert_lightning.scoring import maxsim_grouped

log = logging.getLogger(__name__)

TeacherKind = Literal["auto", "colbert", "cross_encoder"]
TEACHER_KINDS: tuple[str, ...] = ("auto", "colbert", "cross_encoder")
RUN_RESULTS = "results.json"
"""What ``train`` writes in its run folder; names the best checkpoint."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


@dataclass
class TeacherSpec:
    """Which model scores the candidates (``teacher`` of ``conf/score_candidates.yaml``).

    Attributes:
        path: a ``.ckpt``, a training run folder, a ColBERT folder (hf, colbert-ai, PyLate) or a
            cross-encoder folder; local only.
        kind: ``auto`` (by what ``path`` holds, see :func:`teacher_kind`), ``colbert`` or
            ``cross_encoder``.
        max_length: a cross-encoder's tokens per (query, document) pair, at most (also capped
            by its tokenizer's and position embeddings' limits); a ColBERT keeps its own
            ``query_maxlen`` and ``doc_maxlen``.
    """

    path: str
    kind: str = "auto"
    max_length: int = 512


class Teacher(Protocol):
    """Scores (query, document) pairs of texts."""

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        """(P,) float32 scores on the CPU: ``queries[i]`` against ``documents[i]``."""
        ...


def run_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint a training run folder stands for: its best, else ``last.ckpt``.

    The best is the ``best_checkpoint`` its ``results.json`` records (when that file exists),
    else its one ``checkpoints/best-step*.ckpt``; then ``checkpoints/last.ckpt``. None for a
    folder that is no training run.
    """
    folder = Path(folder)
    results = folder / RUN_RESULTS
    if results.is_file():
        best = json.loads(results.read_text(encoding="utf-8")).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    checkpoints = folder / "checkpoints"
    best_steps = sorted(checkpoints.glob("best-step*.ckpt"))
    if len(best_steps) == 1:
        return best_steps[0]
    last = checkpoints / "last.ckpt"
    return last if last.is_file() else None


def _is_sequence_classifier(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def teacher_kind(
    path: str | os.PathLike, kind: str = "auto"
) -> Literal["colbert", "cross_encoder"]:
    """``kind``, or for ``auto`` the kind of model ``path`` holds.

    ``colbert``: a file (a ``.ckpt``), a ColBERT folder (hf, colbert-ai, PyLate:
    ``modeling.formats.detect_format``) or a training run folder (:func:`run_checkpoint`).
    ``cross_encoder``: a folder whose ``config.json`` names a ``...ForSequenceClassification``
    architecture.

    Raises:
        ValueError: an unknown kind, or (``auto``) a folder that is neither.
        FileNotFoundError: ``path`` does not exist.
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher.kind={kind!r}: expected one of {TEACHER_KINDS}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher.path={path}: no such checkpoint or model folder")
    if kind != "auto":
        return kind  # type: ignore[return-value]
    if path.is_file() or detect_format(path) is not None or run_checkpoint(path) is not None:
        return "colbert"
    if _is_sequence_classifier(path):
        return "cross_encoder"
    raise ValueError(
        f"teacher.path={path}: cannot tell what model this folder holds: expected a ColBERT "
        "folder (hf, colbert-ai or PyLate), a training run folder (results.json, "
        "checkpoints/), or a cross-encoder (config.json naming a ...ForSequenceClassification "
        "architecture); set teacher.kind to say which"
    )


def teacher_files(path: str | os.PathLike) -> list[Path]:
    """The files whose content makes the teacher: a resumed scoring checks they are unchanged.

    A file is itself; a training run folder is its :func:`run_checkpoint`; another folder is
    its weight files (``*.safetensors``, ``*.bin``, ``*.ckpt``, ``*.pt``, ``*.pth``, in
    subfolders too), sorted.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    checkpoint = run_checkpoint(path) if detect_format(path) is None else None
    if checkpoint is not None:
        return [checkpoint]
    return sorted(
        file for file in path.rglob("*") if file.is_file() and file.suffix in _WEIGHT_SUFFIXES
    )


class ColBERTTeacher:
    """A ColBERT as teacher: a pair's score is the model's MaxSim.

    Args:
        model: the ColBERT, on the device it scores on.
    """

    def __init__(self, model: ColBERT) -> None:
        self.model = model

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> ColBERTTeacher:
        """Load a ``.ckpt``, a ColBERT folder or a training run folder's checkpoint.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: a folder that is neither a ColBERT folder nor a training run.
        """
        path = Path(path)
        if path.is_dir() and detect_format(path) is None:
            checkpoint = run_checkpoint(path)
            if checkpoint is None:
                raise ValueError(
                    f"teacher.path={path}: neither a ColBERT folder (hf, colbert-ai, PyLate) "
                    "nor a training run folder (results.json or checkpoints/last.ckpt)"
                )
            log.info("teacher: the training run %s's checkpoint %s", path, checkpoint)
            path = checkpoint
        model = ColBERT.load(path).to(default_device(device)).eval()
        return cls(model)

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        """(P,) MaxSim of each query against its document (each distinct query encoded once)."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries for {len(documents)} documents")
        model = self.model
        device = model.linear.weight.device
        distinct = list(dict.fromkeys(queries))
        row_of = {query: row for row, query in enumerate(distinct)}
        rows = torch.tensor([row_of[query] for query in queries], device=device)
        with inference(model):
            encoded_queries = model.encode_queries(model.tokenizer.queries(distinct).to(device))
            encoded_documents = model.encode_documents(
                model.tokenizer.documents(list(documents)).to(device)
            )
            scores = maxsim_grouped(
                encoded_queries.embeddings[rows],  # (P, Lq, dim)
                encoded_queries.mask[rows],  # (P, Lq)
                encoded_documents.embeddings[:, None],  # (P, 1, Ld, dim)
                encoded_documents.mask[:, None],  # (P, 1, Ld)
                model.config.similarity,
            )  # (P, 1)
        return scores[:, 0].float().cpu()


class CrossEncoderTeacher:
    """A cross-encoder as teacher: a pair's score is its relevance logit.

    Args:
        model: a sequence-classification model with one or two labels, on its device.
        tokenizer: its tokenizer, which reads a query and a document as a pair.
        max_length: tokens per pair, at most (the longer text is cut first).
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> None:
        labels = model.config.num_labels
        if labels not in (1, 2):
            raise ValueError(
                f"a cross-encoder teacher has one label (a relevance score) or two (not "
                f"relevant, relevant); this one has {labels}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        max_length: int = 512,
        device: str | torch.device | None = None,
    ) -> CrossEncoderTeacher:
        """Load a local ``AutoModelForSequenceClassification`` folder and its tokenizer.

        Raises:
            FileNotFoundError: ``folder`` is not a folder.
            ValueError: ``max_length`` below 2, a model with other than one or two labels, or
                a folder whose classification head is missing (an encoder without one would
                score with random weights).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"teacher.path={folder}: a cross-encoder is a folder")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"teacher.max_length must be an integer >= 2, got {max_length!r}")
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"teacher.path={folder}: {len(missing)} weights of the classifier are not in "
                f"the folder ({', '.join(missing[:4])}): it is not a trained cross-encoder"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        limits = [max_length, tokenizer.model_max_length]
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int):
            limits.append(positions)
        model = model.to(default_device(device)).eval()
        return cls(model, tokenizer, min(limits))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        """(P,) relevance logit of each (query, document) pair."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries for {len(documents)} documents")
        device = self.model.device
        encoded = self.tokenizer(
            list(queries),
            list(documents),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        with inference(self.model):
            logits = self.model(**encoded).logits  # (P, labels)
        column = 0 if logits.shape[-1] == 1 else 1
        return logits[:, column].float().cpu()


def load_teacher(spec: TeacherSpec, device: str | torch.device | None = None) -> Teacher:
    """The teacher ``spec`` names, on ``device`` (default: CUDA when present, else the CPU).

    Raises:
        FileNotFoundError: ``spec.path`` does not exist.
        ValueError: see :func:`teacher_kind` and the teachers' ``load``.
    """
    kind = teacher_kind(spec.path, spec.kind)
    if kind == "colbert":
        return ColBERTTeacher.load(spec.path, device)
    return CrossEncoderTeacher.load(spec.path, spec.max_length, device)
