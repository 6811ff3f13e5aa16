"""Runs whose process died without closing them (kill -9, the OOM killer, a power cut): the next train-flow run of the
same config on the same machine marks them KILLED with the reason, and when its data is the same it resumes from
their last checkpoint instead of starting at epoch 1, with the epoch metrics the checkpoint holds logged again so
that its history is whole. A Prefect retry of the same flow run needs none of this: it reopens its own MLflow run
(flows/train_flow.py).
"""
import os
import shutil
import socket
import time
from pathlib import Path

from mlflow.entities import Metric

HOST, PID = "torchyard.host", "torchyard.pid"


def process_tags() -> dict:
    """Which process holds a run: checked by later runs to tell a dead holder from a live one."""
    return {HOST: socket.gethostname(), PID: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds that pid
        return True
    return True


def claim_orphans(client, experiment_id: str, run_id: str, config_hash: str) -> list:
    """The RUNNING runs of this experiment with the same config hash whose process, on this host, is gone; each is
    marked KILLED with a reason naming this run. Newest first. Runs of other hosts or live processes are left alone."""
    query = f"attributes.status = 'RUNNING' and tags.`torchyard.config_hash` = '{config_hash}'"
    orphans = []
    for run in client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50):
        tags = run.data.tags
        if run.info.run_id == run_id or tags.get(HOST) != socket.gethostname() or not tags.get(PID, "").isdigit():
            continue
        if _alive(int(tags[PID])):
            continue
        client.set_tag(run.info.run_id, "failure_reason", f"the process {tags[PID]} on {tags[HOST]} ended without "
                       f"closing this run (killed or crashed); found and closed by run {run_id}")
        client.set_terminated(run.info.run_id, "KILLED")
        orphans.append(run)
    return orphans


def take_checkpoint(client, orphans: list, fingerprint: str, work_root: Path, checkpoint_dir: Path,
                    run_id: str) -> str | None:
    """Copy the newest orphan's checkpoint (same data fingerprint) into `checkpoint_dir`, where the train step resumes
    from it, and log the epochs it holds to run `run_id`. Returns the orphan's run id, or None when none fits."""
    if (checkpoint_dir / "last.ckpt").exists():
        return None  # this run has its own (a retry): that one wins
    for orphan in orphans:
        source = Path(work_root) / orphan.data.tags.get("prefect.flow_run_id", "-") / "checkpoints"
        if orphan.data.tags.get("data_fingerprint") != fingerprint or not (source / "last.ckpt").is_file():
            continue
        shutil.copytree(source, checkpoint_dir, dirs_exist_ok=True)
        import torch

        history = torch.load(checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)["history"]
        now = int(time.time() * 1000)  # the epochs the checkpoint holds, as the train step would have logged them
        metrics = [Metric(k, float(v), now, int(epoch["epoch"])) for epoch in history for k, v in epoch.items()
                   if k != "epoch"]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        client.set_tag(run_id, "torchyard.resumed_from", orphan.info.run_id)
        return orphan.info.run_id
    return None
