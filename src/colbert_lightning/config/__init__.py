"""Config plumbing: checks of composed configs, resolvers, where the configs live, run metadata.

``checks`` (``ConfigError``, ``check_config``: fail before any model is built), ``resolvers``
(``${resource:...}``, ``${package_model:...}``, the wandb names; ``CONFIG_DIR``) and
``metadata`` (the git commit a run records).
"""
