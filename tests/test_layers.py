"""The layering rule: the core (preprocessing, models, training) and serving import neither Prefect nor MLflow, so
they run on a machine that has only torch (a GPU box, a slim serving image). Checked in a fresh interpreter that
imports every module of those packages."""
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import importlib, pkgutil, sys
for package in ("preprocessing", "models", "training", "serving"):
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, package + "."):
        if not module.name.endswith("__main__"):  # python -m serving runs the composition root, serve.py
            importlib.import_module(module.name)
leaked = sorted({name.split(".")[0] for name in sys.modules} & {"prefect", "mlflow", "tasks", "flows"})
print("imported:", len(sys.modules), "leaked:", leaked)
sys.exit(1 if leaked else 0)
"""


def test_core_and_serving_import_neither_prefect_nor_mlflow():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "leaked: []" in done.stdout
