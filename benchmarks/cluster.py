"""Sensitivity scan on a local Dask cluster: 1 vs 2 worker processes, and in this process.

A VGG-style CNN (32x32x3 input, widths 32-32-64-64, BatchNorm, `weights` random)
is scanned with `kerasprune.sensitivity(model, "accuracy", val_data=...)`:
every prunable group at `--ratios`, each evaluation = `remove_filters` +
`compile_from_config` + `evaluate` on `--val` samples. The same scan runs

- `serial`: in this process (`backend=None`, `n_jobs=1`),
- `dask-1`: `backend=client` of a `LocalCluster(n_workers=1, threads_per_worker=1)`,
- `dask-2`: the same with `n_workers=2`,

every process limited to one TensorFlow/BLAS thread (environment set before the
framework starts), so the speed-up measures task parallelism, not thread
parallelism. Both clusters stay up; each round runs the three scans in a
rotating order, after one warm-up scan per engine (workers import Keras and
rebuild the model on their first task). Reported: medians over `--rounds`,
speed-ups (medians of per-round ratios `dask-1 / dask-2`, `serial / dask-2`),
the overhead of the engine (`(dask-1 - serial) / evaluations`, per evaluation,
in wall time and in CPU time of the driver plus the workers — far less
sensitive to other jobs), the cluster start-up and the warm-up scan. Results equal the serial scan (checked every round).

On a shared 2-core machine the numbers are noisy: other jobs take the cores
the second worker needs. Rerun on a quiet machine:

    python benchmarks/cluster.py                 # results to a scratch folder (printed)
    python benchmarks/cluster.py --update        # benchmarks/results/cluster.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

THREADS = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
os.environ.update(THREADS)  # before TensorFlow starts, here and (inherited) in the workers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from output import add_update_flag, announce, results_dir, write_atomic  # noqa: E402


def build(val: int):
    import keras
    import numpy as np
    from keras import layers as L

    from kerasprune.testing import randomize_batchnorm, randomize_weights

    i = keras.Input((32, 32, 3))
    x = i
    for b, width in enumerate((32, 32, 64, 64)):
        x = L.Conv2D(width, 3, padding="same", name=f"conv{b}")(x)
        x = L.BatchNormalization(name=f"bn{b}")(x)
        x = L.ReLU()(x)
        if b % 2:
            x = L.MaxPooling2D()(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(10, activation="softmax", name="head")(x))
    randomize_weights(model, 0)
    randomize_batchnorm(model, 1)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x_val = rng.normal(size=(val, 32, 32, 3)).astype("float32")
    y_val = rng.integers(0, 10, val)
    return model, (x_val, y_val)


def _cpu(backend) -> float:
    """CPU seconds used so far by this process and, for a cluster, by its workers (all threads)."""
    workers = backend.run(time.process_time).values() if backend is not None else ()
    return time.process_time() + sum(workers)


def scan(model, val_data, ratios, backend):
    """One scan: (wall seconds, CPU seconds of every process involved, result)."""
    import kerasprune as kp

    cpu, start = _cpu(backend), time.perf_counter()
    result = kp.sensitivity(model, "accuracy", val_data=val_data, ratios=ratios, backend=backend, progress=False)
    return time.perf_counter() - start, _cpu(backend) - cpu, result


def run(args) -> dict:
    from distributed import Client, LocalCluster
    from surgery import conditions

    start_conditions = conditions()
    model, val_data = build(args.val)
    engines, starts = {"serial": None}, {"serial": 0.0}
    clusters = []
    for n in (1, 2):
        t = time.perf_counter()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        starts[f"dask-{n}"] = time.perf_counter() - t
        engines[f"dask-{n}"] = client
        clusters.append((client, cluster))
    try:
        warm, reference = {}, None
        for name, backend in engines.items():
            warm[name], _, result = scan(model, val_data, args.ratios, backend)
            reference = reference or result
            print(f"warm-up {name}: {warm[name]:.2f} s", flush=True)
        evaluations = 1 + len(reference.rows)
        times: dict[str, list[float]] = {name: [] for name in engines}
        cpus: dict[str, list[float]] = {name: [] for name in engines}
        names = list(engines)
        identical = True
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                seconds, cpu, result = scan(model, val_data, args.ratios, engines[name])
                times[name].append(seconds)
                cpus[name].append(cpu)
                identical &= [x.metric for x in result.rows] == [x.metric for x in reference.rows]
            print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)
    finally:
        for client, cluster in clusters:
            client.close()
            cluster.close()
    med = {name: statistics.median(v) for name, v in times.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}

    def paired(a, b):  # median of per-round ratios: slow drifts of the load cancel
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        "conditions": start_conditions,
        "loadavg_end": os.getloadavg(),
        "threads_per_process": 1,
        "evaluations": evaluations,
        "val_samples": args.val,
        "ratios": args.ratios,
        "rounds": args.rounds,
        "identical_results": identical,
        "engines": [
            {
                "engine": name,
                "workers": 0 if name == "serial" else int(name[-1]),
                "start_s": starts[name],
                "warmup_s": warm[name],
                "median_s": med[name],
                "median_cpu_s": cpu[name],
                "times_s": times[name],
                "cpu_s": cpus[name],
            }
            for name in names
        ],
        "speedup_2_vs_1": paired("dask-1", "dask-2"),
        "speedup_2_vs_serial": paired("serial", "dask-2"),
        "overhead_per_evaluation_ms": 1000 * (med["dask-1"] - med["serial"]) / evaluations,
        "cpu_overhead_per_evaluation_ms": 1000 * (cpu["dask-1"] - cpu["serial"]) / evaluations,
    }


def markdown(data: dict) -> str:
    c = data["conditions"]
    lines = [
        "# Sensitivity scan on a local Dask cluster: 1 vs 2 workers",
        "",
        f"`{c['command']}`: {c['date']}, backend {c['backend']}, {c['cpu']}, {c['cpus']} cores shared with "
        f"other jobs (load average {c['loadavg'][0]:.1f} at start, {data['loadavg_end'][0]:.1f} at end), "
        f"Keras {c['keras']}, TensorFlow {c['tensorflow']}.",
        "",
        f"VGG-style CNN, {data['evaluations']} evaluations (`evaluate` on {data['val_samples']} samples each), "
        f"one thread per process; medians of {data['rounds']} rounds. Results identical to the serial scan: "
        f"{'yes' if data['identical_results'] else 'NO'}.",
        "",
        "| engine | workers | cluster start | warm-up scan | median scan | per evaluation | CPU per evaluation |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in data["engines"]:
        lines.append(
            f"| {e['engine']} | {e['workers'] or '- (this process)'} | {e['start_s']:.1f} s | {e['warmup_s']:.1f} s | "
            f"{e['median_s']:.2f} s | {1000 * e['median_s'] / data['evaluations']:.0f} ms | "
            f"{1000 * e['median_cpu_s'] / data['evaluations']:.0f} ms |"
        )
    lines += [
        "",
        f"- speed-up 2 workers vs 1: **{data['speedup_2_vs_1']:.2f}x**; vs this process: "
        f"{data['speedup_2_vs_serial']:.2f}x (medians of per-round ratios, wall clock)",
        f"- engine overhead (dask-1 - serial, per evaluation): {data['overhead_per_evaluation_ms']:.0f} ms wall, "
        f"{data['cpu_overhead_per_evaluation_ms']:.0f} ms CPU (driver + workers); the warm-up scan adds the "
        "workers' start (imports, model rebuilt once per worker) and the cluster start shown above",
        "- on a shared 2-core machine the second worker competes with other jobs: rerun with "
        "`python benchmarks/cluster.py --update` on a quiet machine",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--val", type=int, default=1024, help="validation samples per evaluation")
    ap.add_argument("--ratios", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    add_update_flag(ap)
    args = ap.parse_args()
    data = run(args)
    out = results_dir(args.update)
    write_atomic(out / "cluster.json", json.dumps(data, indent=1) + "\n")
    write_atomic(out / "cluster.md", markdown(data))
    print(markdown(data))
    announce(out)


if __name__ == "__main__":
    main()
