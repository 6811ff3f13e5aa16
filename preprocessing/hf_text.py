"""Texts tokenized by a Hugging Face model's own tokenizer (model.encoder hf): it replaces torchyard's cleaning and
vocabulary for that run (text.hf_tokenizer, set from model.pretrained_hf).

The state holds the tokenizer itself (its `tokenizer.json`, the fast tokenizer's whole definition: normalizer,
pre-tokenizer, vocabulary, special-token template), so a model file is self-contained: predict.py and the REST API
tokenize raw text with the `tokenizers` library alone (no transformers, no folder), exactly as training did
(tests/test_hf_text.py compares the ids with transformers' AutoTokenizer). Fitting loads the tokenizer with
transformers (local files only), which also converts a folder holding only a vocab.txt to that form.

A later run that starts from such a model (model.pretrained with model.encoder hf; text.hf_tokenizer is then that
model file or registry URI) takes the tokenizer from the model file's own state (`fit` -> `tokenizer_of_model`): the
ids its encoder was trained on, with neither the folder nor transformers.

Ids are written as torchyard's token tensor: 0 = padding, tokenizer id + 1 elsewhere (models/hf_text.py undoes the
shift and takes the mask from the zeros), each text cut to max_len tokens, special tokens included.
"""
import functools
import json
import os
from pathlib import Path

import numpy as np

from preprocessing.config import TextConfig
from preprocessing.errors import DataError, TorchyardError
from preprocessing.text import TextCodec, max_len_for

PIPELINE = "hf-tokenizer/1"


class HFModelError(TorchyardError):
    """model.pretrained_hf names no usable local Hugging Face folder."""


def offline() -> None:
    """No hub access from transformers or huggingface_hub, whatever the environment says."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def hf_folder(path: str | os.PathLike) -> Path:
    """The folder, when it holds a saved Hugging Face model (config.json); HFModelError naming it otherwise."""
    folder = Path(path).expanduser()
    hint = ("model.pretrained_hf takes a local folder written by save_pretrained (config.json, the weights, the "
            "tokenizer files); nothing is downloaded at run time: on a machine with access run "
            "`AutoModel.from_pretrained(name).save_pretrained(folder)` and the same for AutoTokenizer")
    if not folder.is_dir():
        raise HFModelError(f"model.pretrained_hf: no such folder {folder.resolve()}; {hint}")
    if not (folder / "config.json").is_file():
        raise HFModelError(f"model.pretrained_hf: {folder.resolve()} has no config.json, so it is not a saved "
                           f"Hugging Face model; {hint}")
    return folder


def max_positions(folder: str | os.PathLike) -> int | None:
    """The longest input the model takes (config.json's max_position_embeddings, less RoBERTa's padding offset),
    or None when the config does not say. Read as JSON: no transformers import."""
    config = json.loads((hf_folder(folder) / "config.json").read_text())
    positions = config.get("max_position_embeddings") or config.get("n_positions") or config.get("max_seq_len")
    if not positions:
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        positions -= (config.get("pad_token_id") or 1) + 1  # positions start after the padding index
    return int(positions)


def load_tokenizer(folder: str | os.PathLike):
    offline()
    folder = hf_folder(folder)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError...: the folder lacks a usable tokenizer
        raise HFModelError(f"model.pretrained_hf: no tokenizer could be loaded from {folder.resolve()} "
                           f"({type(exc).__name__}: {str(exc)[:300]}); save the tokenizer into it too "
                           "(tokenizer.save_pretrained(folder))") from None


def is_model_reference(source: str) -> bool:
    """text.hf_tokenizer names a torchyard model (a .pth/.onnx model file or a models:/ registry URI, set from
    model.pretrained), not a Hugging Face folder."""
    path = Path(source).expanduser()
    return source.startswith("models:/") or path.is_file() or (not path.is_dir() and
                                                              path.suffix.lower() in (".pth", ".pt", ".onnx"))


def tokenizer_of_model(reference: str, registry=None) -> dict:
    """The hf tokenizer state of a torchyard model trained with model.encoder hf (a model file, or a registry URI
    read through `registry`: tasks/registry.py, handed down by the preprocess task, so that the core imports no
    MLflow): the tokenizer its encoder was trained on. HFModelError when it cannot be read or was trained otherwise."""
    from serving.bundle import ModelFileError
    from serving.registry import resolve

    try:
        bundle, _ = resolve(reference, registry)
    except ModelFileError as exc:
        raise HFModelError(f"model.pretrained {reference} could not be loaded: {exc}") from None
    state = bundle.preprocessing
    if state.get("pipeline") != PIPELINE:
        raise HFModelError(f"model.pretrained {reference} was not trained with model.encoder hf (its texts are "
                           f"prepared by {state.get('pipeline') or 'another pipeline'}), so it has no Hugging Face "
                           "tokenizer and encoder to start from")
    return state


def fit(train_texts, target: dict, config: TextConfig, registry=None) -> tuple[dict, np.ndarray]:
    """The state HFTokenTransform applies (the tokenizer and max_len: text.max_len, or the max_len_percentile of
    the train texts' lengths, capped by max_len_cap and the model's max positions) and the encoded train texts;
    text.hf_tokenizer is a Hugging Face folder, or a torchyard model whose own tokenizer is kept."""
    source = config.hf_tokenizer
    if is_model_reference(source):
        pretrained = tokenizer_of_model(source, registry)
        tokenizer, folder, model_limit = None, pretrained["hf_folder"], int(pretrained["model_max_len"])
        definition, vocab_size = pretrained["tokenizer"], int(pretrained["vocab_size"])
    else:
        folder = source
        tokenizer = load_tokenizer(folder)
        definition = tokenizer.backend_tokenizer.to_str()
        limits = [max_positions(folder)]
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 1_000_000:
            limits.append(model_max)
        model_limit = min([n for n in limits if n] or [config.max_len_cap])
        vocab_size = int(tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)) + 1
    state = {"data_type": "text", "pipeline": PIPELINE, "config": config.model_dump(), "tokenizer": definition,
             "hf_folder": str(folder), "model_max_len": model_limit, "max_len": model_limit,
             "vocab_size": vocab_size, "target": target}
    lengths = np.array([len(ids) for ids in HFTokenTransform(state).token_ids(train_texts, truncate=False)])
    state["max_len"] = max(1, min(max_len_for(lengths, config), model_limit))
    state["stats"] = {"train_truncated_share": float((lengths > state["max_len"]).mean()) if len(lengths) else 0.0,
                      "train_length_p50": float(np.percentile(lengths, 50)) if len(lengths) else 0.0,
                      "train_length_max": int(lengths.max()) if len(lengths) else 0}
    transform = HFTokenTransform(state)
    if tokenizer is not None:  # a model's saved tokenizer was checked when that model was fitted
        _check_same_ids(transform, tokenizer, train_texts, folder)
    return state, transform.encode(train_texts)


def _check_same_ids(transform: "HFTokenTransform", tokenizer, texts, folder, n: int = 64) -> None:
    """The saved definition tokenizes the first train texts as transformers' tokenizer does; HFModelError otherwise
    (a tokenizer that adds its special tokens in Python, outside tokenizer.json, would be served differently)."""
    sample = [t if isinstance(t, str) else "" for t in list(texts)[:n]]
    expected = tokenizer(sample, truncation=True, max_length=transform.max_len)["input_ids"]
    for text, ours, theirs in zip(sample, transform.token_ids(sample), expected):
        if list(ours) != list(theirs):
            raise HFModelError(f"the tokenizer in {folder} cannot be saved with the model: its tokenizer.json gives "
                               f"other ids than transformers' tokenizer for {text[:60]!r} ({ours[:8]}... against "
                               f"{theirs[:8]}...)")


class HFTokenTransform(TextCodec):
    """Applies a fitted hf state: raw texts -> int64 [batch, tokens] (0 = padding, tokenizer id + 1), outputs ->
    labels. Needs the `tokenizers` library only."""

    def __init__(self, state: dict):
        if state.get("pipeline") != PIPELINE:
            raise DataError(f"this text model was prepared by tokenizer pipeline {state.get('pipeline')}; this "
                            f"torchyard applies {PIPELINE}: retrain the model")
        self.state = state
        self.config = TextConfig(**state["config"])
        self.max_len: int = state["max_len"]
        self.vocab_size: int = state["vocab_size"]
        self._truncating = True

    @functools.cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.state["tokenizer"])
        tokenizer.no_padding()  # padding is ours (zeros)
        tokenizer.enable_truncation(self.max_len)
        return tokenizer

    def token_ids(self, texts, truncate: bool = True) -> list[list[int]]:
        """The tokenizer's ids of each text, with its special tokens; cut to max_len unless not `truncate`."""
        tokenizer = self.tokenizer
        if truncate != self._truncating:  # changed only while fitting; serving threads always truncate
            tokenizer.enable_truncation(self.max_len) if truncate else tokenizer.no_truncation()
            self._truncating = truncate
        limit = self.config.max_chars
        values = [v[:limit] if isinstance(v, str) else "" for v in list(texts)]
        return [encoding.ids for encoding in tokenizer.encode_batch(values)]

    def encode(self, texts, map_chunks=None) -> np.ndarray:
        """int64 [len(texts), max_len]: 0-padded, tokenizer ids + 1."""
        ids = self.token_ids(texts)
        out = np.zeros((len(ids), self.max_len), dtype=np.int64)
        for row, values in enumerate(ids):
            out[row, :len(values)] = np.asarray(values, dtype=np.int64) + 1
        return out

    def describe(self) -> dict:
        return {"text_column": self.config.text_column,
                "hf_tokenizer": self.config.hf_tokenizer or self.state["hf_folder"],  # a folder, or model.pretrained
                "max_len": self.max_len, "model_max_len": self.state["model_max_len"],
                "vocab_size": self.vocab_size, "max_len_percentile": self.config.max_len_percentile}
