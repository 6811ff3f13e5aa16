"""Texts (a CSV of texts and labels): cleaning, tokens and vocabularies from preprocessing/text.py, token ids for
the text models."""
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch

from preprocessing import text
from preprocessing.kinds.base import Checked, Fitted, Kind, Record
from preprocessing.targets import Target
from preprocessing.text import TextTransform


class Text(Kind):
    name = "text"
    model_type = "text"
    predict_rows = 1024  # rows per ONNX Runtime call: bounds the memory of [rows, tokens, width] activations
    torchscript_export = False  # it bakes the token count into a transformer's reshapes: torch.export instead

    def validate(self, snapshot, settings, mapper=nullcontext):
        frame, schema = text.validate_texts(pd.read_parquet(snapshot.path), settings.data, settings.text,
                                            snapshot.source)
        return Checked(frame, schema, record=Record(params={"text_column": settings.text.text_column,
                                                           "dropped_rows": snapshot.n_rows - schema.n_rows}))

    def describe_inputs(self, schema, settings):
        return f"texts in '{settings.text.text_column}'"

    def fit_parts(self, parts, schema, settings, cache, work, mapper):
        config = settings.text
        column, train = config.text_column, parts["train"]
        target = Target.fit(train[schema.target], schema.target, schema.task, schema.classes).to_state()
        if config.hf_tokenizer:  # model.encoder hf: the model's own tokenizer instead of the vocabulary
            return self._fit_hf_parts(parts, schema, config, target, settings.registry)
        record = Record()
        with mapper() as map_chunks:  # cleaning and tokenization, chunk by chunk on Dask if asked
            state, train_ids = text.fit(train[column], target, config, map_chunks)
            transform = TextTransform(state)
            arrays = _encode_parts(transform, parts, schema.target, train_ids, map_chunks)
            if map_chunks is not None:
                record.params.update(map_chunks.record())
        stats = state["stats"]
        val_unk = text.unk_share(arrays["val_ids"])
        record.params.update(transform.describe())
        record.metrics.update({"vocab_size_before": stats["vocab_before"], "vocab_size_after": stats["vocab_after"],
                               "train_unk_share": stats["train_unk_share"], "val_unk_share": val_unk,
                               "train_truncated_share": stats["train_truncated_share"]})
        examples = work / "cleaning_examples.csv"
        sample = train[column].head(20)
        pd.DataFrame({"raw": sample, "cleaned": text.clean(sample, config)}).to_csv(examples, index=False)
        record.artifacts.append(examples)
        summary = (f"vocabulary {stats['vocab_after']} tokens (of {stats['vocab_before']} in the train split, "
                   f"min_freq {config.min_freq}, max_vocab {config.max_vocab}); max_len {state['max_len']} "
                   f"({stats['train_truncated_share']:.1%} of train texts truncated); <unk> share "
                   f"{stats['train_unk_share']:.1%} train, {val_unk:.1%} val")
        return Fitted(state, arrays, summary, record)

    def _fit_hf_parts(self, parts, schema, config, target, registry):
        from preprocessing import hf_text

        state, train_ids = hf_text.fit(parts["train"][config.text_column], target, config, registry)
        transform = hf_text.HFTokenTransform(state)
        arrays = _encode_parts(transform, parts, schema.target, train_ids)
        stats = state["stats"]
        record = Record(params=transform.describe(),
                        metrics={"train_truncated_share": stats["train_truncated_share"]})
        summary = (f"Hugging Face tokenizer of {config.hf_tokenizer} ({state['vocab_size'] - 1} ids); max_len "
                   f"{state['max_len']} (model's limit {state['model_max_len']}; "
                   f"{stats['train_truncated_share']:.1%} of train texts truncated)")
        return Fitted(state, arrays, summary, record)

    def transform(self, state):
        from preprocessing import hf_text

        if state.get("pipeline") == hf_text.PIPELINE:
            return hf_text.HFTokenTransform(state)
        return TextTransform(state)

    def input_size(self, transform) -> int:
        return transform.vocab_size

    def batch_source(self, prepared, transform, split, batch_size, workers=0):
        from training.data import TokenData

        arrays = np.load(prepared.arrays)
        return TokenData(torch.from_numpy(arrays[f"{split}_ids"]), torch.from_numpy(arrays[f"{split}_targets"]),
                         batch_size)

    def check_config(self, config):
        if config.model.encoder == "hf":  # its tokenizer replaces the vocabulary: preprocess reads it from here
            if config.model.pretrained:  # a torchyard model trained with encoder hf: its own tokenizer and encoder
                from serving.registry import registry_uri

                reference = registry_uri(config.model.pretrained) or config.model.pretrained  # a bare name too
            else:
                from preprocessing.hf_text import hf_folder

                reference = str(hf_folder(config.model.pretrained_hf))  # a missing folder fails before any work
            config.text = config.text.model_copy(update={"hf_tokenizer": reference})
            return
        if config.text.hf_tokenizer:
            raise ValueError("text.hf_tokenizer is set from model.pretrained_hf for model.encoder hf; the "
                             f"{config.model.encoder} encoder uses torchyard's vocabulary: leave it unset")
        if config.model.pretrained:
            raise ValueError("model.pretrained is not offered for text models with torchyard's vocabulary: a new "
                             "vocabulary would not match the pretrained embedding. A model trained with "
                             "model.encoder hf can be: give model.encoder hf too (its tokenizer is kept)")
        if config.model.encoder != "mean":
            if config.text.word_ngrams > 1:
                raise ValueError(f"text.word_ngrams {config.text.word_ngrams} adds a bag of n-grams for the mean "
                                 f"encoder; the {config.model.encoder} encoder reads tokens in order: leave it at 1")
            if "subwords" not in config.text.model_fields_set:  # pieces after the words suit a bag, not a sequence
                config.text = config.text.model_copy(update={"subwords": "oov"})

    def fit_baseline(self, validated, splits, prepared, transform, config, seed):
        from training import baseline

        column = transform.config.text_column
        frame = pd.read_parquet(validated.path, columns=[column])
        positions = np.load(splits.path)
        arrays = np.load(prepared.arrays)
        rows = baseline.subsample(len(positions["train"]), config.max_train_rows, seed)
        texts = {name: transform.texts(frame.iloc[positions[name]]).fillna("").tolist() for name in ("train", "test")}
        result = baseline.text([texts["train"][i] for i in rows], arrays["train_targets"][rows], texts["test"],
                               transform.target, seed)
        return result, arrays["test_targets"]

    def input_schema(self, transform):
        state = transform.state
        return {"kind": "texts", "text_column": state["config"]["text_column"], "max_len": state["max_len"]}


def _encode_parts(transform, parts: dict, target: str, train_ids: np.ndarray, map_chunks=None) -> dict:
    """The arrays of the splits: token ids (the train split's given, encoded while fitting) and targets."""
    arrays = {"train_ids": train_ids}
    for name, part in parts.items():
        if name != "train":
            arrays[f"{name}_ids"] = transform.encode(part[transform.config.text_column], map_chunks)
        arrays[f"{name}_targets"] = transform.encode_target(part[target])
    return arrays


KIND = Text()
