"""Batch sources the trainer draws from. A source yields (inputs, targets) batches already on the device:
`epoch(generator)` in a shuffled order for training, `ordered()` in row order for evaluation.

TensorData serves tables held in memory: batches are sliced from a shuffled index rather than drawn through a
per-sample DataLoader, which is several times faster for tabular data (see FIELD-NOTES). Image sources, which
decode and augment in worker processes, live in preprocessing/image_loader.py and follow the same protocol.
"""
from dataclasses import dataclass

import torch

EVAL_BATCH = 4096


@dataclass
class TensorData:
    features: torch.Tensor
    targets: torch.Tensor
    batch_size: int = 256

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device) -> "TensorData":
        return TensorData(self.features.to(device), self.targets.to(device), self.batch_size)

    def epoch(self, generator: torch.Generator):
        order = torch.randperm(len(self), generator=generator).to(self.features.device)
        for start in range(0, len(self), self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2 and start:  # BatchNorm cannot train on a batch of one; skip that last straggler
                continue
            yield self.features[index], self.targets[index]

    def n_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def ordered(self):
        step = max(self.batch_size, EVAL_BATCH)
        for start in range(0, len(self), step):
            yield self.features[start:start + step], self.targets[start:start + step]


class TokenData(TensorData):
    """Token ids [n, max_len] (0-padded at the end) and targets; each batch is cut to its longest text, so a batch
    of short texts costs little even when max_len is large."""

    def to(self, device) -> "TokenData":
        return TokenData(self.features.to(device), self.targets.to(device), self.batch_size)

    @staticmethod
    def _cut(ids: torch.Tensor) -> torch.Tensor:
        used = int((ids != 0).sum(1).max()) if len(ids) else 1
        return ids[:, :max(1, used)]

    def epoch(self, generator: torch.Generator):
        for ids, targets in super().epoch(generator):
            yield self._cut(ids), targets

    def ordered(self):
        step = self.batch_size  # padding is per batch: big evaluation batches would pad to the longest text
        for start in range(0, len(self), step):
            yield self._cut(self.features[start:start + step]), self.targets[start:start + step]


class ShardedTensorData(TensorData):
    """One process's part of a data-parallel epoch: every process draws the same global order (same generator
    state), and each global batch of `batch_size` rows is split across the `world` processes (rank r takes rows
    r, r + world, ...), so the union of one step's shards is the batch a single process would have drawn."""

    def __init__(self, features, targets, batch_size: int, rank: int, world: int):
        super().__init__(features, targets, batch_size)
        self.rank, self.world = rank, world
        self.local_rows = 0  # rows this process trained on in the last epoch

    def to(self, device) -> "ShardedTensorData":
        return ShardedTensorData(self.features.to(device), self.targets.to(device), self.batch_size, self.rank,
                                 self.world)

    def epoch(self, generator: torch.Generator):
        order = torch.randperm(len(self), generator=generator).to(self.features.device)
        self.local_rows = 0
        for start in range(0, len(self), self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) < 2 * self.world:  # every process must step, with at least 2 rows (BatchNorm)
                continue
            index = batch[self.rank::self.world]
            self.local_rows += len(index)
            yield self.features[index], self.targets[index]
