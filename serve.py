"""python serve.py (or python -m serving) --model models:/wine-mlp@champion --host 127.0.0.1 --port 8000 (make serve).

The composition root of serving: serving/ imports neither MLflow nor Prefect (a file model serves on a machine
without them); this entry point connects the MLflow registry (tasks/registry.py) when the model is a registry
reference.
"""
import argparse
import json
import logging
import os
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
BATCH_MAX_ROWS, BATCH_WAIT_MS, ONNX_THREADS = 64, 0.0, 1  # serving.app's (tests/test_microbatch.py checks)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving", description="Serve a torchyard model over HTTP (FastAPI "
                                "on uvicorn, inference on ONNX Runtime). OpenAPI document at /docs and /openapi.json.")
    p.add_argument("--model", default=os.environ.get("TORCHYARD_MODEL", "wine-mlp"),
                   help="models:/<name>@<alias>, models:/<name>/<version>, a registered name (= its @champion), "
                   "or a .pth/.onnx path (default: $TORCHYARD_MODEL or wine-mlp)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-body-bytes", type=int, default=10 * 2 ** 20)
    p.add_argument("--max-batch", type=int, default=1024, help="most rows, texts or images per request")
    p.add_argument("--max-image-side", type=int, default=4096, help="largest image width or height")
    p.add_argument("--reload-interval", type=float, default=0.0,
                   help="seconds between checks of the registry alias for a new version (0: only POST /reload)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--api-key", default=os.environ.get("TORCHYARD_API_KEY"), help="token that POST /reload needs "
                   "(Authorization: Bearer <key> or X-API-Key); default $TORCHYARD_API_KEY. Without one, /reload "
                   "answers only when the server listens on a loopback address")
    p.add_argument("--protect-predict", action="store_true", help="/predict and /invocations need the key too")
    p.add_argument("--workers", type=int, default=1, help="server processes (uvicorn workers) sharing the port, "
                   "each with its own copy of the model: more requests per second on a machine with idle cores; "
                   "1 (the default) when the machine runs other work or the model is large")
    p.add_argument("--max-in-flight", type=int, default=64, help="most prediction requests one process works on at "
                   "once; more are answered 503 with Retry-After instead of waiting (0: no limit)")
    p.add_argument("--retry-after", type=int, default=1, help="seconds in the Retry-After header of a 503")
    p.add_argument("--inline-bytes", type=int, default=16384, help="tabular /predict bodies up to this size are "
                   "answered on the event loop (cheaper than a thread hop); 0: every request's work on a thread")
    p.add_argument("--batch-max-rows", type=int, default=BATCH_MAX_ROWS, help="micro-batching: most rows, texts or "
                   "images that concurrent prediction requests join into one model call; a request with as many or "
                   f"more is not batched (0: off; default {BATCH_MAX_ROWS})")
    p.add_argument("--batch-wait-ms", type=float, default=BATCH_WAIT_MS, help="micro-batching: milliseconds the "
                   "first request waits for others when the model is idle; requests arriving while a batch runs are "
                   f"joined without waiting (default {BATCH_WAIT_MS:g})")
    p.add_argument("--onnx-threads", type=int, default=ONNX_THREADS, help="ONNX Runtime's intra-op threads per "
                   "model (0: its default, one per core); the server's parallelism is its requests and --workers, "
                   f"so the default is {ONNX_THREADS}: more can shorten one large request on an idle machine")
    return p.parse_args(argv)


SETTINGS_ENV = "TORCHYARD_SERVE_SETTINGS"  # how `--workers N` hands the settings to the worker processes
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _registry(model: str):
    """MLflow's registry for a registry reference (tasks/registry.py), None for a file."""
    from serving.registry import registry_uri

    if not registry_uri(model):
        return None
    from tasks import registry

    return registry


def worker_app():
    """The app of one uvicorn worker process (`--workers N`): the settings from the parent, the model loaded and
    checked again here (each worker holds its own copy)."""
    from serving.app import ServeSettings, create_app

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    return create_app(settings, registry=_registry(settings.model))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    from preprocessing.errors import user_facing
    from serving.app import ServeSettings, create_app, load

    registry = _registry(args.model)
    if registry is not None:
        from tasks import tracking

        try:
            tracking.check_reachable()
        except tracking.TrackingUnavailable as exc:
            print(f"error: cannot serve {args.model}: {exc}", file=sys.stderr)
            return 2

    if args.protect_predict and not args.api_key:
        print("error: --protect-predict needs --api-key (or TORCHYARD_API_KEY)", file=sys.stderr)
        return 2
    if args.workers < 1 or args.max_in_flight < 0 or args.inline_bytes < 0 or args.retry_after < 0 \
            or args.batch_max_rows < 0 or not 0 <= args.batch_wait_ms <= 1000 or args.onnx_threads < 0:
        print("error: --workers must be at least 1; --max-in-flight, --inline-bytes, --retry-after, "
              "--batch-max-rows and --onnx-threads at least 0; --batch-wait-ms from 0 to 1000", file=sys.stderr)
        return 2
    settings = ServeSettings(**{k: v for k, v in vars(args).items() if k in ServeSettings.model_fields},
                             loopback=args.host in ("127.0.0.1", "localhost", "::1"))
    try:
        loaded = load(settings.model, registry, settings.onnx_threads)
    except Exception as exc:
        reason = user_facing(exc)
        if reason is None:
            raise
        print(f"error: cannot serve {args.model}: {reason}", file=sys.stderr)
        return 2
    ref = loaded.ref
    logging.getLogger("torchyard.serving").info(
        f"serving {ref.uri}" + (f" version {ref.version}" if ref.version else "")
        + f" ({loaded.predictor.data_type}) on http://{args.host}:{args.port} (docs at /docs)"
        + (f" with {args.workers} worker processes" if args.workers > 1 else ""))
    import uvicorn

    if args.workers > 1:  # each worker imports this module and builds its app with worker_app()
        del loaded  # checked above so that a bad model stops here; the workers load their own copies
        os.environ[SETTINGS_ENV] = json.dumps(settings.model_dump())
        uvicorn.run("serve:worker_app", factory=True, workers=args.workers, host=args.host, port=args.port,
                    access_log=args.access_log, log_level="info", http="serving.nodelay:NoDelayProtocol",
                    app_dir=os.path.dirname(os.path.abspath(__file__)))
        return 0
    uvicorn.run(create_app(settings, loaded, registry), host=args.host, port=args.port, access_log=args.access_log,
                log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
