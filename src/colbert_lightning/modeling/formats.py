"""Model folders that colbert-ai, RAGatouille and PyLate load, and reading them back.

Three layouts, each a plain folder of files:

``colbert``
    colbert-ai's ``HF_ColBERT`` checkpoint, which RAGatouille loads too: ``model.safetensors``
    with the encoder under its base-model prefix (``bert.*``) and ``linear.weight`` (dim, hidden);
    ``config.json`` with ``"architectures": ["HF_ColBERT"]`` (PyLate keys on it as well);
    the tokenizer files; ``artifact.metadata``, colbert-ai's flat JSON config (markers, lengths,
    ``mask_punctuation``, ``attend_to_mask_tokens``, ``similarity``).
``pylate``
    sentence-transformers layout as PyLate 1.2 saves it: the encoder at the root
    (``modules.json`` module 0, ``sentence_transformers.models.Transformer``), the projection in
    ``1_Dense/`` (``pylate.models.Dense.Dense``, no bias) and the ColBERT settings in
    ``config_sentence_transformers.json`` (``query_prefix``, ``document_prefix``,
    ``query_length``, ``document_length``, ``attend_to_expansion_tokens``, ``skiplist_words``).
``hf``
    this project's own folder: the encoder as ``save_pretrained`` writes it (``AutoModel``
    loads it), ``colbert_projection.safetensors`` and ``colbert_config.json`` (the whole
    :class:`ColBERTConfig`, so settings the other two cannot express survive).

Writing needs a :class:`~colbert_lightning.modeling.colbert.ColBERT`; reading returns what
``ColBERT.from_metadata`` takes plus a state dict, so this module never builds a model itself.
"""

from __future__ import annotations

import json
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from colbert_lightning.modeling.checkpoints import read_checkpoint
from colbert_lightning.modeling.config import ColBERTConfig

if TYPE_CHECKING:
    from colbert_lightning.modeling.colbert import ColBERT

Format = Literal["colbert", "pylate", "hf"]
FORMATS: tuple[str, ...] = ("colbert", "pylate", "hf")

ARTIFACT_METADATA = "artifact.metadata"
PYLATE_CONFIG = "config_sentence_transformers.json"
PYLATE_DENSE_TYPE = "pylate.models.Dense.Dense"
PYLATE_TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"
HF_CONFIG = "colbert_config.json"
HF_PROJECTION = "colbert_projection.safetensors"
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "pytorch_model.bin"
PROJECTION_KEY = "linear.weight"


@dataclass
class FolderContents:
    """A model folder read back.

    Attributes:
        format: which layout the folder had.
        metadata: ``config``, ``encoder_config`` and ``tokenizer_files``, the same entry a
            training checkpoint stores under ``"colbert"`` (``ColBERT.from_metadata`` takes it).
        state_dict: weights keyed as ``ColBERT.state_dict()`` keys them (``encoder.*``,
            ``linear.weight``).
    """

    format: Format
    metadata: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


# ---- writing ------------------------------------------------------------------------------


def check_exportable(config: ColBERTConfig, format: Format) -> None:
    """Refuse settings a format cannot express, rather than export a model that scores otherwise.

    Raises:
        ValueError: an unknown format, or a setting the format's loader would ignore.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if format == "hf":
        return
    tool = "colbert-ai" if format == "colbert" else "PyLate"
    if not config.query_augmentation:
        raise ValueError(
            f"model.query_augmentation=false cannot be exported to {tool}, which always pads "
            "queries with scored [MASK] tokens; use format=hf"
        )
    if format == "pylate" and config.similarity != "cosine":
        raise ValueError(
            f"similarity={config.similarity!r} cannot be exported to PyLate (MaxSim of dot "
            "products only); use format=colbert or hf"
        )


def write_folder(model: ColBERT, folder: str | Path, format: Format) -> Path:
    """Write ``model`` as a folder in one of :data:`FORMATS` (see the module docstring).

    Args:
        model: the model to write (any device; weights are copied to the CPU).
        folder: created if needed; files of the same names are replaced.
        format: ``colbert``, ``pylate`` or ``hf``.

    Returns:
        The folder.
    """
    check_exportable(model.config, format)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder_state = _cpu_state(model.encoder)
    projection = model.linear.weight.detach().cpu().clone().contiguous()  # (dim, hidden)
    _save_tokenizer(model.tokenizer.tokenizer, folder)
    encoder_config = model.encoder.config.to_dict()
    if format == "colbert":
        prefix = model.encoder.base_model_prefix
        state = {f"{prefix}.{key}": value for key, value in encoder_state.items()}
        state[PROJECTION_KEY] = projection
        save_file(state, folder / WEIGHTS, metadata={"format": "pt"})
        _write_json(folder / "config.json", {**encoder_config, "architectures": ["HF_ColBERT"]})
        _write_json(folder / ARTIFACT_METADATA, colbert_ai_metadata(model.config))
    elif format == "pylate":
        architecture = type(model.encoder).__name__
        save_file(encoder_state, folder / WEIGHTS, metadata={"format": "pt"})
        _write_json(folder / "config.json", {**encoder_config, "architectures": [architecture]})
        pad_token = model.tokenizer.tokenizer.pad_token
        _write_pylate_modules(folder, model.config, projection, pad_token)
    else:
        save_file(encoder_state, folder / WEIGHTS, metadata={"format": "pt"})
        _write_json(folder / "config.json", encoder_config)
        save_file({PROJECTION_KEY: projection}, folder / HF_PROJECTION, metadata={"format": "pt"})
        _write_json(folder / HF_CONFIG, model.config.to_dict())
    return folder


def colbert_ai_metadata(config: ColBERTConfig) -> dict[str, Any]:
    """colbert-ai's ``artifact.metadata`` for ``config`` (flat JSON; it ignores unknown keys).

    ``model_name`` is left out on purpose: colbert-ai would fetch that name from the hub
    instead of reading the folder's own ``config.json``.
    """
    return {
        "query_token_id": config.query_token,
        "doc_token_id": config.doc_token,
        "query_maxlen": config.query_maxlen,
        "doc_maxlen": config.doc_maxlen,
        "dim": config.dim,
        "similarity": config.similarity,
        "interaction": "colbert",
        "attend_to_mask_tokens": config.attend_to_mask_tokens,
        "mask_punctuation": config.mask_punctuation,
    }


def _write_pylate_modules(
    folder: Path, config: ColBERTConfig, projection: torch.Tensor, pad_token: str
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": PYLATE_TRANSFORMER_TYPE},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": PYLATE_DENSE_TYPE},
    ]
    _write_json(folder / "modules.json", modules)
    # PyLate sets the length per call (query_length - 1 or document_length - 1, before the marker)
    _write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": config.doc_maxlen - 1, "do_lower_case": False},
    )
    _write_json(
        folder / PYLATE_CONFIG,
        {
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": config.query_token,
            "document_prefix": config.doc_token,
            "query_length": config.query_maxlen,
            "document_length": config.doc_maxlen,
            "attend_to_expansion_tokens": config.attend_to_mask_tokens,
            # PyLate reads an empty list as "use its default" (string.punctuation), so
            # mask_punctuation=false is written as the pad token, which no document holds
            # (PyLate pads with [MASK]): nothing is skipped.
            "skiplist_words": list(string.punctuation) if config.mask_punctuation else [pad_token],
        },
    )
    dense = folder / "1_Dense"
    dense.mkdir(exist_ok=True)
    dim, hidden = projection.shape
    _write_json(
        dense / "config.json",
        {
            "in_features": hidden,
            "out_features": dim,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    )
    save_file({PROJECTION_KEY: projection}, dense / WEIGHTS, metadata={"format": "pt"})


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (tied or sliced weights)
    return {
        key: value.detach().cpu().clone().contiguous() for key, value in module.state_dict().items()
    }


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    # transformers 5 writes only tokenizer.json; older loaders of WordPiece models want vocab.txt
    vocab_file = folder / "vocab.txt"
    if not vocab_file.exists() and type(tokenizer).__name__.startswith("Bert"):
        by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        if [index for _, index in by_id] == list(range(len(by_id))):
            vocab_file.write_text("".join(f"{token}\n" for token, _ in by_id), encoding="utf-8")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


# ---- reading ------------------------------------------------------------------------------


def detect_format(folder: str | Path) -> Format | None:
    """Which layout a folder has: ``hf``, ``pylate``, ``colbert``, or None for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / HF_CONFIG).is_file():
        return "hf"
    if (folder / "modules.json").is_file() and (folder / PYLATE_CONFIG).is_file():
        # a plain sentence-transformers model has this file too, without the ColBERT keys
        if "query_prefix" in _read_json(folder / PYLATE_CONFIG):
            return "pylate"
    if (folder / ARTIFACT_METADATA).is_file():
        return "colbert"
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if "HF_ColBERT" in (config.get("architectures") or []):
        return "colbert"
    return None


def read_projection(folder: str | Path) -> torch.Tensor | None:
    """The (dim, hidden) projection of a ColBERT folder of any layout; None for other folders.

    ``ColBERT.from_config`` uses it so that training can continue from a colbert-ai or PyLate
    model (``model.init=pretrained model.name_or_path=FOLDER``) with its projection.
    """
    format = detect_format(folder)
    if format is None:
        return None
    folder = Path(folder)
    if format == "hf":
        return load_file(folder / HF_PROJECTION)[PROJECTION_KEY]
    if format == "pylate":
        dense = _pylate_dense_folder(folder)
        weights = _read_weights(dense)
        if any(key != PROJECTION_KEY for key in weights):
            raise ValueError(f"{dense}: a Dense layer with a bias is not a ColBERT projection")
        return weights[PROJECTION_KEY]
    return _read_weights(folder, keys=[PROJECTION_KEY])[PROJECTION_KEY]


def read_folder(folder: str | Path) -> FolderContents:
    """Read a ``colbert``, ``pylate`` or ``hf`` folder into checkpoint metadata and weights.

    Raises:
        ValueError: the folder is none of the three, or holds settings this model cannot
            reproduce (a custom skiplist, a projection with a bias, a non-MaxSim similarity).
    """
    folder = Path(folder)
    format = detect_format(folder)
    if format is None:
        raise ValueError(
            f"{folder} is not a ColBERT folder: expected {HF_CONFIG} (hf), modules.json + "
            f"{PYLATE_CONFIG} (PyLate) or {ARTIFACT_METADATA} / an HF_ColBERT config.json "
            "(colbert-ai)"
        )
    encoder_config = _read_json(folder / "config.json")
    encoder_config.pop("architectures", None)
    projection = read_projection(folder)
    assert projection is not None  # detect_format found a ColBERT folder
    weights = _read_weights(folder)
    if format == "colbert":
        weights.pop(PROJECTION_KEY)
        prefix = _base_model_prefix(weights)
        weights = {key[len(prefix) + 1 :]: value for key, value in weights.items()}
    settings = read_settings(folder)
    assert settings is not None
    # ColBERT never uses the pooler (the model drops it)
    state = {
        f"encoder.{key}": value for key, value in weights.items() if key.split(".")[0] != "pooler"
    }
    state[PROJECTION_KEY] = projection
    config = ColBERTConfig(
        init="pretrained", name_or_path=str(folder), dim=int(projection.shape[0]), **settings
    )
    metadata = {
        "config": config.to_dict(),
        "encoder_config": encoder_config,
        "tokenizer_files": _tokenizer_files(folder),
    }
    return FolderContents(format=format, metadata=metadata, state_dict=state)


def read_settings(folder: str | Path) -> dict[str, Any] | None:
    """The ColBERT settings of a ColBERT folder (lengths, markers, masks); None for others.

    Keys are :class:`ColBERTConfig` fields; a key a format does not record gets that tool's
    own default.
    """
    format = detect_format(folder)
    folder = Path(folder)
    if format == "colbert":
        return _settings_from_colbert_ai(folder)
    if format == "pylate":
        return _settings_from_pylate(folder)
    if format == "hf":
        saved = _read_json(folder / HF_CONFIG)
        return {key: saved[key] for key in _SETTINGS if key in saved}
    return None


_SETTINGS = (
    "query_maxlen",
    "doc_maxlen",
    "query_token",
    "doc_token",
    "add_marker_tokens",
    "query_augmentation",
    "attend_to_mask_tokens",
    "mask_punctuation",
    "similarity",
)


def _settings_from_colbert_ai(folder: Path) -> dict[str, Any]:
    path = folder / ARTIFACT_METADATA
    metadata = _read_json(path) if path.is_file() else {}
    metadata = metadata.get("config", metadata)  # some colbert-ai versions nest it
    interaction = metadata.get("interaction", "colbert")
    if interaction != "colbert":
        raise ValueError(f"{path}: interaction={interaction!r}; only 'colbert' (MaxSim) is read")
    # colbert-ai's own defaults when a key is missing (its doc_maxlen default is 220)
    return {
        "query_token": metadata.get("query_token_id", "[unused0]"),
        "doc_token": metadata.get("doc_token_id", "[unused1]"),
        "query_maxlen": metadata.get("query_maxlen", 32),
        "doc_maxlen": metadata.get("doc_maxlen", 220),
        "attend_to_mask_tokens": metadata.get("attend_to_mask_tokens", False),
        "mask_punctuation": metadata.get("mask_punctuation", True),
        "similarity": metadata.get("similarity", "cosine"),
    }


def _settings_from_pylate(folder: Path) -> dict[str, Any]:
    path = folder / PYLATE_CONFIG
    saved = _read_json(path)
    skiplist = saved.get("skiplist_words")
    if skiplist in (None, [], list(string.punctuation)):  # PyLate's default is the punctuation
        mask_punctuation = True
    elif skiplist in (["[PAD]"], ["<pad>"]):  # how write_folder says "no skiplist"
        mask_punctuation = False
    else:
        raise ValueError(
            f"{path}: skiplist_words other than Python's string.punctuation are not supported"
        )
    return {
        # PyLate's own defaults when a key is missing
        "query_token": saved.get("query_prefix") or "[Q] ",
        "doc_token": saved.get("document_prefix") or "[D] ",
        "query_maxlen": saved.get("query_length") or 32,
        "doc_maxlen": saved.get("document_length") or 180,
        "attend_to_mask_tokens": bool(saved.get("attend_to_expansion_tokens")),
        "mask_punctuation": mask_punctuation,
    }


def _pylate_dense_folder(folder: Path) -> Path:
    modules = _read_json(folder / "modules.json")
    dense = [module for module in modules if module.get("type", "").endswith("Dense")]
    if len(modules) != 2 or len(dense) != 1:
        types = [module.get("type") for module in modules]
        raise ValueError(
            f"{folder}/modules.json: expected a Transformer and one Dense, got {types}"
        )
    return folder / dense[0]["path"]


def _base_model_prefix(weights: dict[str, torch.Tensor]) -> str:
    prefixes = {key.split(".")[0] for key in weights}
    if len(prefixes) != 1:
        raise ValueError(f"expected the encoder under one prefix (bert.*), got {sorted(prefixes)}")
    return prefixes.pop()


def _read_weights(folder: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``model.safetensors`` (or a legacy ``pytorch_model.bin``) of a folder, all keys or some."""
    if (folder / WEIGHTS).is_file():
        if keys is None:
            return load_file(folder / WEIGHTS)
        with safe_open(folder / WEIGHTS, framework="pt") as weights:
            return {key: weights.get_tensor(key) for key in keys}
    if (folder / LEGACY_WEIGHTS).is_file():
        weights = read_checkpoint(folder / LEGACY_WEIGHTS, checksummed=False)
        return weights if keys is None else {key: weights[key] for key in keys}
    raise FileNotFoundError(
        f"{folder}: no {WEIGHTS} or {LEGACY_WEIGHTS} (sharded weights are not read)"
    )


def _tokenizer_files(folder: Path) -> dict[str, bytes]:
    """The folder's tokenizer, as the files ``save_pretrained`` writes (checkpoints store these)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # PyLate saves its tokenizer with [MASK] as the pad token; documents are padded with [PAD]
    # here (padding is never attended nor scored either way, so scores do not change)
    if tokenizer.pad_token == tokenizer.mask_token and "[PAD]" in tokenizer.get_vocab():
        tokenizer.pad_token = "[PAD]"
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save_pretrained(saved)
        return {path.name: path.read_bytes() for path in sorted(Path(saved).iterdir())}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
