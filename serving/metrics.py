"""Prometheus metrics of the REST API at GET /metrics (prometheus-client, the reference client library): requests by
route, method and status, latency histograms, requests in flight, inputs predicted, micro-batch sizes (inputs and
requests per joined model call), the model served (name, version, alias as labels), reloads by outcome, and a
train/serve skew gauge per numeric feature: the share of served values outside the training split's min/max, from
the statistics stored in the model file.

Each app has its own CollectorRegistry, so several apps in one process (tests) do not share counters.
"""
import threading
import time

import numpy as np
import pandas as pd
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

ROUTES = ("/predict", "/invocations", "/health", "/ping", "/version", "/model", "/reload", "/metrics", "/docs",
          "/openapi.json")  # anything else is counted as "other": a label per unknown path would grow without bound
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("torchyard_requests", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("torchyard_request_duration_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("torchyard_requests_in_flight", "Requests being handled now", registry=registry)
        self.inputs = Counter("torchyard_predicted_inputs", "Rows, texts or images predicted, by model and version",
                              ["model", "version"], registry=registry)
        self.batch = Histogram("torchyard_request_inputs", "Rows, texts or images per prediction request",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=registry)
        self.micro_batch = Histogram("torchyard_micro_batch_inputs", "Rows, texts or images per model call made by "
                                     "micro-batching (--batch-max-rows, --batch-wait-ms)",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=registry)
        self.micro_batch_requests = Histogram("torchyard_micro_batch_requests", "Prediction requests joined into one "
                                              "model call by micro-batching",
                                              buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
                                              registry=registry)
        self.model = Gauge("torchyard_model_info", "The model being served (1 for the current one)",
                           ["model", "version", "alias", "data_type"], registry=registry)
        self.reloads = Counter("torchyard_reloads", "Reloads of the model reference, by outcome (reloaded, "
                               "unchanged, refused, failed)", ["outcome"], registry=registry)
        self._seen: dict[str, list[int]] = {}  # feature -> [values seen, values outside]
        self._lock = threading.Lock()
        self.skew = _SkewGauge(self._seen, self._lock)  # computed from the counts when scraped, not per request
        registry.register(self.skew)
        self._children: dict = {}  # (metric, labels) -> its child: labels() costs microseconds on every request

    def child(self, metric, *labels):
        """`metric.labels(*labels)`, looked up once (the label sets are bounded: routes, statuses, the model)."""
        if (metric, labels) not in self._children:
            self._children[metric, labels] = metric.labels(*labels)
        return self._children[metric, labels]

    def serving(self, name: str, version: str | None, alias: str | None, data_type: str) -> None:
        """Record the model now served (the previous one's series is removed)."""
        self.model.clear()
        self.model.labels(name or "", version or "", alias or "", data_type).set(1)

    def predicted(self, name: str, version: str | None, count: int) -> None:
        self.child(self.inputs, name or "", version or "").inc(count)
        self.batch.observe(count)

    def batched(self, inputs: int, requests: int) -> None:
        """One model call of the micro-batcher: `requests` requests joined, `inputs` inputs in all."""
        self.micro_batch.observe(inputs)
        self.micro_batch_requests.observe(requests)

    def observe_features(self, frame: pd.DataFrame, numeric: list[dict]) -> None:
        """Count the values of each numeric feature outside [min, max] of the training split (model files written
        before the range was stored have none: nothing is counted)."""
        updates = []
        for spec in numeric:
            if "min" not in spec or spec["name"] not in frame.columns:
                continue
            values = pd.to_numeric(frame[spec["name"]], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            present = values[~np.isnan(values)]
            outside = int(((present < spec["min"]) | (present > spec["max"])).sum())
            updates.append((spec["name"], len(present), outside))
        if updates:
            self.observe_counts(*zip(*updates))

    def observe_counts(self, features, seen, outside) -> None:
        """The skew gauge's counts of one request, already made: per feature, the values seen and those outside
        the training range (serving.compiled counts them with numpy on the fast path)."""
        with self._lock:
            for feature, n, out in zip(features, seen, outside):
                counts = self._seen.setdefault(feature, [0, 0])
                counts[0] += int(n)
                counts[1] += int(out)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _SkewGauge:
    """torchyard_feature_out_of_range_ratio{feature}: the share of the served values of a numeric feature outside the
    training split's min/max since the server started; a custom collector, so the ratio is computed when /metrics is
    scraped instead of a gauge being set per feature on every request."""

    def __init__(self, seen: dict[str, list[int]], lock: threading.Lock):
        self._seen, self._lock = seen, lock

    def collect(self):
        family = self.describe()[0]
        with self._lock:
            ratios = [(feature, outside / seen) for feature, (seen, outside) in self._seen.items() if seen]
        for feature, ratio in ratios:
            family.add_metric([feature], ratio)
        return [family]

    def describe(self):
        return [GaugeMetricFamily("torchyard_feature_out_of_range_ratio", "Share of the served values of a numeric "
                                  "feature outside the training split's min/max, since the server started",
                                  labels=["feature"])]


class MetricsMiddleware:
    """Counts every HTTP request by route, method and status, and times it (pure ASGI: no buffering)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.child(self.metrics.latency, route).observe(time.perf_counter() - started)
            self.metrics.child(self.metrics.requests, route, scope["method"], str(status["code"])).inc()
