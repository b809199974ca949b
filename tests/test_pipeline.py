"""The from-zero pipeline: each stage gets the folder the stage before it made, finished stages
are skipped, a stopped training stage resumes, and a tiny real run goes through every stage."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from colbert_lightning import pipeline
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.pipeline import run_pipeline, write_corpora_file
from tests.helpers import REPO


def _compose(run_dir: Path, overrides: list[str] = ()):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "pipeline",
            overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={run_dir}", *overrides],
        )


def _value(arguments: list[str], key: str) -> str | None:
    """The value of ``key=...`` among a stage's arguments, unquoted; None when absent."""
    found = [a.split("=", 1)[1] for a in arguments if a.startswith(f"{key}=")]
    assert len(found) <= 1, f"{key} given twice: {found}"
    return found[0].strip("'") if found else None


class FakeStages:
    """Stands in for ``subprocess.run``: records each command and makes what the stage makes."""

    def __init__(self, fail: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.fail = fail

    def __call__(self, arguments, check=False, **_):
        self.commands.append(list(arguments))
        module = arguments[2]
        if module == "colbert_lightning.export":
            Path(_value(arguments, "output")).mkdir(parents=True)
            return subprocess.CompletedProcess(arguments, 0)
        stage_dir = Path(_value(arguments, "hydra.run.dir"))
        if stage_dir.name == self.fail:
            return subprocess.CompletedProcess(arguments, 1)
        made = {
            "colbert_lightning.tokenizer": ["tokenizer"],
            "colbert_lightning.pretrain": ["encoder"],
            "colbert_lightning.train": ["checkpoints"],
            "colbert_lightning.evaluate": [],
        }[module]
        for folder in made:
            (stage_dir / folder).mkdir(parents=True, exist_ok=True)
        if module == "colbert_lightning.train":
            (stage_dir / "checkpoints" / "best-step3.ckpt").write_bytes(b"")
        return subprocess.CompletedProcess(arguments, 0)

    def stages(self) -> list[str]:
        return [
            Path(_value(c, "hydra.run.dir")).name
            for c in self.commands
            if c[2] != "colbert_lightning.export"
        ]

    def of(self, stage: str) -> list[str]:
        (command,) = [
            c
            for c in self.commands
            if c[2] != "colbert_lightning.export" and Path(_value(c, "hydra.run.dir")).name == stage
        ]
        return command


def test_each_stage_gets_the_folder_the_stage_before_made(tmp_path, monkeypatch):
    fake = FakeStages()
    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    run = tmp_path / "run"
    record = run_pipeline(_compose(run, ["stages.evaluate.enabled=true"]))

    assert fake.stages() == ["vocabulary", "mlm", "contrastive", "supervised", "evaluate"]
    mlm, contrastive = fake.of("mlm"), fake.of("contrastive")
    supervised, evaluate = fake.of("supervised"), fake.of("evaluate")
    assert _value(mlm, "tokenizer") == f"{run}/vocabulary/tokenizer"
    assert _value(contrastive, "model.init") == "pretrained"
    assert _value(contrastive, "model.name_or_path") == f"{run}/mlm/encoder"
    assert _value(contrastive, "model.tokenizer") == f"{run}/mlm/encoder"
    assert _value(contrastive, "data.train.path") == f"{run}/corpora.txt"
    assert _value(supervised, "model.name_or_path") == f"{run}/contrastive/colbert"
    assert _value(supervised, "model.tokenizer") == f"{run}/contrastive/colbert"
    assert _value(evaluate, "checkpoint") == f"{run}/supervised/checkpoints/best-step3.ckpt"
    # the contrastive stage's best checkpoint was exported to the folder the next stage loads
    (export,) = [c for c in fake.commands if c[2] == "colbert_lightning.export"]
    assert _value(export, "checkpoint") == f"{run}/contrastive/checkpoints/best-step3.ckpt"
    assert (run / "contrastive" / "colbert").is_dir()
    # every stage had the pipeline's seed and sizes, the stage's own overrides last
    for stage in ("mlm", "contrastive", "supervised"):
        assert _value(fake.of(stage), "seed") == "42"
    assert _value(mlm, "encoder_config.hidden_size") == "128"
    assert _value(supervised, "model.encoder_config.num_hidden_layers") == "2"
    assert contrastive[-2:] == ["trainer.max_steps=200", f"data.train.path='{run}/corpora.txt'"]
    assert set(record["stages"]) == {"vocabulary", "mlm", "contrastive", "supervised", "evaluate"}
    assert record["model"] == f"{run}/supervised/checkpoints/best-step3.ckpt"
    assert json.loads((run / "pipeline.json").read_text())["model"] == record["model"]


def test_a_finished_stage_is_skipped_and_a_stopped_one_resumes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    failing = FakeStages(fail="contrastive")
    monkeypatch.setattr(pipeline.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="stage contrastive failed"):
        run_pipeline(_compose(run))
    assert (run / "mlm" / "stage.json").is_file()
    assert not (run / "contrastive" / "stage.json").exists()
    # the stopped stage had written a last checkpoint before it stopped
    (run / "contrastive" / "checkpoints").mkdir(parents=True)
    (run / "contrastive" / "checkpoints" / "last.ckpt").write_bytes(b"")
    # and an export of it, stopped before stage.json: the new export replaces it
    (run / "contrastive" / "colbert").mkdir()
    (run / "contrastive" / "colbert" / "stale.txt").write_text("")

    again = FakeStages()
    monkeypatch.setattr(pipeline.subprocess, "run", again)
    run_pipeline(_compose(run))
    assert again.stages() == ["contrastive", "supervised"]
    contrastive = again.of("contrastive")
    assert _value(contrastive, "ckpt_path") == f"{run}/contrastive/checkpoints/last.ckpt"
    assert _value(contrastive, "model.name_or_path") == f"{run}/mlm/encoder"  # from stage.json
    assert _value(again.of("supervised"), "ckpt_path") is None
    assert not (run / "contrastive" / "colbert" / "stale.txt").exists()
    assert (run / "contrastive" / "colbert").is_dir()


def test_stages_switched_off_hand_on_what_came_before(tmp_path, monkeypatch):
    fake = FakeStages()
    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    run = tmp_path / "run"
    run_pipeline(_compose(run, ["stages.mlm.enabled=false", "stages.contrastive.enabled=false"]))
    assert fake.stages() == ["vocabulary", "supervised"]
    supervised = fake.of("supervised")
    assert _value(supervised, "model.tokenizer") == f"{run}/vocabulary/tokenizer"
    assert _value(supervised, "model.init") is None  # the model config's own: random weights
    assert not (run / "corpora.txt").exists()  # only the contrastive stage reads it

    with pytest.raises(Exception, match="unknown"):
        run_pipeline(_compose(tmp_path / "other", ["+stages.finetune.enabled=true"]))
    with pytest.raises(Exception, match="no stage before it made a model"):
        run_pipeline(
            _compose(
                tmp_path / "third",
                [f"stages.{s}.enabled=false" for s in ("mlm", "contrastive", "supervised")]
                + ["stages.evaluate.enabled=true"],
            )
        )


def test_the_corpora_file_holds_every_document_on_one_line(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    records = [
        {"_id": "a", "title": "Wings", "text": "lift\nand  drag"},
        {"_id": "b", "title": "", "text": "shock waves"},
    ]
    with gzip.open(beir / "corpus.jsonl.gz", "wt") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    notes = tmp_path / "notes.txt"
    notes.write_text("boundary layer\n\nheat\ttransfer\n")
    target = tmp_path / "corpora.txt"
    assert write_corpora_file([str(beir), str(notes)], target) == 4
    assert target.read_text().splitlines() == [
        "Wings lift and drag",
        "shock waves",
        "boundary layer",
        "heat transfer",
    ]


def test_a_tiny_pipeline_runs_every_stage_for_real(tmp_path):
    sizes = [
        "encoder_config.hidden_size=32",
        "encoder_config.num_hidden_layers=1",
        "encoder_config.num_attention_heads=2",
        "encoder_config.intermediate_size=64",
    ]
    training = [
        "trainer.max_steps=2",
        "cpu_threads=1",
        "model.dim=16",
        "model.doc_maxlen=48",
        "model.query_maxlen=16",
        "data.batch_size=4",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    run = tmp_path / "run"

    def quoted(overrides: list[str]) -> str:
        return "[" + ",".join(f'"{o}"' for o in overrides) + "]"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "colbert_lightning.pipeline",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *sizes,
            "stages.vocabulary.overrides=" + quoted(["vocab_size=600"]),
            "stages.mlm.overrides="
            + quoted(["trainer.max_steps=3", "cpu_threads=1", "data.batch_size=4"]),
            "stages.contrastive.overrides="
            + quoted(["data=crops", f"paths.cache_dir={tmp_path / 'cache'}", *training]),
            "stages.supervised.overrides="
            + quoted(["data=cranfield", f"paths.cache_dir={tmp_path / 'cache'}", *training]),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("vocabulary", "mlm", "contrastive", "supervised"):
        assert (run / stage / "stage.json").is_file(), stage
    vocabulary = json.loads((run / "vocabulary" / "tokenizer" / "vocabulary.json").read_text())
    assert vocabulary["vocab_size"] == 600
    # the supervised stage started from the contrastive ColBERT, every weight loaded
    results = json.loads((run / "supervised" / "results.json").read_text())
    assert results["config"]["model"]["name_or_path"] == f"{run}/contrastive/colbert"
    assert results["init"]["random"] == {}, results["init"]
    assert set(results["init"]["loaded"]) == {"encoder.embeddings", "encoder.encoder", "linear"}
    contrastive = json.loads((run / "contrastive" / "results.json").read_text())
    assert contrastive["config"]["model"]["name_or_path"] == f"{run}/mlm/encoder"
    assert list(contrastive["init"]["random"]) == ["linear"], contrastive["init"]
    pretrained = json.loads((run / "mlm" / "pretrain.json").read_text())
    assert pretrained["tokenizer"] == f"{run}/vocabulary/tokenizer"
