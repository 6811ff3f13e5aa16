"""Per-file preprocessing on Dask (parallel.runner: dask): chunks of files or texts run as Prefect task runs on a
LocalCluster's worker processes, and give what the default thread pool gives."""
import uuid

import numpy as np
import pytest
from PIL import Image

from flows.config import ExportConfig
from preprocessing import image, text
from preprocessing.config import DataConfig
from tasks.parallel import ParallelConfig
from tests.test_flow import mlflow_run
from training.config import TrainerConfig


def test_image_decoding_in_chunks_equals_the_thread_pool(tmp_path, monkeypatch):
    paths = []
    for i in range(11):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30, 3), i * 20, dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(4, str(tmp_path / "bad.png"))
    monkeypatch.setattr(image, "DECODE_CHUNK", 3)
    calls = []

    def map_chunks(function, chunks):  # what DaskChunks does, minus Dask: in order, one call per chunk
        calls.append(len(chunks))
        return [function(*args) for args in chunks]

    threads = image.decode_all(paths, channels=3, size=8)
    chunked = image.decode_all(paths, channels=3, size=8, map_chunks=map_chunks)
    assert calls == [4]
    assert np.array_equal(threads[0], chunked[0]) and threads[1] == chunked[1]
    assert [b["row"] for b in chunked[1]] == [4] and chunked[0].shape == (11, 8, 8, 3)


@pytest.mark.usefixtures("prefect_harness")
def test_text_cleaning_runs_on_dask_workers_and_matches_threads(mlflow_client, monkeypatch):
    from flows.train_flow import train_flow

    monkeypatch.setattr(text, "DASK_CHUNK_TEXTS", 200)  # the 1,200 reviews: several chunks per split
    runs = {}
    for runner in ("threads", "dask"):
        state = train_flow(data=DataConfig(source="sample:reviews", data_type="text"),
                           train=TrainerConfig(n_epochs=2, batch_size=64), parallel=ParallelConfig(runner=runner),
                           export=ExportConfig(register_model=False), experiment=f"dask-{uuid.uuid4().hex[:6]}",
                           return_state=True)
        assert state.is_completed(), state.message
        runs[runner] = mlflow_run(mlflow_client, state)
    threads, dask = runs["threads"].data, runs["dask"].data
    assert dask.params["preprocess.runner"] == "dask" and "preprocess.runner" not in threads.params
    assert int(dask.params["preprocess.dask_chunks"]) >= 4  # the train split; val and test are under 200 texts
    assert int(dask.params["preprocess.dask_worker_processes"]) >= 1  # not the flow's own process
    for name in ("vocab_size_after", "train_unk_share", "val_unk_share", "test_accuracy"):
        assert dask.metrics[name] == pytest.approx(threads.metrics[name], abs=1e-9), name


def test_the_flows_pickle_for_dask_workers():
    """A Dask task carries the flow run's context, with the flow function pickled by value (cloudpickle) and every
    global it names: `x.classes` in a task module that imports torch was taken for the torch.classes submodule,
    which cannot be pickled, and failed the Dask text preprocessing run."""
    import cloudpickle

    from flows.batch_predict_flow import batch_predict_flow
    from flows.sweep_flow import sweep_flow
    from flows.train_flow import train_flow

    for flow in (train_flow, sweep_flow, batch_predict_flow):
        cloudpickle.dumps(flow)
