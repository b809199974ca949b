"""The WordPiece vocabulary trained on corpora (``pretraining/vocabulary.py``, ``tokenizer.py``).

One vocabulary is trained on the shipped Cranfield through the ``tokenizer`` config and shared;
the other tests train on a few lines under ``tmp_path`` (milliseconds each).
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.modeling import ColBERT, ColBERTConfig, ColBERTTokenizer
from colbert_lightning.pretraining import vocabulary
from colbert_lightning.pretraining.vocabulary import (
    MANIFEST_FILE,
    SPECIAL_TOKENS,
    read_vocabulary_manifest,
    train_vocabulary,
)
from colbert_lightning.resources import resource_path
from colbert_lightning.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY_ENCODER = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}
NOTES = ["Lift and drag of a Wing.", "The drag of a wing, at high speed?", "lift LIFT Lift éclair"]
# the contract, spelt out (not derived from SPECIAL_TOKENS, which it checks)
ID = {"[PAD]": 0, "[unused0]": 1, "[unused1]": 2, "[UNK]": 3, "[CLS]": 4, "[SEP]": 5, "[MASK]": 6}


def _compose_tokenizer(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("tokenizer", overrides=overrides)


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory) -> Path:
    """The default config's vocabulary: Cranfield, 4096 tokens, uncased."""
    folder = tmp_path_factory.mktemp("cranfield") / "tokenizer"
    cfg = _compose_tokenizer([f"output_dir={folder}"])
    assert cfg.corpora == [resource_path("cranfield")] and cfg.vocab_size == 4096
    result = train_tokenizer(cfg)
    assert (result.output_dir, result.documents, result.vocab_size) == (str(folder), 1398, 4096)
    return folder


def _notes(tmp_path: Path, lines: list[str] = NOTES, repeat: int = 3) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(lines * repeat) + "\n", encoding="utf-8")
    return path


def _colbert_config(folder: Path) -> ColBERTConfig:
    return ColBERTConfig(
        init="random", tokenizer=str(folder), encoder_config=TINY_ENCODER, query_maxlen=12
    )


def test_text_of_vocabulary_words_comes_back_lower_cased(cranfield):
    tokenizer = AutoTokenizer.from_pretrained(cranfield)
    text = "The Boundary Layer of Aerodynamicists, and its Unsteadiness at high Mach numbers?"
    tokens = tokenizer.tokenize(text)
    assert "[UNK]" not in tokens and any(token.startswith("##") for token in tokens)
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == ID["[CLS]"] and ids[-1] == ID["[SEP]"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    # tokenizer.json alone, as the tokenizers library (and transformers 4) reads it
    raw = Tokenizer.from_file(str(cranfield / "tokenizer.json"))
    assert raw.encode(text).ids == ids
    assert raw.decode(ids) == text.lower()


def test_special_tokens_are_single_tokens_at_fixed_ids(cranfield):
    lines = (cranfield / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4096 and lines[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    tokenizer = AutoTokenizer.from_pretrained(cranfield)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(ID.values())
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (ID["[PAD]"], ID["[UNK]"])
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id) == (ID["[CLS]"], ID["[SEP]"])
    assert tokenizer.mask_token_id == ID["[MASK]"]
    for token in SPECIAL_TOKENS:  # never split, even glued to words
        ids = tokenizer(f"lift{token}drag", add_special_tokens=False)["input_ids"]
        assert ids.count(ID[token]) == 1, (token, tokenizer.convert_ids_to_tokens(ids))
    pair = tokenizer("lift", "drag")
    assert tokenizer.convert_ids_to_tokens(pair["input_ids"]) == [
        "[CLS]",
        "lift",
        "[SEP]",
        "drag",
        "[SEP]",
    ]
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1]
    config = json.loads((cranfield / "tokenizer_config.json").read_text())
    assert tokenizer.model_max_length == config["model_max_length"] == 512
    assert type(tokenizer).__name__ in ("BertTokenizer", "BertTokenizerFast")


def test_the_same_corpora_give_the_same_ids(cranfield, tmp_path):
    # the trainer numbers equally frequent pieces in another order on every call, even in one
    # process: ~150 of Cranfield's 4,096 ids moved from call to call before the sorting
    again = tmp_path / "again"
    train_tokenizer(_compose_tokenizer([f"output_dir={again}"]))
    for name in ("vocab.txt", "tokenizer.json"):
        assert (again / name).read_text(encoding="utf-8") == (cranfield / name).read_text(
            encoding="utf-8"
        ), name


def test_manifest_says_what_was_trained(cranfield):
    manifest = read_vocabulary_manifest(cranfield)
    assert manifest["corpora"] == [resource_path("cranfield")]
    assert manifest["vocab_size_requested"] == manifest["vocab_size"] == 4096
    assert manifest["documents"] == 1398 and manifest["lowercase"] is True
    assert manifest["special_tokens"] == ID and set(manifest["versions"]) == {
        "tokenizers",
        "transformers",
    }
    assert read_vocabulary_manifest(cranfield.parent) is None


def test_skiplist_holds_the_new_ids_of_punctuation(cranfield):
    # Cranfield has no '@', '~', '!' or ';': they are in the vocabulary all the same
    tokenizer = ColBERTTokenizer.from_config(_colbert_config(cranfield))
    vocab = tokenizer.tokenizer.get_vocab()
    expected = sorted(vocab[symbol] for symbol in string.punctuation)
    assert tokenizer.skiplist == expected and len(expected) == len(string.punctuation)
    assert ID["[UNK]"] not in tokenizer.skiplist
    documents = tokenizer.documents(["lift, drag. speed?"])
    texts = tokenizer.tokenizer.convert_ids_to_tokens(documents.input_ids[0])
    scored = [text for text, kept in zip(texts, documents.scored_mask[0], strict=True) if kept]
    assert scored == ["[CLS]", "[unused1]", "lift", "drag", "speed", "[SEP]"]


def test_colbert_layout_and_model_use_the_new_ids(cranfield):
    config = _colbert_config(cranfield)
    tokenizer = ColBERTTokenizer.from_config(config)
    words = AutoTokenizer.from_pretrained(cranfield)("what is lift", add_special_tokens=False)
    words = words["input_ids"]
    queries = tokenizer.queries(["What is lift"])
    cls, sep, mask = ID["[CLS]"], ID["[SEP]"], ID["[MASK]"]
    expected = [cls, ID["[unused0]"], *words, sep] + [mask] * (12 - len(words) - 3)
    assert queries.input_ids[0].tolist() == expected
    documents = tokenizer.documents(["What is lift", "lift"])
    assert documents.input_ids[0].tolist() == [cls, ID["[unused1]"], *words, sep]
    assert documents.input_ids[1, :2].tolist() == [cls, ID["[unused1]"]]
    assert documents.input_ids[1, -1].item() == ID["[PAD]"]
    model = ColBERT.from_config(config, tokenizer)
    assert model.encoder.get_input_embeddings().num_embeddings == 4096
    assert model.score_texts(["what is lift"], ["lift, drag", "speed"]).shape == (1, 2)


def test_lowercase_is_honoured_both_ways(tmp_path):
    corpus = _notes(tmp_path)
    uncased = AutoTokenizer.from_pretrained(
        train_vocabulary(
            corpus, tmp_path / "uncased", vocab_size=200, show_progress=False
        ).output_dir
    )
    cased_folder = tmp_path / "cased"
    train_vocabulary(corpus, cased_folder, vocab_size=200, lowercase=False, show_progress=False)
    cased = AutoTokenizer.from_pretrained(cased_folder)
    assert uncased.do_lower_case is True and cased.do_lower_case is False
    assert read_vocabulary_manifest(cased_folder)["lowercase"] is False
    assert uncased.tokenize("Lift LIFT éclair") == uncased.tokenize("lift lift eclair")
    assert "Lift" in cased.get_vocab() and "lift" in cased.get_vocab()
    assert cased.tokenize("Lift") != cased.tokenize("lift")
    ids = cased("The drag of a Wing", add_special_tokens=False)["input_ids"]
    assert cased.decode(ids) == "The drag of a Wing"


def test_max_documents_reads_only_the_first(tmp_path):
    corpus = _notes(tmp_path, repeat=10)
    result = train_vocabulary(
        corpus, tmp_path / "v", vocab_size=100, max_documents=4, show_progress=False
    )
    assert result.documents == 4 and read_vocabulary_manifest(result.output_dir)["documents"] == 4
    assert result.vocab_size == len(AutoTokenizer.from_pretrained(result.output_dir))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"vocab_size": 7}, "vocab_size must be an integer above the 7 special tokens"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"max_documents": 0}, "max_documents"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        train_vocabulary(_notes(tmp_path), tmp_path / "v", show_progress=False, **arguments)


def test_corpora_without_a_document_are_refused(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match=r"no document .*/blank\.txt: every line is blank"):
        train_vocabulary(tmp_path / "blank.txt", tmp_path / "v", show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["blank.txt"]


def test_a_malformed_beir_line_names_its_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    good = json.dumps({"_id": "d1", "title": "", "text": "lift and drag"})
    corpus.write_text(f"{good}\n{good}\n{{not json\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"{corpus}:3: "):
        train_vocabulary(corpus, tmp_path / "v", vocab_size=100, show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl"]


class _FailingAutoTokenizer:
    @staticmethod
    def from_pretrained(folder):
        assert (Path(folder) / "vocab.txt").is_file()  # the files are written by then
        raise RuntimeError("interrupted")


def test_a_failure_while_writing_leaves_no_folder_and_the_old_one_intact(tmp_path, monkeypatch):
    corpus = _notes(tmp_path)
    monkeypatch.setattr(vocabulary, "AutoTokenizer", _FailingAutoTokenizer)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_vocabulary(corpus, tmp_path / "v", vocab_size=100, show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    monkeypatch.undo()
    train_vocabulary(corpus, tmp_path / "v", vocab_size=100, show_progress=False)
    before = {path.name: path.read_bytes() for path in (tmp_path / "v").iterdir()}
    monkeypatch.setattr(vocabulary, "AutoTokenizer", _FailingAutoTokenizer)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_vocabulary(
            corpus, tmp_path / "v", vocab_size=150, overwrite=True, show_progress=False
        )
    assert {path.name: path.read_bytes() for path in (tmp_path / "v").iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "v"]


def test_an_existing_folder_is_refused_unless_overwrite(tmp_path):
    corpus, folder = _notes(tmp_path), tmp_path / "v"
    folder.mkdir()  # an empty folder is filled
    train_vocabulary(corpus, folder, vocab_size=100, show_progress=False)
    with pytest.raises(FileExistsError, match=rf"output_dir={folder} exists .* overwrite=true"):
        train_vocabulary(corpus, folder, vocab_size=150, show_progress=False)
    assert read_vocabulary_manifest(folder)["vocab_size_requested"] == 100
    train_vocabulary(corpus, folder, vocab_size=150, overwrite=True, show_progress=False)
    assert read_vocabulary_manifest(folder)["vocab_size_requested"] == 150
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "v"]
    # overwrite replaces a vocabulary, never a folder of other files (a mistyped path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"holds no {MANIFEST_FILE}"):
        train_vocabulary(corpus, other, vocab_size=100, overwrite=True, show_progress=False)
    assert os.listdir(other) == ["keep.txt"]


def test_command_line_writes_the_folder_into_the_run_folder(tmp_path):
    corpus = _notes(tmp_path)
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "colbert_lightning.tokenizer",
            f"corpora=[{corpus}]",
            "vocab_size=150",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run / "tokenizer")
    manifest = read_vocabulary_manifest(run / "tokenizer")
    assert manifest["documents"] == 9 and manifest["corpora"] == [str(corpus)]
    assert "vocabulary of" in (run / "tokenizer.log").read_text()
    assert (run / ".hydra" / "config.yaml").is_file()
