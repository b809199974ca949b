"""Every config file composes and instantiates; unknown keys and bad values fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from colbert_lightning.config.resolvers import CONFIG_DIR
from colbert_lightning.data import ColBERTDataModule
from colbert_lightning.modeling import ColBERTConfig
from colbert_lightning.training import ColBERTModule
from colbert_lightning.training.run import build_callbacks
from tests.conftest import tiny_config
from tests.helpers import compose_train

GROUPS = [
    "model",
    "data",
    "module",
    "speed",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "hparams_search",
    "debug",
    "variant",
]
# trainer=slurm reads its sizes from the SLURM launcher: tests/test_sweeps.py composes the pair.
OPTIONS = [
    (group, str(path.relative_to(CONFIG_DIR / group).with_suffix("")))
    for group in GROUPS
    for path in sorted((CONFIG_DIR / group).rglob("*.yaml"))
    if (group, path.stem) != ("trainer", "slurm")
]
# data=triples has no default files: give it some so that it composes to something runnable.
TRIPLES_FILES = [
    "data.train.path=t.jsonl",
    "data.dev.corpus=c",
    "data.dev.queries=q",
    "data.dev.qrels=r",
]


# Collections with test judgments only (for evaluation, suites and extra dev collections): to
# train on them a user gives training files, as for data=triples.
TEST_ONLY_COLLECTIONS = ("med", "cacm", "lisa")


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_composes_and_instantiates(group, option, tmp_path):
    needs_files = group == "data" and option in ("triples", *TEST_ONLY_COLLECTIONS)
    extra = TRIPLES_FILES if needs_files else []
    if (group, option) == ("variant", "no_contrastive"):
        # KL as the only loss: an arm of distill_scifact, which turns distillation on
        extra = ["module.distillation_weight=1"]
    cfg = compose_train(tmp_path, tmp_path / "cache", [f"{group}={option}", *extra])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert isinstance(instantiate(cfg.model), ColBERTConfig)  # weights are not loaded here
    datamodule = instantiate(cfg.data, tokenizer=_tiny_model().tokenizer)
    assert isinstance(datamodule, ColBERTDataModule)
    module = instantiate(cfg.module, model=_tiny_model())
    assert isinstance(module, ColBERTModule)
    callbacks = build_callbacks(cfg)
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


# Experiments whose figures are recorded in experiments/: run before the speed levers became the
# default, they select speed=plain to reproduce bit for bit.
RECORDED = [
    "cranfield_scratch",
    "cranfield_minilm",
    "scifact_scratch",
    "scifact_pretrained",
    "scifact_ablation",
    "distill_scifact",
]


# (document_buckets, gathered_maxsim, optimizer.fused)
LEVERS_ON = (4, True, True)
LEVERS_OFF = (1, False, None)


def _speed_levers(cfg) -> tuple:
    return cfg.module.document_buckets, cfg.module.gathered_maxsim, cfg.module.optimizer.fused


def test_the_speed_levers_are_on_by_default_and_speed_plain_turns_them_off(tmp_path):
    assert _speed_levers(compose_train(tmp_path, tmp_path, [])) == LEVERS_ON
    assert _speed_levers(compose_train(tmp_path, tmp_path, ["speed=plain"])) == LEVERS_OFF


@pytest.mark.parametrize("experiment", RECORDED)
def test_recorded_experiments_run_without_the_speed_levers(experiment, tmp_path):
    recorded = compose_train(tmp_path, tmp_path, [f"experiment={experiment}"])
    assert _speed_levers(recorded) == LEVERS_OFF
    overrides = [f"experiment={experiment}", "speed=fast"]
    assert _speed_levers(compose_train(tmp_path, tmp_path, overrides)) == LEVERS_ON


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


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        return {
            key: value
            for name, child in node.items()
            for key, value in _leaves(child, f"{prefix}{name}.").items()
        }
    return {prefix.rstrip("."): node}


ABLATIONS = sorted(
    str(path.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
    for path in (CONFIG_DIR / "experiment").rglob("*.yaml")
    if "variant:" in path.read_text()
)


@pytest.mark.parametrize("experiment", ABLATIONS)
def test_every_ablation_arm_is_a_variant_changing_one_value(experiment, tmp_path):
    """An arm is a conf/variant/ file; against the experiment's baseline it changes one leaf."""
    # compose() leaves the hydra node out: read the swept arms from the file itself
    text = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
    arms = text.split("variant:")[1].split("\n")[0].strip().split(",")
    assert "baseline" in arms and len(arms) >= 2

    def composed(arm):
        overrides = [f"experiment={experiment}", f"variant={arm}"]
        return _leaves(OmegaConf.to_container(compose_train(tmp_path, tmp_path, overrides)))

    baseline = composed("baseline")
    for arm in arms:
        if arm == "baseline":
            continue
        changed = {key for key, value in composed(arm).items() if baseline.get(key) != value}
        assert len(changed) == 1, f"{experiment}: variant={arm} changes {sorted(changed)}"


def test_model_group_holds_only_trainable_colberts_and_bm25_is_evaluate_only(tmp_path):
    from hydra import compose, initialize_config_dir

    from colbert_lightning.config.resolvers import EVALUATE_CONFIG_DIR
    from colbert_lightning.retrieval.bm25 import BM25Config

    with pytest.raises(ConfigCompositionException, match="model/bm25"):
        compose_train(tmp_path, tmp_path, ["model=bm25"])
    with initialize_config_dir(config_dir=str(EVALUATE_CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=bm25"])
    assert isinstance(instantiate(cfg.model), BM25Config)


def test_the_readme_example_adds_a_model_through_hydra_searchpath(tmp_path):
    """The README's own snippet, read from the README, composes and instantiates."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("# my_conf/model/big.yaml\n")[1].split("```")[0]
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "big.yaml").write_text(snippet)
    cfg = compose_train(
        tmp_path, tmp_path, [f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "model=big"]
    )
    model = instantiate(cfg.model)
    assert isinstance(model, ColBERTConfig)
    assert (model.encoder_config["hidden_size"], model.dim) == (256, 128)
