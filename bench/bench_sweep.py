"""Sweeps (issue 17): best validation loss after N trials and wall time for a random search, a TPE study and a TPE
study with median pruning, on one search space, same seed, in one run, driven through sweep-flow itself.

    .venv/bin/python bench/bench_sweep.py                        # sklearn:diabetes, 16 trials each, seed 42
    .venv/bin/python bench/bench_sweep.py --trials 24 --seeds 42,43,44 --data sklearn:breast_cancer

Each variant is one `sweep_flow` call, the path a user takes (`wine-sweep` in prefect.yaml): data prepared once into
a parent MLflow run, every trial an MLflow child run trained by the train task with its per-epoch metrics logged,
told to an Optuna study in a journal file. Only the sampler and the pruner differ:

    random      sampler random, pruner none
    tpe         sampler tpe (startup_trials random trials first), pruner none
    tpe+prune   sampler tpe, pruner median (after pruner_startup_trials finished trials, from epoch warmup+1)

The space is the wine-sweep deployment's: lr log-uniform, hidden_size, n_layers, dropout. The default table is the
diabetes regression sample that scikit-learn ships (442 rows, 10 features; nothing is downloaded): harder than wine,
where every trial scores about 1.0. best_val_loss is the lowest per-epoch validation loss of the best trial (MSE of
the standardised target for regression, cross-entropy for classification); the best trial's test metric (test_r2 or
test_accuracy, on the held-out split) shows whether a lower val loss carried over. "epochs" is the number of epochs
trained over all trials: the work pruning saves, free of the machine's noise. Wall time is the whole flow call.

Everything runs in a temporary folder (MLflow store, Optuna journals, Prefect home, work folder); an untimed 1-trial
sweep first pays for starting Prefect's temporary server and creating the stores. Trials run one at a time by
default (--concurrency): the numbers then depend on the seed only (it also draws the data split). Prints one row per
variant and seed, and ratios against the random search and against TPE measured in the same run, at the same seed.
No targets are asserted: a benchmark reports.
"""
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from common import parser, store_env

SCRATCH = Path(tempfile.mkdtemp(prefix="torchyard-bench-sweep-"))
os.environ.update(store_env(SCRATCH, base={}))
(SCRATCH / "prefect").mkdir()  # the temporary server does not create it
os.environ.pop("PREFECT_API_URL", None)  # a temporary Prefect server of its own (main), not a local stack's

SPACE = {
    "train.lr": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
    "model.hidden_size": {"type": "int", "low": 16, "high": 256, "step": 16},
    "model.n_layers": {"type": "int", "low": 1, "high": 4},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
VARIANTS = {  # name: (sampler, pruner)
    "random": ("random", "none"),
    "tpe": ("tpe", "none"),
    "tpe+prune": ("tpe", "median"),
}


def sweep(data: str, train: dict, study: dict, **flow) -> dict:
    """One sweep_flow call, the path a user takes; the best trial is never registered."""
    from flows.sweep_flow import SweepConfig, sweep_flow
    from preprocessing.config import DataConfig
    from training.config import TrainerConfig

    return sweep_flow(sweep=SweepConfig(**study, register_best=False), data=DataConfig(source=data),
                      train=TrainerConfig(**train), **flow)


def run_variant(name: str, args, seed: int) -> dict:
    sampler, pruner = VARIANTS[name]
    started, cpu = time.perf_counter(), time.process_time()
    result = sweep(args.data, {"n_epochs": args.epochs, "batch_size": args.batch_size},
                   {"parameters": SPACE, "sampler": sampler, "pruner": pruner, "n_trials": args.trials,
                    "startup_trials": args.startup_trials, "pruner_startup_trials": args.pruner_startup_trials,
                    "pruner_warmup_epochs": args.warmup_epochs, "metric": "best_val_loss",
                    "max_concurrency": args.concurrency},
                   experiment=f"bench-sweep-{name}-{seed}-{uuid.uuid4().hex[:6]}", seed=seed)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    trials = result["trials"]
    best = result["best"] or {"metrics": {}}
    test_metric = next((k for k in ("test_r2", "test_accuracy") if k in best["metrics"]), None)
    return {
        "variant": name, "seed": seed, "wall": wall, "cpu": cpu,
        "best_val_loss": best["metrics"].get("best_val_loss", float("nan")),
        "test_metric": test_metric, "test_value": best["metrics"].get(test_metric, float("nan")),
        **{status.lower(): sum(t["status"] == status for t in trials) for status in ("COMPLETE", "PRUNED", "FAILED")},
        "epochs": sum(t.get("epochs") or t.get("pruned_epoch") or 0 for t in trials),
        "best_params": best.get("overrides", {}),
    }


def main() -> None:
    args = parser(__doc__, {
        "--data": ("sklearn:diabetes", "any data.source; default the diabetes sample"),
        "--trials": (16, "trials per variant (default 16)"),
        "--seeds": ("42", "comma-separated run seeds; each runs every variant"),
        "--epochs": (40, "train.n_epochs of every trial (default 40)"),
        "--batch-size": 32,
        "--startup-trials": (5, "TPE: random trials first (default 5)"),
        "--pruner-startup-trials": (3, "median: finished trials before any is pruned (default 3)"),
        "--warmup-epochs": (5, "median: epochs never pruned (default 5)"),
        "--concurrency": (1, "trials at once (default 1: reproducible)"),
    }).parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    print(f"data {args.data}; {args.trials} trials per variant, {args.epochs} epochs max per trial, batch "
          f"{args.batch_size}, {args.concurrency} trial(s) at a time, seeds {seeds}; {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads")
    print("space: " + ", ".join(f"{k} {v['low']}..{v['high']}{' log' if v.get('log') else ''}"
                                for k, v in SPACE.items()))
    print(f"tpe: {args.startup_trials} random start-up trials; median pruner: {args.pruner_startup_trials} finished "
          f"trials first, never before epoch {args.warmup_epochs + 1}; driven through flows/sweep_flow.py:sweep_flow")
    from flows.prefect_server import TemporaryServer

    # train.py's temporary Prefect server (flows/prefect_server.py), started before Prefect is imported; Prefect's
    # own ephemeral start gives up after 20 s, which a busy machine can exceed
    server = TemporaryServer()
    os.environ["PREFECT_API_URL"], os.environ["PREFECT_UI_URL"] = server.api_url, ""
    try:
        print(f"temporary Prefect server answered in {server.wait():.1f}s", flush=True)
        started = time.perf_counter()
        # one untimed 1-trial, 1-epoch sweep: Prefect's temporary server, the MLflow database, first imports
        sweep(args.data, {"n_epochs": 1}, {"parameters": {"train.lr": SPACE["train.lr"]}, "sampler": "random",
                                           "pruner": "none", "n_trials": 1}, experiment="bench-sweep-warm-up")
        print(f"warm-up sweep (untimed in the table): {time.perf_counter() - started:.1f}s\n", flush=True)
        rows = []
        for seed in seeds:
            for name in VARIANTS:
                rows.append(run_variant(name, args, seed))
                row = rows[-1]
                print(f"  done: {name} seed {seed}: best_val_loss {row['best_val_loss']:.4f} in {row['wall']:.1f}s "
                      f"({row['pruned']} pruned, {row['failed']} failed); best {row['best_params']}", flush=True)
    finally:  # Prefect's queued logs and events reach the server before it stops (as train.py's finish)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=60)
        EventsWorker.drain_all(timeout=60)
        server.stop()

    test_name = next((r["test_metric"] for r in rows if r["test_metric"]), "test")
    print(f"\n| variant | seed | best_val_loss | best trial {test_name} | complete/pruned/failed | epochs trained "
          f"| wall s | CPU s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['best_val_loss']:.4f} | {r['test_value']:.4f} | "
              f"{r['complete']}/{r['pruned']}/{r['failed']} | {r['epochs']} | {r['wall']:.1f} | {r['cpu']:.1f} |")

    def ratio(a: str, b: str, key: str) -> float:
        """a's value over b's at the same seed (the seed also draws the data split), median over the seeds."""
        value = {(r["variant"], r["seed"]): r[key] for r in rows}
        return statistics.median(value[a, seed] / value[b, seed] for seed in seeds)

    over = "" if len(seeds) == 1 else f" (per seed, median over {len(seeds)} seeds)"
    print(f"\nratios{over}:")
    for a, b in (("tpe", "random"), ("tpe+prune", "random"), ("tpe+prune", "tpe")):
        print(f"  {a:>9} / {b:<6}  best_val_loss {ratio(a, b, 'best_val_loss'):.3f}   "
              f"wall time {ratio(a, b, 'wall'):.3f}   CPU time {ratio(a, b, 'cpu'):.3f}   "
              f"epochs trained {ratio(a, b, 'epochs'):.3f}")
    print("  (below 1: lower loss, less time, fewer epochs than the right-hand variant)")
    print(f"\nscratch folder (MLflow store, Optuna journals): {SCRATCH}")


if __name__ == "__main__":
    main()
