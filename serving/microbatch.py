"""Dynamic micro-batching: concurrent small prediction requests joined into one model call (issue 16).

Each request is validated on its own first (the tabular fast path's column checks and features, TextRequest, the
image headers), so a bad request is answered on its own and never joins a batch. What is left goes to the model's
MicroBatcher, which runs it together with the other requests waiting at that moment as one call: one ONNX Runtime
call on the tabular fast path, one Predictor.predict for texts (tokenization and ONNX Runtime once), one
predict_images for images. Each caller gets exactly its own rows back, in its order.

When the model is idle, the first request waits at most `wait_s` (--batch-wait-ms) for company, less when
`max_rows` inputs (--batch-max-rows) are waiting; requests that arrive while a batch runs go together as soon as it
ends, without waiting any longer (they already have). A request of `max_rows` inputs or more is not batched. Only
requests of the same `key` are joined (e.g. texts whose column has the same dtype).

Errors stay with their request: the joined call of a batch that fails is made again request by request (`joined`),
so each gets its own answer or its own error (a non-finite output names the request's own rows).

One event loop per server process: the batcher's state is touched only on it; the joined call runs on a worker
thread (texts, images, large tables) or, for small tabular batches, on the event loop itself (a few tens of
microseconds of ONNX Runtime, cheaper than the hop to a thread, as the fast path does without batching).
"""
import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from starlette.concurrency import run_in_threadpool


@dataclass
class _Entry:
    item: Any
    rows: int
    key: Hashable
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Joins concurrent calls of one model. `run(items)` makes the joined call of a batch and returns one result per
    item, in order (a result may be an exception, raised to that item's caller only; see `joined`). `observe(rows,
    requests)` is told the size of every joined call. `inline(rows)` says whether a batch of that many inputs runs
    on the event loop (default: never)."""

    def __init__(self, run: Callable[[list], list], wait_s: float, max_rows: int,
                 observe: Callable[[int, int], None] | None = None, inline: Callable[[int], bool] | None = None):
        if wait_s < 0 or max_rows < 1:
            raise ValueError("wait_s must be at least 0 and max_rows at least 1")
        self.run, self.wait_s, self.max_rows = run, wait_s, max_rows
        self.observe, self.inline = observe, inline or (lambda rows: False)
        self._pending: list[_Entry] = []
        self._rows = 0  # inputs waiting in _pending
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None  # the drain task, while one runs (a reference keeps it alive)

    def takes(self, rows: int) -> bool:
        """Whether a request of `rows` inputs is batched (smaller than a whole batch)."""
        return 0 < rows < self.max_rows

    async def submit(self, item: Any, rows: int, key: Hashable = None) -> Any:
        """`item`'s result once the batch it joined has run (its exception, raised here, if it failed)."""
        loop = asyncio.get_running_loop()
        entry = _Entry(item, rows, key, loop.create_future())
        self._pending.append(entry)
        self._rows += rows
        if self._task is None:  # idle: wait for company, at most wait_s
            if self._rows >= self.max_rows or self.wait_s == 0:
                self._start()
            elif self._timer is None:
                self._timer = loop.call_later(self.wait_s, self._start)
        # while a batch runs, the next one gathers: _drain takes it as soon as the running one ends
        return await entry.future

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and self._pending:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def _take(self) -> list[_Entry]:
        """The next batch: the oldest waiting request and those after it with its key, up to max_rows inputs."""
        live = [e for e in self._pending if not e.future.done()]  # a caller that went away (cancelled) is dropped
        if not live:
            self._pending, self._rows = [], 0
            return []
        key, taken, rows, kept = live[0].key, [], 0, []
        for entry in live:
            if entry.key == key and (not taken or rows + entry.rows <= self.max_rows):
                taken.append(entry)
                rows += entry.rows
            else:
                kept.append(entry)
        self._pending, self._rows = kept, sum(e.rows for e in kept)
        return taken

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if not batch:
                    break
                rows = sum(e.rows for e in batch)
                items = [e.item for e in batch]
                try:
                    if self.inline(rows):
                        results = self.run(items)
                    else:
                        results = await run_in_threadpool(self.run, items)
                    if len(results) != len(batch):
                        raise RuntimeError(f"a batch of {len(batch)} requests got {len(results)} results")
                except Exception as exc:  # run() answers per item; this is a bug, given to every caller
                    results = [exc] * len(batch)
                if self.observe is not None:
                    self.observe(rows, len(batch))
                for entry, result in zip(batch, results):
                    if entry.future.done():
                        continue
                    if isinstance(result, BaseException):
                        entry.future.set_exception(result)
                    else:
                        entry.future.set_result(result)
        finally:
            self._task = None
            if self._pending:  # cancelled while requests were waiting: they must not wait for ever
                if any(not e.future.done() for e in self._pending):
                    asyncio.get_running_loop().call_soon(self._start)


def joined(items: list, sizes: list[int], call: Callable[[list], Any], split: Callable[[Any, int, int], Any],
           own: Callable[[Any], Any] | None = None) -> list:
    """The results of `items` from one joined call: `call(items)` once and `split(result, start, stop)` per item (its
    rows start:stop); `own(part)` may check an item's part and raise (an output that is not finite). When the joined
    call raises, every item is called again on its own, and gets its own result or its own exception: one bad
    request never fails the others in its batch."""
    own = own or (lambda part: part)
    if len(items) > 1:
        try:
            whole = call(items)
        except Exception:
            pass
        else:
            starts = itertools.accumulate(sizes, initial=0)
            return [_result(lambda: own(split(whole, start, start + size))) for start, size in zip(starts, sizes)]
    return [_result(lambda: own(split(call([item]), 0, size))) for item, size in zip(items, sizes)]


def _result(function: Callable[[], Any]) -> Any:
    """`function()`, or the exception it raised."""
    try:
        return function()
    except Exception as exc:
        return exc
