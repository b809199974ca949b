"""The Hydra configs, installed as the package ``colbert_lightning.conf`` (see pyproject.toml)."""
