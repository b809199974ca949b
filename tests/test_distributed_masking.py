"""False negatives are masked across processes when in-batch documents are gathered under DDP."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from colbert_lightning.data.collate import Collator
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling import ColBERT
from colbert_lightning.training import ColBERTModule
from tests.conftest import tiny_config
from tests.helpers import free_port, gloo_process_group

WORLD = 2
# Rows 0-1 go to rank 0, rows 2-3 to rank 1. Row 2 asks row 0's query under another id, and
# row 3's negative d1 is judged relevant to query q1 (rank 0): both false negatives cross ranks.
ROWS = [
    ("what is lift", "lift is a force on wings", "shock waves", "q1", "d1", "d3"),
    ("heat transfer", "heat flux at the wall", "boundary layers", "q2", "d4", "d5"),
    ("What is LIFT?", "wings make lift in flow", "heat flux", "q9", "d2", "d6"),
    ("shock tubes", "a normal shock wave", "lift is a force on wings", "q3", "d7", "d1"),
]
RELEVANT = {"q1": ["d1", "d2"], "q9": ["d2"], "q2": ["d4"], "q3": ["d7"]}


def _examples(rows):
    return [
        TrainingExample(query, positive, (negative,), "", qid, pid, (nid,))
        for query, positive, negative, qid, pid, nid in rows
    ]


def _module(mask: bool, world_size: int) -> ColBERTModule:
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config()).eval()
    module = ColBERTModule(
        model,
        optimizer=torch.optim.AdamW,
        gather_across_devices=True,
        mask_false_negatives=mask,
    )
    module._trainer = SimpleNamespace(world_size=world_size)  # only world_size is read
    return module


def _worker(rank: int, port: int, output: str) -> None:
    with gloo_process_group(rank, port, WORLD):
        results = []
        for mask in (True, False):
            module = _module(mask, WORLD)
            rows = ROWS[rank * 2 : rank * 2 + 2]
            batch = Collator(module.model.tokenizer, RELEVANT)(_examples(rows))
            with torch.no_grad():
                result = module.batch_loss(batch)
            values = torch.tensor([result.loss.item(), float(result.false_negatives)])
            dist.all_reduce(values)  # sum of the two ranks' mean losses and counts
            results.append(values)
        if rank == 0:
            torch.save(torch.stack(results), output)


def test_gathered_negatives_are_masked_across_processes(tmp_path):
    port = free_port()
    output = tmp_path / "results.pt"
    mp.start_processes(
        _worker, args=(port, str(output)), nprocs=WORLD, join=True, start_method="spawn"
    )
    distributed = torch.load(output)
    for row, mask in enumerate((True, False)):
        module = _module(mask, world_size=1)
        batch = Collator(module.model.tokenizer, RELEVANT)(_examples(ROWS))
        with torch.no_grad():
            single = module.batch_loss(batch)
        # equal halves: the mean of the two ranks' mean losses is the whole batch's mean
        assert abs(distributed[row, 0].item() / WORLD - single.loss.item()) < 1e-5
        assert distributed[row, 1].item() == float(single.false_negatives)
    # rows 0 and 2 mask each other's positive and d1 (row 3's negative): 4 columns, 2 across
    assert distributed[0, 1].item() == 4
    assert abs(distributed[0, 0].item() - distributed[1, 0].item()) > 1e-3
