"""Every config file composes and instantiates; unknown keys and bad values fail loudly."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from colbert_lightning.config.resolvers import CONFIG_DIR
from colbert_lightning.data import ColBERTDataModule
from colbert_lightning.modeling import ColBERTConfig
from colbert_lightning.training import ColBERTModule
from tests.conftest import tiny_config
from tests.helpers import compose_train

GROUPS = [
    "model",
    "data",
    "module",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "hparams_search",
    "debug",
    "variant",
]
# trainer=slurm reads its sizes from the SLURM launcher: tests/test_sweeps.py composes the pair.
# model=bm25 is an evaluation baseline: tests/test_evaluate.py uses it.
OPTIONS = [
    (group, str(path.relative_to(CONFIG_DIR / group).with_suffix("")))
    for group in GROUPS
    for path in sorted((CONFIG_DIR / group).rglob("*.yaml"))
    if (group, path.stem) not in (("trainer", "slurm"), ("model", "bm25"))
]
# data=triples has no default files: give it some so that it composes to something runnable.
TRIPLES_FILES = [
    "data.train.path=t.jsonl",
    "data.dev.corpus=c",
    "data.dev.queries=q",
    "data.dev.qrels=r",
]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_composes_and_instantiates(group, option, tmp_path):
    extra = TRIPLES_FILES if (group, option) == ("data", "triples") else []
    cfg = compose_train(tmp_path, tmp_path / "cache", [f"{group}={option}", *extra])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert isinstance(instantiate(cfg.model), ColBERTConfig)  # weights are not loaded here
    datamodule = instantiate(cfg.data, tokenizer=_tiny_model().tokenizer)
    assert isinstance(datamodule, ColBERTDataModule)
    module = instantiate(cfg.module, model=_tiny_model())
    assert isinstance(module, ColBERTModule)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer = instantiate(
        {
            **OmegaConf.to_container(cfg.trainer),
            "devices": 1,
            "strategy": "auto",
            "accelerator": "cpu",
        },
        callbacks=callbacks,
        logger=loggers or False,
    )
    if cfg.trainer.get("fast_dev_run"):
        assert trainer.fast_dev_run == 1
    else:
        assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("option", ["minilm", "bert_base", "bert_base_random"])
def test_named_encoders_keep_their_own_sizes(option, tmp_path):
    # these configs inherit tiny's ColBERT settings, but not its encoder sizes
    config = instantiate(compose_train(tmp_path, tmp_path, [f"model={option}"]).model)
    assert config.encoder_config == {}
    dropout = ["+model.encoder_config.hidden_dropout_prob=0.2"]
    config = instantiate(compose_train(tmp_path, tmp_path, [f"model={option}", *dropout]).model)
    assert config.encoder_config == {"hidden_dropout_prob": 0.2}


def test_prepare_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=[f"output_dir={tmp_path}"])
    assert cfg.split == "test" and cfg.output_dir == str(tmp_path)


_MODEL = None


def _tiny_model():
    global _MODEL
    if _MODEL is None:
        from colbert_lightning.modeling import ColBERT

        _MODEL = ColBERT.from_config(tiny_config())
    return _MODEL


@pytest.mark.parametrize(
    "override",
    ["unknown_key=1", "model.dimm=64", "data.batchsize=8", "module.optimizer.lrr=1e-3"],
)
def test_unknown_keys_fail(override, tmp_path):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose_train(tmp_path, tmp_path, [override])


def test_extra_key_in_a_leaf_fails_at_instantiation(tmp_path):
    cfg = compose_train(tmp_path, tmp_path, ["+model.dimension=64"])
    with pytest.raises(Exception, match="dimension"):
        instantiate(cfg.model)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.nway=1", "data.nway"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.on_bad_line=ignore", "data.on_bad_line"),
        ("model.query_maxlen=0", "model.query_maxlen"),
        ("model.init=scratch", "model.init"),
    ],
)
def test_impossible_values_name_the_key(override, message, tmp_path):
    cfg = compose_train(tmp_path, tmp_path, [override])
    with pytest.raises(Exception, match=message):
        instantiate(cfg.data, tokenizer=_tiny_model().tokenizer)
        instantiate(cfg.model)
