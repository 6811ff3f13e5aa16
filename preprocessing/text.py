"""Text preprocessing: cleaning, tokenization and a vocabulary fitted on the train split, vectorised with Apache
Arrow compute kernels (RE2 regexes, Unicode normalisation, hash-based counting and lookup) on threads.

Hugging Face `tokenizers` was measured first (bench/bench_text_pipeline.py, README): on short texts it spends its
time creating one Python Encoding object per text and ran at 3.3 MB/s here, against 23 MB/s for the same cleaning
in Arrow; pyarrow is already a dependency.

`fit` writes the cleaning steps (regex, replacement) into the state, and TextTransform applies the steps from the
state, so training, predict.py and the REST API turn raw text into the same token ids even if defaults change.
Ids: 0 = <pad> (masked by the models), 1 = <unk> (rare or unseen tokens), 2... the vocabulary by frequency.
"""
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
from preprocessing.validate import TableSchema, drop_null_targets, target_task

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
PIPELINE_VERSION = 1
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
        steps += _replacement(kind, getattr(config, kind))
    if config.remove_punctuation:
        steps.append(["punctuation", _PATTERNS["punctuation"], " "])
    return steps


def _replacement(kind: str, action: str) -> list:
    if action == "keep":
        return []
    return [[kind, _PATTERNS[kind], f" {PLACEHOLDERS[kind]} " if action == "replace" else " "]]


def _prepare(texts, steps: list, max_chars: int) -> tuple[pa.Array, list]:
    """Texts as one Arrow string array (nulls as ""), cut to max_chars and NFKC-normalised when the steps start
    with it, and the remaining steps. NFKC runs in Python's unicodedata: Arrow's utf8_normalize (pyarrow 25)
    decomposes Hangul syllables into jamo and never recomposes them."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    if steps and steps[0][0] == "nfkc":
        nfkc = unicodedata.normalize
        values = [nfkc("NFKC", v[:max_chars]) if isinstance(v, str) else "" for v in texts]
        steps = steps[1:]
    else:
        values = [v[:max_chars] if isinstance(v, str) else "" for v in texts]
    return pa.array(values, type=pa.large_string()), steps


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
        mask = nonempty.to_numpy(zero_copy_only=False)
        lengths = np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=mask, minlength=len(lengths))
        flat = flat.filter(nonempty)
    if config.tokenizer == "char_ngram":
        flat, lengths = _ngrams(flat, lengths, config.ngram)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), flat)


def token_counts(lists: pa.Array) -> np.ndarray:
    return np.diff(lists.offsets.to_numpy()).astype(np.int64)


def _ngrams(words: pa.Array, lengths: np.ndarray, n: int) -> tuple[pa.Array, np.ndarray]:
    grams, per_word = [], []
    for word in words.to_pylist():
        made = [word] if len(word) <= n else [word[i:i + n] for i in range(len(word) - n + 1)]
        grams += made
        per_word.append(len(made))
    rows = np.repeat(np.arange(len(lengths)), lengths.astype(np.int64))
    counts = np.bincount(rows, weights=np.array(per_word, dtype=np.float64), minlength=len(lengths))
    return pa.array(grams, type=pa.large_string()), counts.astype(np.int64)


def to_ids(lists: pa.LargeListArray, vocab: pa.Array, max_len: int) -> np.ndarray:
    """Token lists -> int64 [texts, max_len]: ids 0-padded, each text cut to max_len tokens."""
    ids = lookup(pc.list_slice(lists, 0, max_len).flatten(), vocab)
    lengths = np.minimum(token_counts(lists), max_len)
    out = np.zeros((len(lists), max_len), dtype=np.int64)
    out[np.arange(max_len) < lengths[:, None]] = ids  # row-major order of the mask = order of the flat ids
    return out


def lookup(tokens: pa.Array, vocab: pa.Array) -> np.ndarray:
    """Token ids: 2 + position in `vocab`, UNK_ID for tokens not in it."""
    index = pc.index_in(tokens, value_set=vocab)
    return pc.fill_null(pc.add(index, 2), UNK_ID).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


# --- validation ---------------------------------------------------------------------------------------------------

def validate_texts(frame: pd.DataFrame, data: DataConfig, config: TextConfig,
                   name: str) -> tuple[pd.DataFrame, TableSchema]:
    """Rows usable for training (null targets, null and blank texts dropped and counted) and the schema."""
    notes = []
    target, column = data.target_column(), config.text_column
    for role, wanted, flag in (("text", column, "text.text_column / --text_column"), ("target", target, "--target")):
        if wanted not in frame.columns:
            raise DataError(f"{role} column '{wanted}' not found in {name} (set {flag}); columns are: "
                            + ", ".join(f"'{c}'" for c in frame.columns))
    if column == target:
        raise DataError(f"the text column and the target are both '{column}'")
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(f"text column '{column}' in {name} holds numbers ({values.dtype}), not text; point "
                        "text.text_column at the column with the texts, or train a tabular model on it")
    frame = drop_null_targets(frame, target, name, notes)
    text = frame[column].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
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

def fit(train_texts, target: dict, config: TextConfig, map_chunks=None) -> tuple[dict, np.ndarray]:
    """Fit the vocabulary and max_len on the train texts. Returns the state TextTransform applies and the train
    texts already encoded (int64 [n, max_len], 0-padded), so that they are tokenized only once."""
    steps = cleaning_steps(config)
    lists = tokenize(train_texts, steps, config, map_chunks)
    tokens, lengths = lists.flatten(), token_counts(lists)
    counted = pc.value_counts(tokens)
    values, counts = counted.field("values"), counted.field("counts").to_numpy()
    # most frequent first; ties in text order, so that a refit on the same data gives the same ids
    by_text = np.argsort(np.asarray(values.to_pylist(), dtype=object), kind="stable")
    rank = np.empty(len(values), dtype=np.int64)
    rank[by_text] = np.arange(len(values))
    order = np.lexsort((rank, -counts))
    kept = order[counts[order] >= config.min_freq][: config.max_vocab]
    vocab = values.take(pa.array(kept, type=pa.int64()))

    if config.max_len is not None:
        max_len = config.max_len
    elif len(lengths):
        max_len = int(np.clip(math.ceil(np.percentile(lengths, config.max_len_percentile)), 1, config.max_len_cap))
    else:
        max_len = 1
    n_tokens = len(tokens)
    state = {
        "data_type": "text",
        "pipeline_version": PIPELINE_VERSION,
        "config": config.model_dump(),
        "steps": steps,
        "vocab": vocab.to_pylist(),
        "max_len": max_len,
        "vocab_size": len(kept) + 2,
        "stats": {
            "vocab_before": len(values), "vocab_after": len(kept), "train_tokens": n_tokens,
            "train_unk_share": float(1 - counts[kept].sum() / max(1, n_tokens)) if n_tokens else 0.0,
            "train_truncated_share": float((lengths > max_len).mean()) if len(lengths) else 0.0,
            "train_length_p50": float(np.percentile(lengths, 50)) if len(lengths) else 0.0,
            "train_length_max": int(lengths.max()) if len(lengths) else 0,
        },
        "target": target,
    }
    return state, to_ids(lists, vocab, max_len)


# --- applying -----------------------------------------------------------------------------------------------------

class TextTransform(TargetCodec):
    """Applies a fitted text state: raw texts -> int64 token ids [batch, tokens] (0-padded), outputs -> labels."""

    def __init__(self, state: dict):
        if state.get("pipeline_version") != PIPELINE_VERSION:
            raise DataError(f"this text model was prepared by text pipeline version {state.get('pipeline_version')}"
                            f"; this torchyard applies version {PIPELINE_VERSION}")
        self.state = state
        self.config = TextConfig(**state["config"])
        self.target = state["target"]
        self.steps = state["steps"]
        self.max_len: int = state["max_len"]
        self.vocab_size: int = state["vocab_size"]
        self.vocab = pa.array(state["vocab"], type=pa.large_string())

    def encode(self, texts, map_chunks=None) -> np.ndarray:
        """int64 [len(texts), max_len], 0-padded; texts longer than max_len tokens are truncated."""
        return to_ids(tokenize(texts, self.steps, self.config, map_chunks), self.vocab, self.max_len)

    def texts(self, frame: pd.DataFrame, name: str = "input") -> pd.Series:
        column = self.config.text_column
        if column not in frame.columns:
            raise DataError(f"{name} has no text column '{column}' (the model was trained on it); columns are: "
                            + ", ".join(f"'{c}'" for c in frame.columns))
        values = frame[column]
        if pd.api.types.is_string_dtype(values) and values.dtype != object:
            return values
        return values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))

    def features(self, frame: pd.DataFrame, name: str = "input") -> np.ndarray:
        """Model inputs for the rows of `frame`: token ids cut to the longest text in the batch (at least 1)."""
        return trim(self.encode(self.texts(frame, name)))

    def describe(self) -> dict:
        return {**self.state["config"], "max_len": self.max_len, "vocab_size": self.vocab_size,
                **{f"vocab_{k.split('_')[1]}": v for k, v in self.state["stats"].items() if k.startswith("vocab_")}}


def trim(ids: np.ndarray) -> np.ndarray:
    """Drop the padding columns that no row of the batch uses (keeps at least one column)."""
    used = int((ids != PAD_ID).sum(axis=1).max()) if len(ids) else 1
    return ids[:, :max(1, used)]


def unk_share(ids: np.ndarray) -> float:
    """Share of the real (non-padding) tokens that are <unk>."""
    real = int((ids != PAD_ID).sum())
    return float((ids == UNK_ID).sum() / real) if real else 0.0
