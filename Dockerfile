# The REST API (python -m serving: FastAPI on uvicorn, inference on ONNX Runtime) in a slim image, as a non-root
# user. Serving's dependencies only: pyproject.toml's list less the training stack (Prefect, Dask, Optuna,
# matplotlib, torchvision, scikit-learn, onnxscript), with torch's CPU-only build.
#
#   docker build -t torchyard-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" torchyard-serve                # /models/model.pth
#   docker run --rm -p 8000:8000 -v "$PWD/out:/models:ro" torchyard-serve --model /models/wine.pth
#   docker run --rm -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 torchyard-serve --model wine-mlp
#   curl localhost:8000/health
#
# The model: --model (a .pth/.onnx path in a mounted folder, or a registry reference with MLFLOW_TRACKING_URI
# pointing at a tracking server), else $TORCHYARD_MODEL (default /models/model.pth). The server listens on 0.0.0.0
# inside the container, so POST /reload needs --api-key (or -e TORCHYARD_API_KEY=...).
# Batch prediction with the same image: docker run --rm -v "$PWD:/data" --entrypoint python torchyard-serve
#   predict.py --model_fn /data/model.pth --input /data/rows.parquet --output /data/preds.parquet
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    TORCHYARD_MODEL=/models/model.pth

WORKDIR /app

# dependencies first (a layer that changes only with pyproject.toml): torch from the CPU-only index at pyproject's
# pin, then the rest of serving's requirements from PyPI
COPY pyproject.toml ./
RUN python -c "import re, tomllib; \
skip = {'prefect', 'prefect-dask', 'distributed', 'optuna', 'cmaes', 'matplotlib', 'torchvision', \
        'scikit-learn', 'onnxscript'}; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
name = lambda d: re.split(r'[<>=!~ ;\[]', d, maxsplit=1)[0].lower(); \
open('/tmp/torch.txt', 'w').write('\n'.join(d for d in deps if name(d) == 'torch') + '\n'); \
open('/tmp/serving.txt', 'w').write('\n'.join(d for d in deps if name(d) not in skip | {'torch'}) + '\n')" \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch.txt \
    && pip install --no-cache-dir -r /tmp/serving.txt \
    && rm /tmp/torch.txt /tmp/serving.txt

COPY serve.py predict.py ./
COPY preprocessing/ preprocessing/
COPY serving/ serving/
COPY tasks/ tasks/

RUN groupadd --gid 10001 torchyard \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin torchyard \
    && mkdir /models && chown 10001:10001 /models
USER 10001:10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `docker run IMAGE --model ...` appends to these (--max-batch, --reload-interval, --api-key... the same way);
# another host port: -p 9000:8000
ENTRYPOINT ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
CMD []
