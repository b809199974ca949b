"""Named collections: the BEIR folder (``data.root``) of a data config, by the config's name.

A cross-domain suite (``evaluate suite=classic``) and the extra dev collections followed during
training (``callbacks.evaluation.extra=[med]``) name collections the way ``data=`` does: ``med``
is ``conf/data/med.yaml``, whose ``root`` says where the folder is. A name that is not a data
config but an existing folder is taken as that BEIR folder.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import CONFIG_DIR

DATA_CONFIG_DIR = CONFIG_DIR / "data"
TRAINING_SPLIT = "train"
"""The qrels split a BEIR collection's training queries are judged in (BEIR's convention)."""


def collection_names() -> list[str]:
    """The names of the data configs, in order."""
    return sorted(path.stem for path in DATA_CONFIG_DIR.glob("*.yaml"))


def collection_root(name: str, paths: DictConfig) -> str:
    """The BEIR folder of collection ``name``: ``root`` of ``conf/data/<name>.yaml``, or a folder.

    Args:
        name: a data config's name (``med``, ``scifact``, ...) or a BEIR folder's path.
        paths: the run's ``paths`` config, against which ``root``'s interpolations (such as
            ``${paths.root_dir}``) resolve.

    Raises:
        ConfigError: ``name`` is neither a data config with a ``root`` nor a folder; the
            message lists the names there are.
    """
    config_file = DATA_CONFIG_DIR / f"{name}.yaml"
    if config_file.is_file():
        # the raw value: its interpolations resolve against `paths` below
        root = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False).get("root")
        if root is None:
            raise ConfigError(f"collection {name!r}: {config_file} sets no root (a BEIR folder)")
        resolved = OmegaConf.create(
            {"paths": OmegaConf.to_container(paths, resolve=True), "root": root}
        )
        return str(resolved.root)
    if Path(name).is_dir():
        return name
    raise ConfigError(
        f"collection {name!r} is neither a data config (one of {collection_names()}) nor a "
        "BEIR folder"
    )


def collection_roots(names: list[str], paths: DictConfig, key: str) -> dict[str, str]:
    """Label -> BEIR folder for each name: a data config's name, or a folder's last part.

    The label names the collection in logged metrics (``val_<label>/ndcg@10``) and tables.

    Args:
        names: data config names or folders.
        paths: the run's ``paths`` config (see :func:`collection_root`).
        key: the config key that lists the names, for messages.

    Raises:
        ConfigError: an unknown name, or two names with the same label.
    """
    roots: dict[str, str] = {}
    for name in names:
        label = name if (DATA_CONFIG_DIR / f"{name}.yaml").is_file() else Path(name).name
        if label in roots:
            raise ConfigError(f"{key}: two collections are called {label!r}; rename a folder")
        roots[label] = collection_root(name, paths)
    return roots


def training_qrels(root: str | Path, split: str) -> Path | None:
    """``<root>/qrels/train.tsv`` when the collection has it and ``split`` is another split.

    Its relevant documents are the ones a model trained on the collection saw called relevant;
    None for a collection without training judgments (a test-only collection).
    """
    path = Path(root) / "qrels" / f"{TRAINING_SPLIT}.tsv"
    return path if split != TRAINING_SPLIT and path.is_file() else None
