"""Long fuzzing run: thousands of random models through every pruning property.

Each seed builds one random model (tests/strategies.py), randomizes its weights
and BatchNorm statistics, draws a random selection over its prunable groups
and checks `check_pruning_properties`: removal == masking, the original is
untouched, `analyze` of the result reports the expected group sizes, and a
`.keras` round trip gives identical outputs. Any failure is recorded with its
seed (rebuild it with `build_random_model(RandomDraw(seed))`).

Usage:
    python benchmarks/fuzz.py --models 2000 [--start 0] [--shards 2]

Writes fuzz.json and fuzz.md to a scratch folder, or to benchmarks/results/ with `--update`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import keras  # noqa: E402
from tqdm import tqdm  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune.testing import randomize_batchnorm, randomize_weights  # noqa: E402
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
    return {"blocks": blocks, "layers": len(model.layers), **info}


def new_state() -> dict:
    return {"failures": [], "blocks": {}, "formats": {}, "touched": 0, "groups": 0, "layers": 0,
            "no_selection": 0, "done": 0, "wall_s": 0.0}  # fmt: skip


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
    state["done"] += 1


def merge(states: list[dict]) -> dict:
    total = new_state()
    for st in states:
        total["failures"] += st["failures"]
        for key in ("blocks", "formats"):
            for k, v in st[key].items():
                total[key][k] = total[key].get(k, 0) + v
        for key in ("touched", "groups", "layers", "no_selection", "done"):
            total[key] += st[key]
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
        "| models tried | failures | layers | groups | groups pruned | models with nothing to prune |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {tried} | {len(failures)} | {state['layers']} | {state['groups']} | {state['touched']} "
        f"| {state['no_selection']} |",
        "",
        "Properties checked on every model: removal equals masking (relative tolerance 1e-4), the "
        "original model is bit-for-bit unchanged (weights and config), `analyze` of the pruned "
        "model reports each group at its original size minus the removed channels, and the pruned "
        "model saved as `.keras` and loaded in plain Keras gives identical outputs.",
        "",
        "Data formats / ranks: " + ", ".join(f"{k}: {v}" for k, v in sorted(formats.items())),
        "",
        "Blocks drawn: " + ", ".join(f"{k}: {v}" for k, v in sorted(blocks.items())),
    ]
    if failures:
        lines += ["", "## Failures", ""] + [f"- seed {f['seed']}: {f['error']}" for f in failures]
    (RESULTS / "fuzz.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1, help="split the seeds over N processes")
    ap.add_argument("--shard", type=int, default=None, help="run only shard K (0-based) of --shards")
    ap.add_argument("--merge-only", action="store_true", help="merge the shards' progress files written so far")
    add_update_flag(ap)
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

    shard = args.shard or 0
    seeds = range(args.start + shard, args.start + args.models, args.shards)
    state, t0 = new_state(), time.perf_counter()
    for seed in tqdm(seeds, desc=f"fuzz shard {shard}", mininterval=30):
        record(state, seed, run_one)
        state["wall_s"] = time.perf_counter() - t0
        if state["done"] % 50 == 0 or state["done"] == len(seeds):
            if args.shards > 1:
                (RESULTS / f"fuzz.shard{shard}.json").write_text(json.dumps(state))
            else:
                write_results(state, command, args.models)
    if args.shards > 1:
        return 0
    print(f"{state['done']} models, {len(state['failures'])} failures, {state['wall_s']:.0f} s")
    announce(RESULTS)
    return 1 if state["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
