"""Text preprocessing, text models and their ONNX export, without Prefect or MLflow."""
import json
import time
import unicodedata

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from models import build_model
from models.config import ModelConfig
from preprocessing import text
from preprocessing.config import DataConfig, TextConfig
from preprocessing.errors import DataError
from preprocessing.samples import reviews
from preprocessing.sources import read_table
from serving.export import export_onnx, parity
from training.data import TokenData

TARGET = {"name": "label", "task": "classification", "classes": ["neg", "pos"], "mean": 0.0, "std": 1.0}
MIXED = "<p>이 영화 정말 좋아요!!</p> ＡＭＡＺＩＮＧ😀 see https://ex.com/a?b=1, mail kim@ex.co.kr, 3,000원 ㅋㅋ"


def tokens_of(texts, config=TextConfig(min_freq=1)):
    state, ids = text.fit(pd.Series(texts), TARGET, config)
    vocab = [text.PAD, text.UNK] + state["vocab"]
    return [[vocab[i] for i in row if i] for row in ids], state


def test_cleaning_keeps_hangul_and_emoji_and_applies_each_step():
    cleaned = text.clean([MIXED], TextConfig())[0].split()
    assert cleaned == ["이", "영화", "정말", "좋아요", "amazing😀", "see", "xxurl", "mail", "xxemail", "xxnum", "원",
                       unicodedata.normalize("NFKC", "ㅋㅋ")]
    # NFKC keeps Hangul syllables composed (pyarrow's own NFKC would split them into jamo)
    assert len("좋아요") == 3 and "좋아요" in cleaned
    kept = text.clean([MIXED], TextConfig(normalize="none", lowercase=False, strip_html=False, urls="keep",
                                          emails="remove", numbers="keep", remove_punctuation=False))[0]
    assert "<p>" in kept and "https://ex.com/a?b=1" in kept and "kim@" not in kept and "3,000원" in kept
    assert "ＡＭＡＺＩＮＧ" in kept and "!!" in kept


def test_word_tokens_split_on_unicode_boundaries_and_set_emoji_apart():
    rows, _ = tokens_of(["좋아요😀great", "❤️👨‍👩‍👧 love", "don't stop"])
    assert rows[0] == ["좋아요", "😀", "great"]
    assert rows[1] == ["❤️👨‍👩‍👧", "love"]  # one emoji sequence, variation selector and joiners included
    assert rows[2] == ["don", "t", "stop"]  # punctuation removed, words kept


def test_char_ngrams_for_text_without_spaces():
    rows, state = tokens_of(["오늘날씨좋다", "ab"], TextConfig(tokenizer="char_ngram", ngram=2, min_freq=1))
    assert rows[0] == ["오늘", "늘날", "날씨", "씨좋", "좋다"] and rows[1] == ["ab"]
    transform = text.TextTransform(json.loads(json.dumps(state)))
    assert (transform.encode(["오늘날씨"])[0, :3] > text.UNK_ID).all()


def test_vocabulary_is_fitted_on_train_only_with_min_freq_and_max_vocab():
    train = ["a a a b b c", "a b d"] * 2  # a:8 b:6 c:2 d:2
    state, ids = text.fit(pd.Series(train), TARGET, TextConfig(min_freq=3, max_len=8, subwords="none"))
    assert state["vocab"] == ["a", "b"] and state["vocab_size"] == 4
    assert state["stats"]["vocab_before"] == 4 and state["stats"]["vocab_after"] == 2
    assert state["stats"]["train_unk_share"] == pytest.approx(4 / 18)
    assert ids[0].tolist() == [2, 2, 2, 3, 3, 1, 0, 0]  # c -> <unk>, then padding
    transform = text.TextTransform(state)
    val = transform.encode(["a zebra b", "unseen words only"])
    assert val[0, :3].tolist() == [2, 1, 3] and text.unk_share(val) == pytest.approx(4 / 6)
    limited, _ = text.fit(pd.Series(train), TARGET, TextConfig(min_freq=1, max_vocab=3, subwords="none"))
    assert limited["vocab"] == ["a", "b", "c"]  # ties broken by text, so refits agree


def test_max_len_defaults_to_a_percentile_and_long_texts_are_truncated_cheaply():
    train = [" ".join(["w"] * n) for n in range(1, 101)]
    state, ids = text.fit(pd.Series(train), TARGET, TextConfig(min_freq=1, subwords="none"))
    assert state["max_len"] == 96 and ids.shape == (100, 96)
    capped, _ = text.fit(pd.Series(train), TARGET, TextConfig(min_freq=1, max_len_cap=20, subwords="none"))
    assert capped["max_len"] == 20
    huge = "좋아요 " * 2_000_000  # 8 million characters
    started = time.perf_counter()
    encoded = text.TextTransform(state).encode([huge, "w"])
    assert encoded.shape == (2, 96) and (encoded[0] != 0).all()
    assert time.perf_counter() - started < 5  # cut to max_chars before cleaning, not tokenized whole


def test_state_round_trips_through_json_and_features_trim_padding():
    frame = reviews(200)
    state, train_ids = text.fit(frame["text"], TARGET, TextConfig())
    transform = text.TextTransform(json.loads(json.dumps(state)))
    assert (transform.encode(frame["text"]) == train_ids).all()
    features = transform.features(pd.DataFrame({"text": ["정말 재미있어요", None, 42]}))
    assert features.dtype == np.int64 and (features[1] == 0).all() and (features[0] != 0).all()  # trimmed to row 0
    words = text.TextTransform(text.fit(frame["text"], TARGET, TextConfig(subwords="none"))[0])
    assert words.features(pd.DataFrame({"text": ["정말 재미있어요", None, 42]})).shape == (3, 2)
    with pytest.raises(DataError, match="has no text column 'text'"):
        transform.features(pd.DataFrame({"review": ["x"]}), "new.csv")


def _frame(texts, labels):
    return pd.DataFrame({"text": texts, "label": labels})


def test_validation_drops_and_counts_empty_and_null_texts():
    frame = _frame(["좋아", "", None, "   ", "싫어", "좋아요", "별로", "최고", "최악"],
                   ["p", "n", "p", "n", "n", "p", "n", "p", "n"])
    kept, schema = text.validate_texts(frame, DataConfig(data_type="text"), TextConfig(), "t.csv")
    assert len(kept) == 6 and schema.classes == ["n", "p"]
    assert any("dropped 3 rows whose text 'text' is empty or null (1 null, 2 blank)" in n for n in schema.notes)


@pytest.mark.parametrize("frame, config, message", [
    (_frame(["", None, " "], ["a", "b", "a"]), TextConfig(), "has no text: all 3 rows are empty or null"),
    (_frame([1.5, 2.0, 3.0], ["a", "b", "a"]), TextConfig(), "text column 'text' in t.csv holds numbers"),
    (_frame(["a", "b", "c", "d", "e", "f", "g"], ["x", "x", "x", "y", "y", "y", "z"]), TextConfig(),
     "class 'z' of target 'label' in t.csv has only 1 row"),
    (_frame(["a"], ["x"]), TextConfig(text_column="review"), "text column 'review' not found in t.csv"),
])
def test_bad_text_tables(frame, config, message):
    with pytest.raises(DataError, match=message):
        text.validate_texts(frame, DataConfig(data_type="text"), config, "t.csv")


def test_invalid_utf8_names_the_row_or_is_replaced_and_counted(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes("text,label\n좋아요,p\n".encode() + "별로".encode("cp949") + b",n\n")
    with pytest.raises(DataError, match=r"mixed.csv is not valid UTF-8 text: line 3 \(data row 2\)"):
        read_table(str(path))
    frame = read_table(str(path), encoding_errors="replace")
    assert frame["text"][0] == "좋아요" and "\ufffd" in frame["text"][1]
    assert frame.attrs["replaced_characters"] >= 1


ENCODERS = ["mean", "cnn", "lstm", "gru", "transformer"]


def _model(encoder, vocab=40, outputs=3):
    torch.manual_seed(0)
    config = ModelConfig(type="text", encoder=encoder, n_layers=2, hidden_size=16, embedding_dim=16)
    return build_model(config, vocab, outputs).eval()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_outputs_do_not_depend_on_padding(encoder):
    model = _model(encoder)
    ids = torch.randint(2, 40, (3, 6))
    ids[1, 3:] = 0
    ids[2] = 0  # an empty text
    with torch.no_grad():
        short, padded = model(ids), model(torch.nn.functional.pad(ids, (0, 5)))
    assert torch.isfinite(short).all()
    assert torch.allclose(short, padded, atol=1e-5)
    with torch.no_grad():  # and the tokens matter: a changed token changes the output
        changed = ids.clone()
        changed[0, 0] = 1
        assert not torch.allclose(model(changed)[0], short[0])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_onnx_export_has_dynamic_batch_and_token_axes(encoder):
    model = torch.nn.Sequential(_model(encoder), torch.nn.Softmax(dim=1)).eval()
    example = torch.randint(2, 40, (4, 5))
    onnx_bytes = export_onnx(model, example, "probabilities", "token_ids")
    other = np.random.default_rng(0).integers(2, 40, (7, 13)).astype(np.int64)
    other[0, 4:] = 0
    assert parity(onnx_bytes, model, other, 1e-4) < 1e-4
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "token_ids" and session.get_inputs()[0].type == "tensor(int64)"


def test_token_batches_are_cut_to_their_longest_text():
    ids = torch.zeros((4, 10), dtype=torch.int64)
    ids[0, :2], ids[1, :3], ids[2, :1] = 5, 6, 7
    data = TokenData(ids, torch.arange(4), batch_size=2)
    assert [b.shape[1] for b, _ in data.ordered()] == [3, 1]
    widths = {b.shape[1] for b, _ in data.epoch(torch.Generator().manual_seed(0))}
    assert widths <= {1, 2, 3} and max(widths) <= 3


def test_transformer_heads_must_divide_the_embedding():
    with pytest.raises(ValueError, match="divisible by model.n_heads"):
        ModelConfig(type="text", encoder="transformer", embedding_dim=30, n_heads=4)
