"""`python -m colbert_lightning.export`: a checkpoint as a colbert-ai, PyLate or hf folder."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.modeling import ColBERT
from colbert_lightning.modeling.formats import FORMATS, check_exportable, write_folder


def export(cfg: DictConfig) -> Path:
    """Load ``cfg.checkpoint`` (a ``.ckpt`` or any model folder) and write it as ``cfg.format``.

    Returns:
        The folder written.

    Raises:
        ConfigError: an unknown format, a missing checkpoint, or a setting the format cannot
            express (checked before the output folder is touched).
    """
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: expected one of {list(FORMATS)}")
    if not Path(cfg.checkpoint).exists():
        raise ConfigError(f"checkpoint={cfg.checkpoint}: no such file or folder")
    model = ColBERT.load(cfg.checkpoint).eval()
    try:
        check_exportable(model.config, cfg.format)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return write_folder(model, cfg.output, cfg.format)


def positional_output(arguments: list[str]) -> list[str]:
    """Turn a bare ``OUT`` argument into ``output=OUT`` (Hydra takes only ``key=value``).

    Example:
        >>> positional_output(["checkpoint=a.ckpt", "format=pylate", "out/model"])
        ['checkpoint=a.ckpt', 'format=pylate', 'output=out/model']
    """
    rewritten = []
    for position, argument in enumerate(arguments):
        option_value = position > 0 and arguments[position - 1] in _OPTIONS_WITH_VALUE
        bare = "=" not in argument and not argument.startswith("-") and not option_value
        rewritten.append(f"output={argument}" if bare else argument)
    return rewritten


# Hydra's command-line options that take the next argument as their value
_OPTIONS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}


@hydra.main(config_path=str(CONFIG_DIR), config_name="export", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    folder = export(cfg)
    print(f"exported {cfg.checkpoint} as format={cfg.format} to {folder}")


def main() -> None:
    """Console entry point: ``colbert-export checkpoint=CKPT format=colbert OUT``."""
    register_resolvers()
    sys.argv[1:] = positional_output(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
