"""The best dev checkpoint holds exactly the weights whose dev score is reported as best."""

from __future__ import annotations

import pytest
import torch

from colbert_lightning.data.beir import load_dev_set
from colbert_lightning.modeling import ColBERT
from colbert_lightning.training import ColBERTModule
from colbert_lightning.training.run import train
from tests.helpers import TINY_OVERRIDES, compose_train

RUN = [
    *TINY_OVERRIDES,
    "data.num_workers=0",
    "data.batch_size=8",
    "logger=csv",
    "trainer.max_steps=2",
    "module.scheduler.warmup_steps=0",
    "callbacks.evaluation.precision=32",
    "callbacks.evaluation.schedule.first=1",
    "callbacks.evaluation.schedule.interval=1",
]


def _re_evaluate(checkpoint: str, cfg) -> dict[str, float]:
    """Load the checkpoint from disk and score it on the same dev set, in float32."""
    model = ColBERT.load(checkpoint)
    module = ColBERTModule(model, optimizer=lambda params: torch.optim.AdamW(params))
    dev = cfg.data.dev
    dev_set = load_dev_set(dev.corpus, dev.queries, dev.qrels)
    return module.evaluate_retrieval(dev_set, batch_size=64, precision="32")


@pytest.mark.parametrize("lr", [0.5, 1e-3])
def test_best_checkpoint_holds_the_evaluated_weights(tmp_path, lr):
    # lr 0.5 wrecks the model at the first step: step 0 is best (the case that was saved as
    # best-step1.ckpt with step 0's score); lr 1e-3 makes a later step best
    cfg = compose_train(tmp_path / "run", tmp_path / "cache", [*RUN, f"module.optimizer.lr={lr}"])
    results = train(cfg)
    best, path = results["best"], results["best_checkpoint"]
    assert path.endswith(f"best-step{best['step']}.ckpt")
    assert torch.load(path, weights_only=False)["global_step"] == best["step"]
    if lr == 0.5:
        assert best["step"] == 0
    again = _re_evaluate(path, cfg)
    for name in ("ndcg@10", "mrr@10", "recall@100"):
        assert again[name] == pytest.approx(best[f"val/{name}"], abs=1e-6), name
