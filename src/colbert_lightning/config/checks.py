"""Checks of a composed training config that must fail before any model is built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from colbert_lightning.data.beir import qrels_path
from colbert_lightning.schedules import resolve_warmup_steps


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what it accepts."""


def check_config(cfg: DictConfig) -> None:
    """Fail fast on impossible values and missing files, naming the key.

    Types and ranges of the model and data options are checked by the classes they instantiate
    (``ColBERTConfig``, ``ColBERTDataModule``), which the training script builds before any weight.

    Raises:
        ConfigError: the first problem found.
    """
    check_optimisation(cfg)
    _check_data_paths(cfg.data)
    if cfg.get("test_split"):
        _check_test_split(cfg.data.get("root"), cfg.test_split)
    if cfg.get("ckpt_path"):
        _check_file("ckpt_path", Path(cfg.ckpt_path), "checkpoint file")
    _check_writable("paths.output_dir", Path(cfg.paths.output_dir))


def check_beir_root(root: str | os.PathLike | None, key: str = "data.root", hint: str = "") -> Path:
    """``root`` as a Path, if it is a folder (a BEIR collection: corpus, queries, qrels/).

    Args:
        root: the folder a config names.
        key: the config key it came from, for the message.
        hint: what else the user could give instead, appended to the message.

    Raises:
        ConfigError: ``root`` is empty or not a folder.
    """
    if not root or not Path(root).is_dir():
        raise ConfigError(f"{key}={root}: no such BEIR folder{hint}")
    return Path(root)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_optimisation(cfg: DictConfig) -> None:
    """The steps, warm-up and learning rate of a training (or pretraining) config, by key.

    Raises:
        ConfigError: ``trainer.max_steps`` is not a positive integer (unless
            ``trainer.fast_dev_run``), the warm-up does not fit in it, or
            ``module.optimizer.lr`` is not a positive number.
    """
    max_steps = cfg.trainer.get("max_steps")
    if not cfg.trainer.get("fast_dev_run"):
        if not _is_int(max_steps) or max_steps < 1:
            raise ConfigError(f"trainer.max_steps must be a positive integer, got {max_steps!r}")
        scheduler = cfg.module.get("scheduler")
        if scheduler is not None and "warmup_steps" in scheduler:
            try:
                resolve_warmup_steps(scheduler.warmup_steps, max_steps)
            except ValueError as error:
                raise ConfigError(str(error)) from None
    lr = cfg.module.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
        raise ConfigError(f"module.optimizer.lr must be a positive number, got {lr!r}")


def _check_data_paths(data: DictConfig) -> None:
    if data.get("root"):
        check_beir_root(data.root)
    prepare = data.get("prepare")
    produced_under = Path(prepare.output_dir).resolve() if prepare else None
    if prepare:
        check_beir_root(prepare.root, "data.prepare.root")
    files = [("data.train", data.train)]
    if data.get("dev") is not None:
        files.append(("data.dev", data.dev))
    if prepare and Path(prepare.output_dir).exists() and not produced_under.is_dir():
        raise ConfigError(f"data.prepare.output_dir={prepare.output_dir}: is a file, not a folder")
    for group, node in files:
        for key, value in node.items():
            if key in ("_target_", "format") or value is None:
                continue
            path = Path(str(value))
            made_by_prepare = produced_under in path.resolve().parents if produced_under else False
            if path.exists() or not made_by_prepare:
                _check_file(f"{group}.{key}", path)


def _check_file(key: str, path: Path, what: str = "file") -> None:
    """``path`` is a file (or a link to one): not missing, not a folder."""
    if path.is_dir():
        raise ConfigError(f"{key}={path}: is a folder, not a {what}")
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no such {what}")


def _check_test_split(root: str | None, split: str) -> None:
    check_beir_root(root, hint=f": test_split={split} needs the BEIR folder holding qrels/")
    try:
        qrels_path(root, split)
    except (FileNotFoundError, IsADirectoryError) as error:
        raise ConfigError(f"test_split={split}: {error}") from None


def _check_writable(key: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{key}={folder}: cannot create the folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={folder}: the folder is not writable")
