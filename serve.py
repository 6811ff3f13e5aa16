"""python serve.py (or python -m serving) --model models:/wine-mlp@champion --host 127.0.0.1 --port 8000 (make serve).

The composition root of serving: serving/ imports neither MLflow nor Prefect (a file model serves on a machine
without them); this entry point connects the MLflow registry (tasks/registry.py) when the model is a registry
reference.
"""
import argparse
import logging
import os
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from preprocessing.errors import user_facing
    from serving.app import ServeSettings, create_app, load
    from serving.registry import registry_uri

    registry = None
    if registry_uri(args.model):  # registry references are resolved through MLflow; files need neither
        from tasks import registry, tracking

        try:
            tracking.check_reachable()
        except tracking.TrackingUnavailable as exc:
            print(f"error: cannot serve {args.model}: {exc}", file=sys.stderr)
            return 2

    if args.protect_predict and not args.api_key:
        print("error: --protect-predict needs --api-key (or TORCHYARD_API_KEY)", file=sys.stderr)
        return 2
    settings = ServeSettings(model=args.model, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                             api_key=args.api_key, protect_predict=args.protect_predict,
                             loopback=args.host in ("127.0.0.1", "localhost", "::1"),
                             max_image_side=args.max_image_side, reload_interval=args.reload_interval)
    try:
        loaded = load(settings.model, registry)
    except Exception as exc:
        reason = user_facing(exc)
        if reason is None:
            raise
        print(f"error: cannot serve {args.model}: {reason}", file=sys.stderr)
        return 2
    app = create_app(settings, loaded, registry)
    ref = loaded.ref
    logging.getLogger("torchyard.serving").info(
        f"serving {ref.uri}" + (f" version {ref.version}" if ref.version else "")
        + f" ({loaded.predictor.data_type}) on http://{args.host}:{args.port} (docs at /docs)")
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
