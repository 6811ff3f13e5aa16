"""Text classifiers/regressors over 0-padded token ids: an embedding, one of several encoders, masked pooling.

Padding (id 0) is masked everywhere: pooling ignores it, the transformer's attention does not attend to it, and the
bidirectional RNNs read each text's own tokens backwards (a per-row reversal instead of packed sequences, which
keeps the model exportable to ONNX with dynamic batch and sequence axes). An output never depends on how much
padding follows the text (tests/test_text.py checks this for every encoder).
"""
import torch
from torch import nn

from models.mlp import ACTIVATIONS

PAD_ID = 0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))  # an empty text pools to 0


class _BiRNN(nn.Module):
    """Stacked bidirectional LSTM/GRU that respects each row's length."""

    def __init__(self, cell: type, input_size: int, hidden_size: int, n_layers: int, dropout: float):
        super().__init__()
        sizes = [input_size] + [2 * hidden_size] * (n_layers - 1)
        self.forward_layers = nn.ModuleList(cell(s, hidden_size, batch_first=True) for s in sizes)
        self.backward_layers = nn.ModuleList(cell(s, hidden_size, batch_first=True) for s in sizes)
        self.dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1, keepdim=True)
        position = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        reverse = torch.where(position < lengths, lengths - 1 - position, position)  # flips each row's tokens only
        for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i:
                x = self.dropout(x)
            ahead, _ = fwd(x)
            index = reverse.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            behind, _ = bwd(torch.gather(x, 1, index))
            behind = torch.gather(behind, 1, reverse.unsqueeze(-1).expand(-1, -1, behind.shape[-1]))
            x = torch.cat([ahead, behind], dim=-1)
        return x


class TextEncoder(nn.Module):
    """Token ids [N, T] -> one vector per text [N, output_size]."""

    def __init__(self, vocab_size: int, encoder: str = "mean", embedding_dim: int = 64, hidden_size: int = 64,
                 n_layers: int = 2, kernel_size: int = 3, activation: str = "relu", batch_norm: bool = True,
                 dropout: float = 0.1, n_heads: int = 4, max_positions: int = 512):
        super().__init__()
        self.encoder = encoder
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        if encoder == "mean":
            blocks, width = [], embedding_dim
            for _ in range(n_layers - 1):
                blocks += [nn.Linear(width, hidden_size)] + ([nn.BatchNorm1d(hidden_size)] if batch_norm else [])
                blocks += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
                width = hidden_size
            self.body, self.output_size = nn.Sequential(*blocks), width
        elif encoder == "cnn":
            self.convs = nn.ModuleList(nn.Conv1d(embedding_dim if i == 0 else hidden_size, hidden_size, kernel_size,
                                                 padding=kernel_size // 2) for i in range(n_layers))
            self.activation = ACTIVATIONS[activation]()
            self.output_size = hidden_size
        elif encoder in ("lstm", "gru"):
            cell = nn.LSTM if encoder == "lstm" else nn.GRU
            self.rnn = _BiRNN(cell, embedding_dim, hidden_size, n_layers, dropout)
            self.output_size = self.rnn.output_size
        elif encoder == "transformer":
            self.positions = nn.Embedding(max_positions, embedding_dim)
            layer = nn.TransformerEncoderLayer(embedding_dim, n_heads, dim_feedforward=hidden_size, dropout=dropout,
                                               activation=ACTIVATIONS[activation](), batch_first=True)
            self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.output_size = embedding_dim
        else:
            raise ValueError(f"unknown text encoder {encoder!r}")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD_ID
        x = self.dropout(self.embedding(ids))
        if self.encoder == "mean":
            return self.body(masked_mean(x, mask))
        if self.encoder == "cnn":
            keep = mask.unsqueeze(1).to(x.dtype)
            h = x.transpose(1, 2)
            for conv in self.convs:
                h = self.dropout(self.activation(conv(h * keep)))
            return masked_max(h.transpose(1, 2), mask)
        if self.encoder in ("lstm", "gru"):
            return masked_mean(self.rnn(x, mask), mask)
        position = torch.arange(ids.shape[1], device=ids.device).clamp_max(self.positions.num_embeddings - 1)
        x = x + self.positions(position).unsqueeze(0)
        # an empty text would mask every key and give NaN: let it attend to its first (padding) position
        ignore = ~mask
        ignore[:, 0] = ignore[:, 0] & mask.any(1)
        return masked_mean(self.transformer(x, src_key_padding_mask=ignore), mask)


class TextNet(nn.Module):
    """TextEncoder (`features`, kept by transfer learning) then a Linear head."""

    def __init__(self, vocab_size: int, output_size: int, **encoder):
        super().__init__()
        self.features = TextEncoder(vocab_size, **encoder)
        self.head = nn.Linear(self.features.output_size, output_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))
