"""``python -m colbert_lightning.pipeline [key=value ...]`` (``colbert-pipeline``): from zero.

Chains the stages of ``conf/pipeline.yaml`` (vocabulary -> mlm -> contrastive -> supervised ->
evaluate), each one the project's own command run in ``<run>/<stage>/`` with the stage's
overrides and the hand-off from the stages before it:

- vocabulary: ``tokenizer`` writes ``<run>/vocabulary/tokenizer``, which later stages read as
  their tokenizer (``tokenizer=`` for MLM, ``model.tokenizer=`` for ColBERT training);
- mlm: ``pretrain`` writes ``<run>/mlm/encoder``, which the training stages load
  (``model.init=pretrained model.name_or_path=... model.tokenizer=...``);
- contrastive: ``train data=crops`` on ``<run>/corpora.txt`` (the corpora as one text file), its
  best checkpoint by dev nDCG@10 exported to ``<run>/contrastive/colbert`` for the next stage;
- supervised: ``train``, from what came before (random weights when nothing did);
- evaluate: ``evaluate checkpoint=<the last model>``.

A stage that finished wrote ``<run>/<stage>/stage.json`` (its command, seconds and output) and is
skipped when the pipeline runs again in the same folder; a training stage stopped part-way
resumes from its ``checkpoints/last.ckpt``. ``<run>/pipeline.json`` lists the stages run so far.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.corpora import iter_corpus_texts
from colbert_lightning.modeling.checkpoints import temporary_path

log = logging.getLogger(__name__)

STAGES = ("vocabulary", "mlm", "contrastive", "supervised", "evaluate")
"""The stages, in the order they run."""
STAGE_FILE = "stage.json"
"""Written into a stage's folder when it has finished: the pipeline skips that stage."""
CORPORA_FILE = "corpora.txt"
_COMMANDS = {
    "vocabulary": "colbert_lightning.tokenizer",
    "mlm": "colbert_lightning.pretrain",
    "contrastive": "colbert_lightning.train",
    "supervised": "colbert_lightning.train",
    "evaluate": "colbert_lightning.evaluate",
}


@dataclass
class HandOff:
    """What the stages so far made, for the next one.

    Attributes:
        tokenizer: the vocabulary folder; None: each stage's config's own.
        model: a folder of ColBERT or encoder weights to start from (an MLM encoder or an
            exported ColBERT); None: random weights.
        checkpoint: the last model made, for ``evaluate`` (a ``.ckpt`` or a folder).
    """

    tokenizer: str | None = None
    model: str | None = None
    checkpoint: str | None = None


def stage_arguments(
    stage: str, cfg: DictConfig, hand_off: HandOff, stage_dir: Path, corpora_file: Path | None
) -> list[str]:
    """The command line of one stage: module, the pipeline's hand-off, then the stage's overrides.

    The stage's own overrides come last, so they win over the hand-off.

    Example:
        >>> cfg = OmegaConf.create({
        ...     "seed": 1, "corpora": ["c"], "encoder_config": {"hidden_size": 8},
        ...     "stages": {"mlm": {"overrides": ["trainer.max_steps=5"]}},
        ... })
        >>> hand_off = HandOff(tokenizer="v")
        >>> for argument in stage_arguments("mlm", cfg, hand_off, Path("r/mlm"), None):
        ...     print(argument)  # doctest: +ELLIPSIS
        /...python...
        -m
        colbert_lightning.pretrain
        hydra.run.dir='r/mlm'
        seed=1
        corpora=['c']
        encoder_config.hidden_size=8
        tokenizer='v'
        trainer.max_steps=5
    """
    arguments = [sys.executable, "-m", _COMMANDS[stage], f"hydra.run.dir={_quoted(stage_dir)}"]
    if stage in ("mlm", "contrastive", "supervised"):
        arguments.append(f"seed={cfg.seed}")
    corpora = ",".join(_quoted(corpus) for corpus in _as_list(cfg.corpora))
    sizes = OmegaConf.to_container(cfg.encoder_config, resolve=True) or {}
    if stage == "vocabulary":
        # overwrite: a folder left complete by a stage killed before stage.json was written
        arguments += [f"corpora=[{corpora}]", "overwrite=true"]
    elif stage == "mlm":
        arguments.append(f"corpora=[{corpora}]")
        arguments += [f"encoder_config.{key}={value}" for key, value in sizes.items()]
        if hand_off.tokenizer:
            arguments.append(f"tokenizer={_quoted(hand_off.tokenizer)}")
    elif stage in ("contrastive", "supervised"):
        arguments += [f"model.encoder_config.{key}={value}" for key, value in sizes.items()]
        if hand_off.model:
            arguments += ["model.init=pretrained", f"model.name_or_path={_quoted(hand_off.model)}"]
        tokenizer = hand_off.model or hand_off.tokenizer
        if tokenizer:
            arguments.append(f"model.tokenizer={_quoted(tokenizer)}")
        last = stage_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            arguments.append(f"ckpt_path={_quoted(last)}")
    elif stage == "evaluate":
        if not hand_off.checkpoint:
            raise ConfigError("stages.evaluate: no stage before it made a model to evaluate")
        arguments.append(f"checkpoint={_quoted(hand_off.checkpoint)}")
    arguments += list(cfg.stages[stage].get("overrides") or [])
    if stage == "contrastive" and corpora_file is not None:
        arguments.append(f"data.train.path={_quoted(corpora_file)}")
    return arguments


def write_corpora_file(corpora: Sequence[str], path: Path) -> int:
    """Write every document of ``corpora`` as one line of ``path`` (atomically); return the count.

    Line breaks and runs of white space inside a document become one space.
    """
    if path.is_file():
        return sum(1 for _ in path.open(encoding="utf-8"))
    staging = temporary_path(path)
    count = 0
    with staging.open("w", encoding="utf-8") as file:
        for document in tqdm(iter_corpus_texts(corpora), desc="corpora", unit="doc"):
            file.write(" ".join(document.text.split()) + "\n")
            count += 1
    os.replace(staging, path)
    return count


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run the enabled stages that have not finished, in order; return ``pipeline.json``."""
    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; the stages are {list(STAGES)}")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    enabled = [stage for stage in STAGES if cfg.stages.get(stage, {}).get("enabled", False)]
    if not enabled:
        raise ConfigError("stages: every stage is off (stages.<name>.enabled=false)")
    log.info("stages: %s", " -> ".join(enabled))
    corpora_file = None
    if "contrastive" in enabled:
        corpora_file = run_dir / CORPORA_FILE
        documents = write_corpora_file([str(c) for c in _as_list(cfg.corpora)], corpora_file)
        log.info("%d documents of the corpora in %s", documents, corpora_file)

    hand_off = HandOff()
    record: dict[str, Any] = {"stages": {}}
    for stage in enabled:
        stage_dir = run_dir / stage
        done = _read_stage(stage_dir)
        if done is None:
            arguments = stage_arguments(stage, cfg, hand_off, stage_dir, corpora_file)
            done = _run_stage(stage, arguments, stage_dir)
        else:
            log.info("%s: finished before (%s), skipped", stage, stage_dir / STAGE_FILE)
        hand_off = _hand_on(stage, stage_dir, hand_off)
        record["stages"][stage] = done
        _write_json(run_dir / "pipeline.json", record)
    record["model"] = hand_off.checkpoint
    _write_json(run_dir / "pipeline.json", record)
    return record


def _run_stage(stage: str, arguments: list[str], stage_dir: Path) -> dict[str, Any]:
    log.info("%s: %s", stage, " ".join(arguments))
    started = time.time()
    done = subprocess.run(arguments, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"stage {stage} failed (exit status {done.returncode}); its log is under "
            f"{stage_dir}. Run the pipeline again with hydra.run.dir={stage_dir.parent} to go on "
            "from this stage"
        )
    result = {"command": arguments, "seconds": round(time.time() - started, 1)}
    if stage == "contrastive":
        export = _export_best(stage_dir)
        result["export_seconds"] = export
    _write_json(stage_dir / STAGE_FILE, result)
    log.info("%s: done in %.0f s", stage, result["seconds"])
    return result


def _export_best(stage_dir: Path) -> float:
    """Export the stage's best checkpoint as a ColBERT folder (``<stage>/colbert``); seconds."""
    started = time.time()
    target = stage_dir / "colbert"
    staging = temporary_path(target)
    arguments = [
        sys.executable,
        "-m",
        "colbert_lightning.export",
        f"checkpoint={_quoted(_best_checkpoint(stage_dir))}",
        "format=colbert",
        f"output={_quoted(staging)}",
    ]
    subprocess.run(arguments, check=True)
    if target.exists():  # an export of a run stopped before its stage.json: this one replaces it
        shutil.rmtree(target)
    os.replace(staging, target)
    return round(time.time() - started, 1)


def _best_checkpoint(stage_dir: Path) -> Path:
    found = sorted((stage_dir / "checkpoints").glob("best-step*.ckpt"))
    if len(found) != 1:
        raise RuntimeError(
            f"{stage_dir / 'checkpoints'}: expected one best-step*.ckpt, found {len(found)}"
        )
    return found[0]


def _hand_on(stage: str, stage_dir: Path, hand_off: HandOff) -> HandOff:
    """What a finished stage hands to the next."""
    if stage == "vocabulary":
        return HandOff(tokenizer=str(stage_dir / "tokenizer"))
    if stage == "mlm":
        encoder = str(stage_dir / "encoder")
        return HandOff(tokenizer=encoder, model=encoder, checkpoint=encoder)
    if stage == "contrastive":
        model = str(stage_dir / "colbert")
        return HandOff(tokenizer=model, model=model, checkpoint=model)
    if stage == "supervised":
        best = str(_best_checkpoint(stage_dir))
        return HandOff(tokenizer=hand_off.tokenizer, model=hand_off.model, checkpoint=best)
    return hand_off


def _read_stage(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / STAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(path)
    staging.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(staging, path)


def _quoted(path: str | os.PathLike) -> str:
    """A path as a quoted Hydra string: commas, brackets or ``=`` in it are then plain text."""
    text = str(path)
    if "'" in text:
        raise ConfigError(f"{text}: a path with a single quote cannot be handed to a stage")
    return f"'{text}'"


def _as_list(value: Any) -> list:
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@hydra.main(config_path=str(CONFIG_DIR), config_name="pipeline", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    record = run_pipeline(cfg)
    seconds = sum(stage["seconds"] for stage in record["stages"].values())
    print(f"pipeline done ({seconds:.0f} s in stages); the last model: {record['model']}")


def main() -> None:
    """Console entry point."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
