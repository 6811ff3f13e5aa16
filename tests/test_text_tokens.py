"""Subword pieces (fastText character n-grams), word n-grams, their fitted vocabularies and saved state."""
import json
import time

import numpy as np
import pandas as pd
import pytest

from preprocessing import text
from preprocessing.config import TextConfig
from preprocessing.errors import DataError

TARGET = {"name": "label", "task": "classification", "classes": ["neg", "pos"], "mean": 0.0, "std": 1.0}
# "greater" and "greatest" are seen once (below min_freq 2): the pieces they share are kept
TRAIN = ["great movie", "great film", "a great cast", "not good", "not good at all", "very good film",
         "greater than expected", "the greatest movie", "a film", "a movie"]


def fit(config, texts=TRAIN):
    state, ids = text.fit(pd.Series(texts), TARGET, config)
    return state, ids, text.TextTransform(json.loads(json.dumps(state)))


def names(state, row):
    """The tokens behind a row of ids (pieces and n-grams included), padding left out."""
    table = [text.PAD, text.UNK] + state["vocab"] + state["word_ngram_vocab"] + state["subword_vocab"]
    return [table[i] for i in row if i != text.PAD_ID]


def test_an_unknown_word_becomes_its_known_pieces_instead_of_unk():
    state, _, transform = fit(TextConfig(min_freq=2, subwords="oov"))
    assert "great" in state["vocab"] and "greatly" not in state["vocab"]
    ids = transform.encode(["greatly good", "zzz good"])
    pieces = names(state, ids[0])[:-1]
    assert pieces and all(p in state["subword_vocab"] for p in pieces) and text.UNK_ID not in ids[0]
    assert pieces == ["<grea"] and names(state, ids[0])[-1] == "good"  # longest known piece; "tly>" is unseen
    assert text.segment("greatest", {"<grea", "test>", "tes", "est>"}, 3, 5) == ["<grea", "test>"]
    assert text.segment("xyz", {"<grea"}, 3, 5) == []
    assert (ids[0][:len(pieces)] >= 2 + len(state["vocab"])).all()  # piece ids follow the word ids
    assert names(state, ids[1]) == [text.UNK, "good"]  # no known piece: <unk>
    assert state["vocab_size"] == 2 + len(state["vocab"]) + len(state["subword_vocab"])
    none, _, plain = fit(TextConfig(min_freq=2, subwords="none"))
    assert none["subword_vocab"] == [] and names(none, plain.encode(["greatly good"])[0]) == [text.UNK, "good"]
    assert text.unk_share(plain.encode(["greatly good"])) > text.unk_share(ids[:1])


def test_pieces_are_fitted_on_the_train_split_only():
    state, _, transform = fit(TextConfig(min_freq=2, subwords="oov"))
    oov_train_words = {"greater", "greatest", "expected", "than", "cast", "all", "at", "very", "the"}
    allowed = {p for w in oov_train_words for p in text.subword_pieces(w, 3, 5)}
    assert set(state["subword_vocab"]) <= allowed  # oov: only pieces of the train split's own rare words
    assert all(sum(p in text.subword_pieces(w, 3, 5) for w in ("greater", "greatest")) >= 2
               for p in state["subword_vocab"] if p not in {q for w in oov_train_words - {"greater", "greatest"}
                                                             for q in text.subword_pieces(w, 3, 5)})
    before = json.dumps(state)
    ids = transform.encode(["quxquux quxquux quxquux"])  # unseen pieces stay unknown, however often in new text
    assert ids[0, :3].tolist() == [text.UNK_ID] * 3 and json.dumps(transform.state) == before
    everything, _, _ = fit(TextConfig(min_freq=2, subwords="all"))
    assert "<gre" in everything["subword_vocab"] and "<mov" in everything["subword_vocab"]  # frequent words too


def test_subwords_all_adds_the_pieces_of_every_word_after_the_words():
    state, ids, transform = fit(TextConfig(min_freq=2, subwords="all", subword_min=3, subword_max=3))
    row = names(state, ids[0])  # "great movie"
    assert row == ["great", "movie", "<gr", "gre", "rea", "eat", "at>", "<mo", "mov", "ovi", "vie", "ie>"]
    row = names(state, transform.encode(["greatly zzz movie"])[0])  # an unknown word: its known pieces only
    assert row[:2] == [text.UNK, "movie"] and row[2:6] == ["<gr", "gre", "rea", "eat"] and "<mo" in row


def test_word_ngrams_add_known_bigrams_after_the_words():
    state, ids, transform = fit(TextConfig(min_freq=2, subwords="none", word_ngrams=2))
    assert "not good" in state["word_ngram_vocab"] and "good film" not in state["word_ngram_vocab"]  # seen once
    first = 2 + len(state["vocab"])
    assert state["vocab_size"] == first + len(state["word_ngram_vocab"])
    encoded = transform.encode(["not good", "good not", "film a not good"])
    assert names(state, encoded[0]) == ["not", "good", "not good"] and encoded[0, 2] >= first
    assert names(state, encoded[1]) == ["good", "not"]  # an unseen bigram is left out, not <unk>
    assert names(state, encoded[2])[-1] == "not good" and "film a" not in names(state, encoded[2])
    # n-grams never span two texts: "a movie" ends one text and "great" starts none here
    assert all("movie great" not in names(state, row) for row in ids)
    trigrams, _, _ = fit(TextConfig(min_freq=2, subwords="none", word_ngrams=3))
    assert "not good at" not in trigrams["word_ngram_vocab"] and "not good" in trigrams["word_ngram_vocab"]


@pytest.mark.parametrize("config", [TextConfig(min_freq=2, subwords="oov"), TextConfig(min_freq=2),
                                    TextConfig(min_freq=2, word_ngrams=2, subwords="all", max_len=6),
                                    TextConfig(tokenizer="char_ngram", ngram=2, word_ngrams=2)])
def test_state_round_trip_and_batches_give_the_same_ids(config):
    state, ids, transform = fit(config)
    assert (transform.encode(TRAIN) == ids).all()
    one_by_one = np.concatenate([transform.encode([t]) for t in TRAIN])
    assert (one_by_one == ids).all()  # a text's ids do not depend on the other texts of its batch
    if config.tokenizer == "char_ngram":
        assert state["subword_vocab"] == []  # char n-gram tokens are pieces already


def test_truncation_keeps_the_first_ids_of_the_untruncated_text():
    config = TextConfig(min_freq=2, subwords="all", word_ngrams=2, max_len=64)
    state, _, transform = fit(config)
    long_text = "greatly good film not good " * 3
    full = transform.encode([long_text])[0]
    for max_len in (1, 3, 7, 20):
        short = text.TextTransform({**state, "max_len": max_len}).encode([long_text])[0]
        assert short.tolist() == full[:max_len].tolist()


def test_an_enormous_text_with_all_pieces_is_still_cheap():
    state, _, transform = fit(TextConfig(min_freq=1, subwords="all"))
    started = time.perf_counter()
    encoded = transform.encode(["좋아요 great " * 2_000_000, "great"])  # 20 million characters, cut to max_chars
    assert encoded.shape == (2, state["max_len"]) and (encoded[0] != 0).all()
    assert time.perf_counter() - started < 5


def test_version_1_states_still_load_and_unknown_versions_fail_clearly():
    state, ids, _ = fit(TextConfig(min_freq=2, subwords="none"))
    old = {k: v for k, v in state.items() if k not in ("word_ngram_vocab", "subword_vocab")}
    old["config"] = {k: v for k, v in state["config"].items()
                     if k not in ("subwords", "subword_min", "subword_max", "subword_min_freq", "max_subwords",
                                  "word_ngrams", "max_word_ngrams")}
    old["pipeline_version"] = 1
    legacy = text.TextTransform(old)
    assert legacy.config.subwords == "none" and (legacy.encode(TRAIN) == ids).all()
    with pytest.raises(DataError, match="text pipeline version 9; this torchyard applies versions 1, 2"):
        text.TextTransform({**state, "pipeline_version": 9})


def test_subword_range_is_checked():
    with pytest.raises(ValueError, match="subword_min 5 must not exceed text.subword_max 3"):
        TextConfig(subword_min=5, subword_max=3)


def test_models_ignore_the_padding_after_pieces_and_ngrams():
    import torch

    from models.text import TextNet

    state, ids, transform = fit(TextConfig(min_freq=2, word_ngrams=2))
    torch.manual_seed(0)
    model = TextNet(state["vocab_size"], 2, encoder="mean", n_layers=1, embedding_dim=8).eval()
    batch = torch.from_numpy(transform.features(pd.DataFrame({"text": ["greatly good film", "not good", ""]})))
    assert int(batch.max()) < state["vocab_size"] and batch.shape[1] > 3
    with torch.no_grad():
        assert torch.allclose(model(batch), model(torch.nn.functional.pad(batch, (0, 7))), atol=1e-6)
