"""A local Hugging Face encoder as a text model (model.encoder hf, model.pretrained_hf: a `save_pretrained` folder):
the encoder as `features`, masked mean or [CLS] pooling, a Linear head, the layout of the other networks, so
freeze_features, unfreeze_after and backbone_lr_mult (models/freezing.py, training/optim.py) apply as they are.

Input: torchyard's token tensor, int64 [batch, tokens] with 0 = padding and the tokenizer's id + 1 elsewhere
(preprocessing/hf_text.py writes it). The attention mask is `ids != 0`, so it comes from where the padding is, never
from the tokenizer's pad id (which a text can hold, or which is the end-of-text id of GPT-style tokenizers); the
ONNX graph therefore takes one input like every torchyard text model, and the Predictor, serving and the pyfunc
model need nothing new.

The saved network (models/build.py save_network) records the encoder's config (`encoder_config()`) beside the
weights, so a model file rebuilds it without the folder: evaluate and export, and a later run that takes the model
as its model.pretrained (preprocessing/hf_text.py then takes the tokenizer from the model file too).

transformers is imported only when such a network is built (here) or its tokenizer fitted (preprocessing/hf_text.py),
always offline (HF_HUB_OFFLINE=1, local_files_only=True): nothing is downloaded at run time.
"""
import json
import os

import torch
from torch import nn

from models.text import masked_mean
from preprocessing.hf_text import HFModelError, hf_folder, offline  # noqa: F401 - HFModelError raised from here too

POOLINGS = ("mean", "cls")


def load_encoder(folder: str | os.PathLike) -> nn.Module:
    offline()
    folder = hf_folder(folder)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:  # float32 whatever the folder's dtype (bf16/fp16 checkpoints): the head, the trainer and export expect it
        return AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise HFModelError(f"model.pretrained_hf: the model in {folder.resolve()} could not be loaded "
                           f"({type(exc).__name__}: {str(exc)[:300]})") from None


def encoder_from_config(config: dict) -> nn.Module:
    """The encoder's architecture from its saved config (a config.json as a dict), random weights: the caller loads
    the saved ones. Needs no folder."""
    offline()
    from transformers import AutoConfig, AutoModel

    try:
        return AutoModel.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - an unknown model_type (another transformers), a bad config
        raise HFModelError(f"the saved Hugging Face encoder (model_type {config.get('model_type')!r}) could not be "
                           f"rebuilt from its config ({type(exc).__name__}: {str(exc)[:300]})") from None


class HFTextNet(nn.Module):
    """The Hugging Face encoder (`features`), pooled over the real tokens (mean) or its first token (cls), then
    dropout and a Linear `head`. `encoder_config` (a saved network's) builds the encoder from its config instead of
    loading it from `folder`: the caller loads the saved weights."""

    def __init__(self, folder: str | None, output_size: int, pooling: str = "mean", dropout: float = 0.1,
                 encoder_config: dict | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.features = encoder_from_config(encoder_config) if encoder_config else load_encoder(folder)
        config = self.features.config
        self.pooling = pooling
        self.pad_id = int(config.pad_token_id if getattr(config, "pad_token_id", None) is not None else 0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(config.hidden_size), output_size)

    def encoder_config(self) -> dict:
        """The encoder's config as plain data (what config.json holds), saved with the network."""
        return json.loads(self.features.config.to_json_string(use_diff=False))

    def train(self, mode: bool = True):
        """A frozen encoder (freeze_features, or until unfreeze_after) stays in eval mode, dropout off: the head
        trains on the features the pretrained model computes."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.features.parameters()):
            self.features.eval()
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        input_ids = torch.where(mask, ids - 1, torch.full_like(ids, self.pad_id))
        hidden = self.features(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, mask)
        return self.head(self.dropout(pooled))
