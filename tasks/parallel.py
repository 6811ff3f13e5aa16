"""Where parallel work runs: on this machine (the default), or on Dask through prefect-dask's DaskTaskRunner,
either a LocalCluster of worker processes or an existing cluster's scheduler.

Sweeps run their trials on it (flows/sweep_flow.py); train-flow runs per-file preprocessing on it (image decoding
in validate, text cleaning and tokenization in preprocess), chunk by chunk, each chunk a Prefect task run. The
core takes a plain `map_chunks(function, [args, ...]) -> [result, ...]` and knows nothing of Dask or Prefect.
"""
import os
from contextlib import contextmanager
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field


class ParallelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runner: Literal["threads", "dask"] = Field(
        "threads", description="threads: a thread pool on this machine; dask: prefect-dask's DaskTaskRunner, on "
        "dask_address or else a LocalCluster of dask_workers processes.")
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster (tcp://host:8786).")
    dask_workers: int = Field(2, ge=1, description="Worker processes of the LocalCluster (runner: dask).")

    def task_runner(self, max_workers: int | None = None):
        if self.runner == "threads":
            return ThreadPoolTaskRunner(max_workers=max_workers)
        from prefect_dask import DaskTaskRunner

        if self.dask_address:
            return DaskTaskRunner(address=self.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": self.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})


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
