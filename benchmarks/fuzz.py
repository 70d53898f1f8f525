"""Long fuzzing run: thousands of random models through every pruning property.

Each seed builds one random model (tests/strategies.py), randomizes its weights
and BatchNorm statistics, draws a random selection over its prunable groups
and checks `check_pruning_properties`: removal == masking, the original is
untouched, `analyze` of the result reports the expected group sizes, and a
`.keras` round trip gives identical outputs. Then the pruned model trains for
one step (`train_on_batch`, batch of 3, MSE towards zeros) the way kerasprune
trains, inside `kerasprune.stack.safe_training`. Any failure is recorded with
its seed (rebuild it with `build_random_model(RandomDraw(seed))`).

The seeds run in a worker process that a supervisor watches: a native crash
(the process killed by a signal) is recorded as that seed's failure, and a new
worker goes on with the next seed.

Usage:
    python benchmarks/fuzz.py --models 2000 [--start 0] [--shards 2]

Writes fuzz.json and fuzz.md to a scratch folder, or to benchmarks/results/ with `--update`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune.testing import random_input, randomize_batchnorm, randomize_weights  # noqa: E402
from strategies import (  # noqa: E402
    RandomDraw,
    build_random_model,
    check_pruning_properties,
    draw_selection,
)

sys.path.insert(0, str(ROOT / "benchmarks"))
from output import add_update_flag, announce, results_dir  # noqa: E402

RESULTS = results_dir(False)  # main() switches to benchmarks/results/ with --update


def run_one(seed: int) -> dict:
    if seed % 50 == 0:
        keras.backend.clear_session()  # with garbage collection: slow, so not every model
    else:
        keras.backend.clear_session(free_memory=False)
    d = RandomDraw(seed)
    model, blocks = build_random_model(d)
    randomize_weights(model, seed=seed)
    randomize_batchnorm(model, seed=seed + 1)
    selection, removed = draw_selection(d, kp.analyze(model))
    info = check_pruning_properties(model, selection, removed)
    return {"blocks": blocks, "layers": len(model.layers), **info, **train_one_step(kp.remove_filters(model, selection))}


def train_one_step(model) -> dict:
    """One `train_on_batch` of the pruned model (batch of 3, MSE towards zeros), guarded as kerasprune trains."""
    x = random_input(model, batch=3, seed=2)
    outputs = model(x, training=False)
    outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    y = [np.zeros(tuple(o.shape), "float32") for o in outputs]
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=["mse"] * len(y))
    with kp.stack.safe_training(model, where="fuzz") as rerouted:
        logs = model.train_on_batch(x, y if len(y) > 1 else y[0], return_dict=True)
    return {"rerouted": len(rerouted), "nonfinite": not math.isfinite(float(logs["loss"]))}


def new_state() -> dict:
    return {"failures": [], "blocks": {}, "formats": {}, "touched": 0, "groups": 0, "layers": 0,
            "no_selection": 0, "rerouted": 0, "nonfinite": 0, "done": 0, "wall_s": 0.0}  # fmt: skip


def record(state: dict, seed: int, run) -> None:
    """Run one seed and add its outcome to `state`."""
    try:
        info = run(seed)
    except Exception as e:  # record and go on: the count of failures is the result
        state["failures"].append(
            {"seed": seed, "error": f"{type(e).__name__}: {e}"[:500],
             "where": traceback.format_exc(limit=-3)[-1500:]}  # fmt: skip
        )
    else:
        fmt = info["blocks"][0]
        state["formats"][fmt] = state["formats"].get(fmt, 0) + 1
        for b in info["blocks"][1:]:
            state["blocks"][b] = state["blocks"].get(b, 0) + 1
        state["touched"] += info["touched"]
        state["groups"] += info["groups"]
        state["layers"] += info["layers"]
        state["no_selection"] += info["touched"] == 0
        state["rerouted"] += info["rerouted"] > 0
        state["nonfinite"] += info["nonfinite"]
    state["done"] += 1


def merge(states: list[dict]) -> dict:
    total = new_state()
    for st in states:
        total["failures"] += st["failures"]
        for key in ("blocks", "formats"):
            for k, v in st[key].items():
                total[key][k] = total[key].get(k, 0) + v
        for key in ("touched", "groups", "layers", "no_selection", "rerouted", "nonfinite", "done"):
            total[key] += st.get(key, 0)
        total["wall_s"] = max(total["wall_s"], st["wall_s"])
    return total


def write_results(state: dict, command: str, planned: int) -> None:
    """Write fuzz.json / fuzz.md for the models tried so far."""
    failures, formats, blocks = state["failures"], state["formats"], state["blocks"]
    tried, wall = state["done"], state["wall_s"]
    result = {
        "models": tried,
        "failures": len(failures),
        "failure_details": failures,
        "groups_total": state["groups"],
        "groups_pruned": state["touched"],
        "layers_total": state["layers"],
        "models_without_prunable_group": state["no_selection"],
        "models_trained_rerouted": state["rerouted"],
        "models_trained_nonfinite_loss": state["nonfinite"],
        "formats": dict(sorted(formats.items())),
        "blocks": dict(sorted(blocks.items())),
        "wall_s": round(wall, 1),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "command": command,
        "complete": tried >= planned,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Fuzzing: random models through every pruning property",
        "",
        f"`{command}` on the {result['backend']} backend (keras {result['keras']}), "
        f"{wall / 60:.1f} min wall time" + ("." if result["complete"] else f" (in progress: {tried} so far)."),
        "",
        "| models tried | failures | layers | groups | groups pruned | models with nothing to prune "
        "| trained with rerouted layers | non-finite loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {tried} | {len(failures)} | {state['layers']} | {state['groups']} | {state['touched']} "
        f"| {state['no_selection']} | {state['rerouted']} | {state['nonfinite']} |",
        "",
        "Properties checked on every model: removal equals masking (relative tolerance 1e-4), the "
        "original model is bit-for-bit unchanged (weights and config), `analyze` of the pruned "
        "model reports each group at its original size minus the removed channels, and the pruned "
        "model saved as `.keras` and loaded in plain Keras gives identical outputs; then the pruned model "
        "trains one step (batch of 3) inside `kerasprune.stack.safe_training`, in a worker process whose "
        "native crash is recorded as the seed's failure. 'Rerouted': models whose strided 1x1 convolutions "
        "the guard ran at unit stride (oneDNN bug, docs/training-crash.md).",
        "",
        "Data formats / ranks: " + ", ".join(f"{k}: {v}" for k, v in sorted(formats.items())),
        "",
        "Blocks drawn: " + ", ".join(f"{k}: {v}" for k, v in sorted(blocks.items())),
    ]
    if failures:
        lines += ["", "## Failures", ""] + [f"- seed {f['seed']}: {f['error']}" for f in failures]
    (RESULTS / "fuzz.md").write_text("\n".join(lines) + "\n")


def worker(seeds: range) -> int:
    """Run `seeds` here, one `START seed` / `DONE {state}` line pair per seed on stdout."""
    for seed in seeds:
        print(f"START {seed}", flush=True)
        state = new_state()
        record(state, seed, run_one)
        print("DONE " + json.dumps(state), flush=True)
    return 0


def supervise(seeds: range, progress) -> None:
    """Run `seeds` in worker processes; a worker killed inside a seed makes that seed a failure."""
    step = seeds.step
    start = seeds.start
    while start < seeds.stop:
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", f"{start}:{seeds.stop}:{step}"],
                stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
            current = None
            for line in proc.stdout:
                if line.startswith("START "):
                    current = int(line.split()[1])
                elif line.startswith("DONE ") and current is not None:
                    progress(json.loads(line[5:]))
                    start, current = current + step, None
            code = proc.wait()
            if current is None and code == 0:
                return
            err.seek(0)
            noise = ("port.cc", "absl::", "cpu_feature_guard", "To enable the following")
            said = [ln for ln in err.read().splitlines() if ln.strip() and not any(n in ln for n in noise)][-3:]
        seed = current if current is not None else start
        sig = -code if code < 0 else (code - 128 if code > 128 else 0)
        what = f"native crash ({signal.Signals(sig).name})" if sig > 0 else f"worker exited with {code}"
        state = new_state()
        state["failures"].append({"seed": seed, "error": f"{what}: {' | '.join(said)}"[:500], "where": "worker"})
        state["done"] = 1
        progress(state)
        start = seed + step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1, help="split the seeds over N processes")
    ap.add_argument("--shard", type=int, default=None, help="run only shard K (0-based) of --shards")
    ap.add_argument("--merge-only", action="store_true", help="merge the shards' progress files written so far")
    add_update_flag(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # start:stop:step, run by the supervisor
    args = ap.parse_args(argv)
    global RESULTS
    RESULTS = results_dir(args.update)
    command = f"python benchmarks/fuzz.py --models {args.models} --start {args.start} --shards {args.shards}"
    if args.merge_only:
        files = sorted(RESULTS.glob("fuzz.shard*.json"))
        state = merge([json.loads(f.read_text()) for f in files])
        write_results(state, command, args.models)
        print(f"{state['done']} models so far, {len(state['failures'])} failures")
        return 0
    if args.shard is None and args.shards > 1:  # spawn the shards, then merge their states
        procs = [
            subprocess.Popen([sys.executable, __file__, *map(str, argv or sys.argv[1:]), "--shard", str(k)])
            for k in range(args.shards)
        ]
        codes = [p.wait() for p in procs]
        state = merge([json.loads((RESULTS / f"fuzz.shard{k}.json").read_text()) for k in range(args.shards)])
        write_results(state, command, args.models)
        for k in range(args.shards):
            (RESULTS / f"fuzz.shard{k}.json").unlink()
        print(f"{state['done']} models, {len(state['failures'])} failures")
        announce(RESULTS)
        return 1 if any(codes) or state["failures"] else 0

    if args.worker:
        start, stop, step = map(int, args.worker.split(":"))
        return worker(range(start, stop, step))

    shard = args.shard or 0
    seeds = range(args.start + shard, args.start + args.models, args.shards)
    state, t0 = new_state(), time.perf_counter()
    bar = tqdm(total=len(seeds), desc=f"fuzz shard {shard}", mininterval=30)

    def progress(seed_state: dict) -> None:
        nonlocal state
        wall = time.perf_counter() - t0
        state = merge([state, seed_state])
        state["wall_s"] = wall
        bar.update(1)
        if state["done"] % 50 == 0 or state["done"] == len(seeds):
            if args.shards > 1:
                (RESULTS / f"fuzz.shard{shard}.json").write_text(json.dumps(state))
            else:
                write_results(state, command, args.models)

    supervise(seeds, progress)
    bar.close()
    if args.shards > 1:
        return 0
    print(f"{state['done']} models, {len(state['failures'])} failures, {state['wall_s']:.0f} s")
    announce(RESULTS)
    return 1 if state["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
