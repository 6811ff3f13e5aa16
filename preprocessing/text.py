"""Text preprocessing: cleaning, tokenization and a vocabulary fitted on the train split, vectorised with Apache
Arrow compute kernels (RE2 regexes, Unicode normalisation, hash-based counting and lookup) on threads.

Hugging Face `tokenizers` was measured first (bench/bench_text_pipeline.py, README): on short texts it spends its
time creating one Python Encoding object per text and ran at 3.3 MB/s here, against 23 MB/s for the same cleaning
in Arrow; pyarrow is already a dependency.

`fit` writes the cleaning steps (regex, replacement) into the state, and TextTransform applies the steps from the
state, so training, predict.py and the REST API turn raw text into the same token ids even if defaults change.

Ids, all into one embedding table: 0 = <pad> (masked by the models), 1 = <unk>, then the word vocabulary by
frequency, then the word n-grams (word_ngrams > 1), then the subword pieces (fastText-style character n-grams of
'<word>'). A text's ids are its words in order (subwords oov: an unknown word cut into known pieces in its place),
then its known word n-grams, then (subwords all) the known pieces of all its words, so that truncation to max_len
drops pieces first. Pieces are made once per distinct word of a batch (Python); the rest runs on Arrow/numpy arrays.
"""
import functools
import math
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from preprocessing.config import DataConfig, TextConfig
from preprocessing.errors import DataError
from preprocessing.targets import TargetCodec
from preprocessing.validate import TableSchema, drop_null_targets, quoted, target_task

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
PIPELINE_VERSION = 2  # 2: word n-grams and subword pieces (version-1 states still load)
LOADABLE_VERSIONS = (1, 2)
PLACEHOLDERS = {"urls": "xxurl", "emails": "xxemail", "numbers": "xxnum"}
_PATTERNS = {  # RE2 syntax (Arrow's regex engine)
    "html": r"<[^<>]{0,200}>",
    "urls": r"(?:[Hh][Tt][Tt][Pp][Ss]?://|[Ww][Ww][Ww]\.)\S+",
    "emails": r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
    "numbers": r"\d+(?:[.,]\d+)*",
    "punctuation": r"\pP+",
}
# Symbols and punctuation (with their combining marks, variation selectors and zero-width joiners, so that an emoji
# sequence stays one token) are set apart from letters; then texts are split on Unicode whitespace. Letters of every
# script, with their combining marks, stay together: Hangul syllables and jamo are letters (category L).
_ISOLATE = (r"([\pS\pP](?:[\pM\x{200D}\pS\pP])*)", r" \1 ")
PARALLEL_MIN_TEXTS = 20000
DASK_CHUNK_TEXTS = 50_000  # texts per task when cleaning runs on Dask


def cleaning_steps(config: TextConfig) -> list[list[str]]:
    """The cleaning as data: [name, regex, replacement] in order, or [name] for nfkc/lowercase. Stored in
    the state, so a model keeps the cleaning it was trained with."""
    steps = [["nfkc"]] if config.normalize == "nfkc" else []
    if config.strip_html:
        steps.append(["html", _PATTERNS["html"], " "])
    if config.lowercase:  # before the URL pattern, which then needs no case-insensitive matching
        steps.append(["lowercase"])
    for kind in ("urls", "emails", "numbers"):
        action = getattr(config, kind)
        if action != "keep":
            steps.append([kind, _PATTERNS[kind], f" {PLACEHOLDERS[kind]} " if action == "replace" else " "])
    if config.remove_punctuation:
        steps.append(["punctuation", _PATTERNS["punctuation"], " "])
    return steps


def _prepare(texts, steps: list, max_chars: int) -> tuple[pa.Array, list]:
    """Texts as one Arrow string array (nulls as ""), cut to max_chars and NFKC-normalised when the steps start
    with it, and the remaining steps. NFKC runs in Python's unicodedata: Arrow's utf8_normalize (pyarrow 25)
    decomposes Hangul syllables into jamo and never recomposes them."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    nfkc = bool(steps) and steps[0][0] == "nfkc"
    values = [(unicodedata.normalize("NFKC", v[:max_chars]) if nfkc else v[:max_chars]) if isinstance(v, str) else ""
              for v in texts]
    return pa.array(values, type=pa.large_string()), steps[1:] if nfkc else steps


def _clean_chunk(texts: pa.Array, steps: list) -> pa.Array:
    for step in steps:
        if step[0] == "lowercase":
            texts = pc.utf8_lower(texts)
        else:
            texts = pc.replace_substring_regex(texts, step[1], step[2])
    return texts


def _split_chunk(texts: pa.Array, steps: list) -> pa.Array:
    texts = _clean_chunk(texts, steps)
    texts = pc.replace_substring_regex(texts, *_ISOLATE)
    # every kind of whitespace to one space, then a literal split (2x faster than utf8_split_whitespace); the
    # empty tokens that runs of spaces leave are dropped by tokenize
    return pc.split_pattern(pc.replace_substring_regex(texts, r"[\s\pZ\x{85}]+", " "), " ")


def _chunked(function, texts: pa.Array, *args, map_chunks=None) -> pa.Array:
    """`function` over slices of `texts`: on one thread per core here (Arrow kernels release the GIL), or through
    `map_chunks(function, [args, ...])` elsewhere (Dask workers), in slices of DASK_CHUNK_TEXTS."""
    if map_chunks is not None and len(texts) > DASK_CHUNK_TEXTS:
        starts = range(0, len(texts), DASK_CHUNK_TEXTS)
        return pa.concat_arrays(map_chunks(function, [(texts.slice(s, DASK_CHUNK_TEXTS), *args) for s in starts]))
    workers = os.cpu_count() or 1
    if len(texts) < PARALLEL_MIN_TEXTS or workers == 1:
        return function(texts, *args)
    size = -(-len(texts) // workers)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda s: function(texts.slice(s, size), *args), range(0, len(texts), size)))
    return pa.concat_arrays(parts)


def clean(texts, config: TextConfig) -> list[str]:
    """The cleaned texts (for inspection and tests; tokenize does this itself)."""
    return _chunked(_clean_chunk, *_prepare(texts, cleaning_steps(config), config.max_chars)).to_pylist()


def tokenize(texts, steps: list, config: TextConfig, map_chunks=None) -> pa.LargeListArray:
    """The tokens of each text (a list array, one list per text, in order)."""
    lists = _chunked(_split_chunk, *_prepare(texts, steps, config.max_chars), map_chunks=map_chunks)
    flat, lengths = lists.flatten(), token_counts(lists)
    nonempty = pc.not_equal(flat, "")  # runs of spaces and empty texts leave empty tokens
    if not pc.all(nonempty).as_py():
        lengths = _row_sums(lengths, nonempty.to_numpy(zero_copy_only=False))
        flat = flat.filter(nonempty)
    if config.tokenizer == "char_ngram":
        flat, lengths = _ngrams(flat, lengths, config.ngram)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), flat)


def token_counts(lists: pa.Array) -> np.ndarray:
    return np.diff(lists.offsets.to_numpy()).astype(np.int64)


def _row_sums(lengths, weights) -> np.ndarray:
    """Per row, rows given by their numbers of items (`lengths`): the sum of its items' `weights`, as int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=weights,
                       minlength=len(lengths)).astype(np.int64)


def _ngrams(words: pa.Array, lengths: np.ndarray, n: int) -> tuple[pa.Array, np.ndarray]:
    grams, per_word = [], []
    for word in words.to_pylist():
        made = [word] if len(word) <= n else [word[i:i + n] for i in range(len(word) - n + 1)]
        grams += made
        per_word.append(len(made))
    return pa.array(grams, type=pa.large_string()), _row_sums(lengths, per_word)


def subword_pieces(word: str, low: int, high: int) -> list[str]:
    """fastText's character n-grams of '<word>', low..high characters long (the marks count)."""
    marked = f"<{word}>"
    return [marked[i:i + n] for n in range(low, high + 1) for i in range(len(marked) - n + 1)]


def segment(word: str, pieces: set, low: int, high: int) -> list[str]:
    """'<word>' cut into known pieces, longest first from the left (WordPiece's greedy match); characters that start
    no known piece are skipped."""
    marked, out, i = f"<{word}>", [], 0
    while i < len(marked):
        for n in range(min(high, len(marked) - i), low - 1, -1):
            if marked[i:i + n] in pieces:
                out.append(marked[i:i + n])
                i += n
                break
        else:
            i += 1
    return out


def word_ngrams(tokens: pa.Array, lengths: np.ndarray, n: int) -> tuple[pa.Array, np.ndarray]:
    """The n-grams (2..n consecutive tokens joined by a space, which no token holds) of each text: flat, grouped by
    text (bigrams first), and their number per text."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    grams, gram_rows, size = [], [], len(tokens)
    for k in range(2, n + 1):
        if size < k:
            break
        same = rows[:size - k + 1] == rows[k - 1:]
        joined = pc.binary_join_element_wise(*[tokens.slice(j, size - k + 1) for j in range(k)],
                                           pa.scalar(" ", type=pa.large_string()))
        grams.append(joined.filter(pa.array(same)))
        gram_rows.append(rows[:size - k + 1][same])
    if not grams:
        return pa.array([], type=pa.large_string()), np.zeros(len(lengths), dtype=np.int64)
    gram_rows = np.concatenate(gram_rows)
    order = np.argsort(gram_rows, kind="stable")
    flat = pa.concat_arrays([g.cast(pa.large_string()) for g in grams]).take(pa.array(order, type=pa.int64()))
    return flat, np.bincount(gram_rows, minlength=len(lengths)).astype(np.int64)


class Vocabularies:
    """The fitted token lists and where their ids start: words at 2, then word n-grams, then subword pieces."""

    def __init__(self, words: list, ngrams: list = (), subwords: list = ()):
        self.words = pa.array(list(words), type=pa.large_string())
        self.ngrams = pa.array(list(ngrams), type=pa.large_string())
        self.subwords = pa.array(list(subwords), type=pa.large_string())
        self.ngram_start = 2 + len(self.words)
        self.subword_start = self.ngram_start + len(self.ngrams)
        self.size = self.subword_start + len(self.subwords)

    @functools.cached_property
    def subword_set(self) -> set:
        return set(self.subwords.to_pylist())


def encode_lists(lists: pa.LargeListArray, vocabs: Vocabularies, config: TextConfig) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (flat int64 ids, ids per text, in the order the module docstring gives), not padded or
    truncated."""
    flat, lengths = lists.flatten(), token_counts(lists)
    mode = config.subwords if config.tokenizer == "word" and len(vocabs.subwords) else "none"
    if mode == "none":
        ids, id_lengths = lookup(flat, vocabs.words), lengths
    else:
        ids, per_token, tail, tail_per_token = _with_pieces(flat, vocabs, config, mode)
        id_lengths = _row_sums(lengths, per_token)
    if config.word_ngrams > 1 and len(vocabs.ngrams):
        grams, per_text = word_ngrams(flat, lengths, config.word_ngrams)
        gram_ids = lookup(grams, vocabs.ngrams, vocabs.ngram_start)
        known = gram_ids != UNK_ID  # unseen n-grams are left out, not <unk>
        per_text = _row_sums(per_text, known)
        ids, id_lengths = _concat_rows(ids, id_lengths, gram_ids[known], per_text), id_lengths + per_text
    if mode == "all":
        tail_lengths = _row_sums(lengths, tail_per_token)
        ids, id_lengths = _concat_rows(ids, id_lengths, tail, tail_lengths), id_lengths + tail_lengths
    return ids, id_lengths


def _with_pieces(flat: pa.Array, vocabs: Vocabularies, config: TextConfig, mode: str):
    """Each token's ids in the text and after it, flat with their numbers per token. oov: the word id, or the word
    cut into known pieces (segment); all: the word id when known, and all its known pieces after the text.
    <unk> for a word with neither. The pieces are made once per distinct token of the batch."""
    encoded = pc.dictionary_encode(flat)
    distinct, index = encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False)
    word_ids = lookup(distinct, vocabs.words)
    known = word_ids != UNK_ID
    need = np.flatnonzero(~known) if mode != "all" else np.arange(len(distinct))
    words, low, high = distinct.take(need).to_pylist(), config.subword_min, config.subword_max
    made = [segment(w, vocabs.subword_set, low, high) if mode == "oov" else subword_pieces(w, low, high) for w in words]
    piece_ids = lookup(pa.array([p for ps in made for p in ps], type=pa.large_string()), vocabs.subwords,
                       vocabs.subword_start)
    found = piece_ids != UNK_ID
    pieces = np.zeros(len(distinct), dtype=np.int64)
    pieces[need] = _row_sums([len(ps) for ps in made], found)
    head = (known | (pieces == 0)).astype(np.int64)  # the word id, or <unk> for a word with neither id nor pieces
    if mode == "all":
        inline, inline_lengths = word_ids[head == 1], head
        after, after_lengths = piece_ids[found], pieces
    else:
        inline = _concat_rows(word_ids[head == 1], head, piece_ids[found], pieces)
        inline_lengths, after, after_lengths = head + pieces, np.zeros(0, np.int64), np.zeros(len(distinct), np.int64)
    ids, per_token = _gather(inline, np.concatenate([[0], np.cumsum(inline_lengths)]), index)
    tail, tail_per_token = _gather(after, np.concatenate([[0], np.cumsum(after_lengths)]), index)
    return ids, per_token, tail, tail_per_token


def _gather(values: np.ndarray, offsets: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows `index` of the ragged array (values, offsets), flat, and their lengths."""
    starts, lengths = offsets[index], offsets[index + 1] - offsets[index]
    first = np.cumsum(lengths) - lengths
    return values[np.arange(int(lengths.sum())) + np.repeat(starts - first, lengths)], lengths


def _concat_rows(a: np.ndarray, a_lengths: np.ndarray, b: np.ndarray, b_lengths: np.ndarray) -> np.ndarray:
    """Flat ragged rows: row i of a, then row i of b."""
    out = np.empty(len(a) + len(b), dtype=np.int64)
    starts = np.cumsum(a_lengths + b_lengths) - (a_lengths + b_lengths)
    for values, lengths, shift in ((a, a_lengths, 0), (b, b_lengths, a_lengths)):
        first = np.cumsum(lengths) - lengths
        out[np.arange(len(values)) + np.repeat(starts + shift - first, lengths)] = values
    return out


def pad(ids: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Flat ids with their lengths per text -> int64 [texts, max_len]: 0-padded, each text cut to max_len ids."""
    position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.zeros((len(lengths), max_len), dtype=np.int64)
    out[np.arange(max_len) < np.minimum(lengths, max_len)[:, None]] = ids[position < max_len]  # row-major order
    return out


def lookup(tokens: pa.Array, vocab: pa.Array, first: int = 2) -> np.ndarray:
    """Token ids: first + position in `vocab`, UNK_ID for tokens not in it."""
    index = pc.index_in(tokens, value_set=vocab)
    return pc.fill_null(pc.add(index, first), UNK_ID).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


# --- validation ---------------------------------------------------------------------------------------------------

def validate_texts(frame: pd.DataFrame, data: DataConfig, config: TextConfig,
                   name: str) -> tuple[pd.DataFrame, TableSchema]:
    """Rows usable for training (null targets, null and blank texts dropped and counted) and the schema."""
    notes = []
    target, column = data.target_column(), config.text_column
    for role, wanted, flag in (("text", column, "text.text_column / --text_column"), ("target", target, "--target")):
        if wanted not in frame.columns:
            raise DataError(f"{role} column '{wanted}' not found in {name} (set {flag}); columns are: "
                            f"{quoted(frame.columns)}")
    if column == target:
        raise DataError(f"the text column and the target are both '{column}'")
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(f"text column '{column}' in {name} holds numbers ({values.dtype}), not text; point "
                        "text.text_column at the column with the texts, or train a tabular model on it")
    frame = drop_null_targets(frame, target, name, notes)
    text = as_strings(frame[column])
    blank = text.isna() | (text.fillna("").str.strip() == "")
    if blank.all():
        raise DataError(f"text column '{column}' in {name} has no text: all {len(frame)} rows are empty or null")
    if blank.any():
        notes.append(f"dropped {int(blank.sum())} rows whose text '{column}' is empty or null "
                     f"({int(text.isna().sum())} null, {int((~text.isna() & blank).sum())} blank)")
    frame = frame.loc[~blank, [column, target]].assign(**{column: text[~blank]}).reset_index(drop=True)

    frame, task, classes = target_task(frame, target, data.task, name)
    if len(frame) < 3:
        raise DataError(f"{name} has {len(frame)} usable texts; a train/val/test split needs at least 3")
    return frame, TableSchema(target, task, [], [], classes, len(frame), notes)


# --- fitting ------------------------------------------------------------------------------------------------------

def max_len_for(lengths: np.ndarray, config: TextConfig) -> int:
    """Tokens kept per text: text.max_len, else the given percentile of the train texts' lengths, capped."""
    if config.max_len is not None:
        return config.max_len
    if not len(lengths):
        return 1
    return int(np.clip(math.ceil(np.percentile(lengths, config.max_len_percentile)), 1, config.max_len_cap))


def fit(train_texts, target: dict, config: TextConfig, map_chunks=None) -> tuple[dict, np.ndarray]:
    """Fit the vocabularies and max_len on the train texts. Returns the state TextTransform applies and the train
    texts already encoded (int64 [n, max_len], 0-padded), so that they are tokenized only once."""
    steps = cleaning_steps(config)
    lists = tokenize(train_texts, steps, config, map_chunks)
    tokens, lengths = lists.flatten(), token_counts(lists)
    values, counts = _counted(tokens)
    vocab = _frequent(values, counts, config.min_freq, config.max_vocab)
    ngrams = pa.array([], type=pa.large_string())
    if config.word_ngrams > 1 and config.max_word_ngrams:
        ngrams = _frequent(*_counted(word_ngrams(tokens, lengths, config.word_ngrams)[0]), config.min_freq,
                           config.max_word_ngrams)
    subwords = []
    if config.tokenizer == "word" and config.subwords != "none" and config.max_subwords:
        subwords = _fit_subwords(values, counts, vocab, config)
    vocabs = Vocabularies(vocab.to_pylist(), ngrams.to_pylist(), subwords)
    ids, id_lengths = encode_lists(lists, vocabs, config)

    max_len = max_len_for(id_lengths, config)
    state = {
        "data_type": "text",
        "pipeline_version": PIPELINE_VERSION,
        "config": config.model_dump(),
        "steps": steps,
        "vocab": vocab.to_pylist(),
        "word_ngram_vocab": ngrams.to_pylist(),
        "subword_vocab": subwords,
        "max_len": max_len,
        "vocab_size": vocabs.size,
        "stats": {
            "vocab_before": len(values), "vocab_after": len(vocab), "word_ngrams": len(ngrams),
            "subwords": len(subwords), "train_tokens": len(tokens),
            "train_unk_share": float((ids == UNK_ID).mean()) if len(ids) else 0.0,
            "train_truncated_share": float((id_lengths > max_len).mean()) if len(id_lengths) else 0.0,
            "train_length_p50": float(np.percentile(id_lengths, 50)) if len(id_lengths) else 0.0,
            "train_length_max": int(id_lengths.max()) if len(id_lengths) else 0,
        },
        "target": target,
    }
    return state, pad(ids, id_lengths, max_len)


def _counted(tokens: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The distinct tokens and how often each occurs."""
    counted = pc.value_counts(tokens)
    return counted.field("values"), counted.field("counts").to_numpy()


def _frequent(values: pa.Array, counts: np.ndarray, min_freq: int, limit: int) -> pa.Array:
    """The values kept: seen at least min_freq times, the `limit` most frequent, most frequent first; ties in text
    order, so that a refit on the same data gives the same ids."""
    by_text = np.argsort(np.asarray(values.to_pylist(), dtype=object), kind="stable")
    rank = np.empty(len(values), dtype=np.int64)
    rank[by_text] = np.arange(len(values))
    order = np.lexsort((rank, -counts))
    return values.take(pa.array(order[counts[order] >= min_freq][:limit], type=pa.int64()))


def _fit_subwords(words: pa.Array, counts: np.ndarray, vocab: pa.Array, config: TextConfig) -> list[str]:
    """The subword pieces of the train words, counted with the words' frequencies: for subwords oov only the words
    left out of the vocabulary (so that every kept piece is seen in training), for all every word."""
    if config.subwords != "all":
        left_out = pc.invert(pc.is_in(words, value_set=vocab))
        words, counts = words.filter(left_out), counts[left_out.to_numpy(zero_copy_only=False)]
    made = [subword_pieces(w, config.subword_min, config.subword_max) for w in words.to_pylist()]
    if not made:
        return []
    totals = pd.Series(np.repeat(counts, [len(m) for m in made]), dtype=np.int64).groupby(
        [p for m in made for p in m], sort=False).sum()
    pieces = pa.array(totals.index.tolist(), type=pa.large_string())
    return _frequent(pieces, totals.to_numpy(), config.subword_min_freq, config.max_subwords).to_pylist()


# --- applying -----------------------------------------------------------------------------------------------------

def as_strings(values: pd.Series) -> pd.Series:
    """Each value as str; None and NaN as None."""
    return values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


class TextCodec(TargetCodec):
    """What the text transforms share (this one and hf_text's): the texts of a frame and the model inputs of its
    rows; each has a `config` and an `encode`."""

    config: TextConfig

    def texts(self, frame: pd.DataFrame, name: str = "input") -> pd.Series:
        column = self.config.text_column
        if column not in frame.columns:
            raise DataError(f"{name} has no text column '{column}' (the model was trained on it); columns are: "
                            + quoted(frame.columns))
        values = frame[column]
        if pd.api.types.is_string_dtype(values) and values.dtype != object:
            return values
        return as_strings(values)

    def features(self, frame: pd.DataFrame, name: str = "input") -> np.ndarray:
        """Model inputs for the rows of `frame`: token ids cut to the longest text in the batch (at least 1)."""
        return trim(self.encode(self.texts(frame, name)))


class TextTransform(TextCodec):
    """Applies a fitted text state: raw texts -> int64 token ids [batch, tokens] (0-padded), outputs -> labels."""

    def __init__(self, state: dict):
        version = state.get("pipeline_version")
        if version not in LOADABLE_VERSIONS:
            raise DataError(f"this text model was prepared by text pipeline version {version}; this torchyard "
                            f"applies versions {', '.join(map(str, LOADABLE_VERSIONS))}: retrain the model")
        config = state["config"]
        if version == 1:  # before subwords and word n-grams: unknown words were <unk>
            config = {**config, "subwords": "none", "word_ngrams": 1}
        self.state = state
        self.config = TextConfig(**config)
        self.steps = state["steps"]
        self.max_len: int = state["max_len"]
        self.vocab_size: int = state["vocab_size"]
        self.vocabs = Vocabularies(state["vocab"], state.get("word_ngram_vocab", []), state.get("subword_vocab", []))
        if self.vocabs.size != self.vocab_size:
            raise DataError(f"this text state is inconsistent: vocab_size {self.vocab_size}, but its vocabularies "
                            f"give {self.vocabs.size} ids")

    def encode(self, texts, map_chunks=None) -> np.ndarray:
        """int64 [len(texts), max_len], 0-padded; texts longer than max_len ids are truncated."""
        lists = tokenize(texts, self.steps, self.config, map_chunks)
        if self.config.subwords != "all" or self.config.tokenizer != "word":
            # each word gives at least one id in its place: the words after the first max_len are not looked up
            lists = pc.list_slice(lists, 0, self.max_len)
        return pad(*encode_lists(lists, self.vocabs, self.config), self.max_len)

    def describe(self) -> dict:
        stats = self.state["stats"]
        return {**self.config.model_dump(), "max_len": self.max_len, "vocab_size": self.vocab_size,
                **{f"vocab_{k.split('_')[1]}": v for k, v in stats.items() if k.startswith("vocab_")},
                **{f"vocab_{k}": stats[k] for k in ("word_ngrams", "subwords") if k in stats}}


def trim(ids: np.ndarray) -> np.ndarray:
    """Drop the padding columns that no row of the batch uses (keeps at least one column)."""
    used = int((ids != PAD_ID).sum(axis=1).max()) if len(ids) else 1
    return ids[:, :max(1, used)]


def unk_share(ids: np.ndarray) -> float:
    """Share of the real (non-padding) tokens that are <unk>."""
    real = int((ids != PAD_ID).sum())
    return float((ids == UNK_ID).sum() / real) if real else 0.0
