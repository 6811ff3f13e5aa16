"""The `parallel` section: where per-file preprocessing and sweep trials run. Plain data, importable without
Prefect (the CLI builds its flags from it); the runner itself is made on demand."""
from typing import Literal

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
            from prefect.task_runners import ThreadPoolTaskRunner

            return ThreadPoolTaskRunner(max_workers=max_workers)
        from prefect_dask import DaskTaskRunner

        if self.dask_address:
            return DaskTaskRunner(address=self.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": self.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
