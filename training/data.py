"""Batch sources the trainer draws from. A source yields (inputs, targets) batches already on the device:
`epoch(generator)` in a shuffled order for training, `ordered()` in row order for evaluation.

TensorData serves tables held in memory: batches are sliced from a shuffled index rather than drawn through a
per-sample DataLoader, which is several times faster for tabular data (see FIELD-NOTES). Image sources, which
decode and augment in worker processes, live in preprocessing/image_loader.py and follow the same protocol.
"""
from dataclasses import dataclass, field, replace

import numpy as np
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
        return replace(self, features=self.features.to(device), targets=self.targets.to(device))

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


@dataclass
class ShardedTensorData(TensorData):
    """One process's part of a data-parallel epoch: every process draws the same global order (same generator
    state), and each global batch of `batch_size` rows is split across the `world` processes (rank r takes rows
    r, r + world, ...), so the union of one step's shards is the batch a single process would have drawn."""

    rank: int = 0
    world: int = 1
    local_rows: int = field(default=0, init=False)  # rows this process trained on in the last epoch

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


class StreamedData:
    """Rows in .npy files on disk (features [n, d] float32, targets [n]) read in blocks, for data larger than
    memory. An epoch visits the blocks in a shuffled order and shuffles rows within a buffer of `buffer_rows`
    (the usual shuffle buffer of streaming loaders: tf.data, WebDataset), so memory holds one buffer whatever the
    size of the data. Blocks are read with plain file reads, not memory maps: the page cache stays the kernel's
    and out of this process's resident memory."""

    def __init__(self, features: str, targets: str, batch_size: int = 256, block_rows: int = 65536,
                 buffer_rows: int = 262144, device: torch.device | str = "cpu"):
        self.features_path, self.targets_path = str(features), str(targets)
        self.batch_size, self.device = batch_size, torch.device(device)
        self._features = _NpyFile(self.features_path)
        self._targets = _NpyFile(self.targets_path)
        self.block_rows = max(1, min(block_rows, buffer_rows))
        self.buffer_rows = max(buffer_rows, 2 * batch_size)

    def __len__(self) -> int:
        return self._targets.rows

    def to(self, device) -> "StreamedData":
        return StreamedData(self.features_path, self.targets_path, self.batch_size, self.block_rows,
                            self.buffer_rows, device)

    def n_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def _block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self._features.read(start, stop)), torch.from_numpy(self._targets.read(start, stop)))

    def epoch(self, generator: torch.Generator):
        starts = list(range(0, len(self), self.block_rows))
        per_buffer = max(1, self.buffer_rows // self.block_rows)
        order = torch.randperm(len(starts), generator=generator).tolist()
        rest_x, rest_y = None, None
        for group in range(0, len(order), per_buffer):
            blocks = [self._block(starts[b], starts[b] + self.block_rows) for b in order[group:group + per_buffer]]
            if rest_x is not None:
                blocks.insert(0, (rest_x, rest_y))
            features, targets = (torch.cat(part) for part in zip(*blocks))
            del blocks
            shuffle = torch.randperm(len(targets), generator=generator)
            features, targets = features[shuffle], targets[shuffle]
            full = len(targets) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield (features[start:start + self.batch_size].to(self.device, non_blocking=True),
                       targets[start:start + self.batch_size].to(self.device, non_blocking=True))
            rest_x, rest_y = features[full:], targets[full:]
        if rest_x is not None and len(rest_y) >= 2:  # BatchNorm cannot train on a batch of one
            yield rest_x.to(self.device), rest_y.to(self.device)

    def ordered(self):
        step = max(self.batch_size, min(EVAL_BATCH * 16, self.block_rows))
        for start in range(0, len(self), step):
            features, targets = self._block(start, start + step)
            yield features.to(self.device), targets.to(self.device)


class _NpyFile:
    """Row ranges of a C-ordered .npy file, read with pread into fresh arrays."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; expected rows stored one after another")
        self.path, self.shape, self.dtype = path, shape, dtype
        self.rows = shape[0]
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.rows)
        out = np.empty((max(0, stop - start),) + tuple(self.shape[1:]), dtype=self.dtype)
        if out.size:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self.offset + start * self.row_bytes)
                f.readinto(memoryview(out).cast("B"))
        return out
