"""Model quality with defaults only, against the scikit-learn baseline on the same split (make bench-quality).

For each real labelled data set in bench/quality_data.py (two or more per data type, read from PyPI wheels), run
`train.py` as a user would, with no tuning flag, and read the network's and the baseline's test metric from its
summary. Prints one table row per data set:
rows, metric, network, baseline, margin (positive: the network is better), wall time of the whole train.py run.

    python bench/bench_quality.py                         # every data set
    python bench/bench_quality.py --only penguins,sms-spam
    python bench/bench_quality.py --only penguins -- --n_epochs 20 --batch_size 256   # extra train.py flags
"""
import os
import re
import subprocess
import sys
from pathlib import Path

from common import REPO, parser, timed
from quality_data import DATASETS

METRIC = re.compile(r"(test_\w+) (-?[\d.]+(?:e-?\d+)?)")


def parse(output: str) -> tuple[dict, dict, str, float | None]:
    """The network's and the baseline's test metrics from train.py's summary lines, the baseline's name and the
    seconds it took."""
    done = next((line for line in output.splitlines() if line.startswith("done: ")), None)
    if done is None:
        raise RuntimeError("train.py printed no 'done:' line:\n" + output[-3000:])
    network = {k: float(v) for k, v in METRIC.findall(done)}
    line = next((line for line in output.splitlines() if line.startswith("baseline (")), "")
    baseline = {k: float(v) for k, v in METRIC.findall(line.split("):", 1)[-1])}
    name = line[len("baseline ("):].split(",")[0] if line else "-"
    seconds = re.search(r", ([\d.]+)s\):", line)
    return network, baseline, name, float(seconds.group(1)) if seconds else None


def run(name: str, work: Path, extra: list[str]) -> dict:
    data_type, loader = DATASETS[name]
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    args = loader(out)
    rows = _rows(data_type, out)
    command = [sys.executable, str(REPO / "train.py"), *args, "--model_fn", str(out / "model.pth"),
               "--experiment", "bench-quality", "--model_name", f"bench-{name}", *extra]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "TORCHYARD_WORK_DIR": str(work / "runs"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    seconds, done = timed(subprocess.run, command, cwd=REPO, env=env, capture_output=True, text=True)
    (out / "train.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: train.py exited with {done.returncode}:\n{done.stderr[-3000:]}")
    network, baseline, baseline_name, baseline_seconds = parse(done.stdout)
    trained = re.search(r"trained (\d+) epoch\(s\) on \S+ in ([\d.]+)s", done.stdout + done.stderr)
    metric = "test_r2" if "test_r2" in network else "test_accuracy"
    return {"name": name, "type": data_type, "rows": rows, "metric": metric, "network": network[metric],
            "baseline": baseline.get(metric), "baseline_name": baseline_name, "seconds": seconds,
            "baseline_seconds": baseline_seconds, "epochs": int(trained.group(1)) if trained else None,
            "train_seconds": float(trained.group(2)) if trained else None}


def _rows(data_type: str, out: Path) -> int:
    if data_type == "image":
        return sum(1 for _ in (out / "images").rglob("*.png"))
    import pandas as pd

    return len(pd.read_csv(next(out.glob("*.csv"))))


def main() -> int:
    options = parser(__doc__, {"--only": (None, "comma-separated data set names: " + ", ".join(DATASETS)),
                               "--work": str(REPO / ".torchyard" / "bench-quality")})
    options.add_argument("extra", nargs="*", help="flags passed to every train.py run (after --)")
    args = options.parse_args()
    names = args.only.split(",") if args.only else list(DATASETS)
    if unknown := [n for n in names if n not in DATASETS]:
        options.error(f"unknown data set(s) {unknown}; known: {', '.join(DATASETS)}")
    work = Path(args.work)
    print("| data set | type | rows | metric | network | baseline | margin | train.py s | epochs | training s | "
          "baseline s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results, failures = [], 0
    for name in names:
        try:
            r = run(name, work, args.extra)
        except RuntimeError as exc:
            failures += 1
            print(f"| {name} | failed: {str(exc).splitlines()[0]} ||||||||||", flush=True)
            print(exc, file=sys.stderr)
            continue
        results.append(r)
        margin = f"{r['network'] - r['baseline']:+.4f}" if r["baseline"] is not None else "-"
        baseline = f"{r['baseline']:.4f}" if r["baseline"] is not None else "-"
        print(f"| {r['name']} | {r['type']} | {r['rows']} | {r['metric'].removeprefix('test_')} | "
              f"{r['network']:.4f} | {baseline} | {margin} | {r['seconds']:.0f} | {r['epochs']} | "
              f"{r['train_seconds']} | {r['baseline_seconds'] if r['baseline_seconds'] is not None else '-'} |",
              flush=True)
    beaten = [r for r in results if r["baseline"] is not None and r["network"] >= r["baseline"]]
    print(f"\nthe network matches or beats the baseline on {len(beaten)} of {len(results)} data sets; baselines: "
          + "; ".join(sorted({f"{r['type']} {r['baseline_name']}" for r in results})))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
