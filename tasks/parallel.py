"""Where parallel work runs: on this machine (the default), or on Dask through prefect-dask's DaskTaskRunner,
either a LocalCluster of worker processes or an existing cluster's scheduler.

Sweeps run their trials on it (flows/sweep_flow.py); train-flow runs per-file preprocessing on it (image decoding
in validate, text cleaning and tokenization in preprocess), chunk by chunk, each chunk a Prefect task run. The
core takes a plain `map_chunks(function, [args, ...]) -> [result, ...]` and knows nothing of Dask or Prefect.
"""
import os
from contextlib import contextmanager

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.parallel_config import ParallelConfig  # noqa: F401 - where its users have always imported it from


@task(name="preprocess-chunk", cache_policy=NO_CACHE)
def run_chunk(function, args: tuple) -> tuple:
    return function(*args), os.getpid()


class DaskChunks:
    """`map_chunks` on a Dask task runner: one task run per chunk, results in order. Counts what it sent, and
    the worker processes that ran it, for the run's record."""

    def __init__(self, runner):
        self.runner, self.chunks, self.pids = runner, 0, set()

    def __call__(self, function, chunks: list[tuple]) -> list:
        futures = [self.runner.submit(run_chunk, parameters={"function": function, "args": args}) for args in chunks]
        results = [future.result() for future in futures]
        self.chunks += len(chunks)
        self.pids |= {pid for _, pid in results}
        return [result for result, _ in results]

    def record(self) -> dict:
        """Parameters for MLflow: how many chunks ran on Dask, in how many processes other than this one."""
        return {"runner": "dask", "dask_chunks": self.chunks,
                "dask_worker_processes": len(self.pids - {os.getpid()})}


@contextmanager
def chunk_mapper(config: ParallelConfig):
    """None for threads (the core then uses its own thread pool in this process), or a DaskChunks over the Dask
    task runner, open for the duration of the block."""
    if config.runner == "threads":
        yield None
        return
    with config.task_runner() as runner:
        yield DaskChunks(runner)
