"""Latency targets on real runtimes: is `select(..., target_latency=T)` met within +-10%?

For each model (`keras.applications`, `weights=None`), input size, batch size and
runtime (`keras` = `predict_on_batch` on TensorFlow, `litert`, `onnx`), this runs

    sel = kerasprune.select(model, "l1", target_latency=T, runtime=rt, latency_batch_size=bs)

and records what the selection reports (the original's and the pruned model's
latency, measured interleaved in one run, and the planner's prediction), then
times original and pruned again, independently (`--verify-runs` interleaved
batches, median of the per-round ratios), and says whether the achieved fraction
is within 10% of T. It also reports how well the group tables predict the chosen
plan before any recalibration: with the shared-layer correction (what the planner
uses) and as the plain sum of group savings.

`--alignment` adds the width-alignment question: 50% of every group removed by L1
with `round_to` None / 8 / 16, all timed interleaved with the original; efficiency
= speed-up / MAC reduction. If aligned widths never run measurably faster per MAC
on a runtime, `round_to` stays the user's choice there.

`--breakdown` adds "why is it not faster": `kerasprune.latency_breakdown` of the
same 50% L1 plan, summed by layer class (time before -> after, MACs kept, layers
flagged), next to the whole models' times.

Each (model, runtime, batch) runs in its own process (memory, native crashes).
Results go to a scratch folder (benchmarks/output.py) unless
`--update` writes benchmarks/results/latency_target.{json,md}.

Usage:
    python benchmarks/latency_target.py                         # ResNet50 + MobileNetV2, 160 px, bs 1 and 16, keras + litert
    python benchmarks/latency_target.py --models MobileNetV2 --runtimes keras --batches 1
    python benchmarks/latency_target.py --models MobileNetV2 --runtimes keras --batches 16 --targets --breakdown
    nice -n 0 python benchmarks/latency_target.py --size 224 --alignment --breakdown --update   # quiet machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from output import add_update_flag, announce, results_dir, write_atomic  # noqa: E402

MODELS = ["ResNet50", "MobileNetV2"]


def _flat(graph, selection):
    import numpy as np

    import kerasprune as kp

    plan = kp.make_plan(graph, selection)
    flat = np.zeros(int(np.sum(graph.group_sizes)), dtype=bool)
    for gid, idx in plan.removed.items():
        flat[graph.group_offsets[gid] + np.asarray(idx, dtype=np.int64)] = True
    return flat


def _verify(rt, model, pruned, batch: int, runs: int) -> dict:
    from kerasprune.latency import paired_ratio

    a, b = rt.measure([model, pruned], batch_size=batch, warmup=3, runs=runs)
    return {
        "original_ms": a.median_ms, "pruned_ms": b.median_ms, "ratio": paired_ratio(b, a),
        "min_ratio": b.min_ms / a.min_ms, "runs": runs,
    }


def target_row(name, model, graph, rt, batch, target, round_to, args) -> dict:
    import kerasprune as kp
    from kerasprune.latency_model import build_latency_model

    opts = {"cache_dir": args.cache} if args.cache else {}
    t0 = time.perf_counter()
    lm = build_latency_model(model, runtime=rt, batch_size=batch, graph=graph, **opts)
    opts["statistic"] = args.statistic
    tables_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = kp.select(model, "l1", target_latency=target, runtime=rt, latency_batch_size=batch, round_to=round_to,
                    graph=graph, latency_options=opts)
    if sel.latency_batch_size != batch:
        raise RuntimeError(f"measured at batch {sel.latency_batch_size}, asked for {batch}")
    search_s = time.perf_counter() - t0
    pruned = kp.remove_filters(model, sel, graph=graph)
    flat = _flat(graph, sel)
    check = _verify(rt, model, pruned, batch, args.verify_runs)
    check["used"] = check["min_ratio"] if args.statistic == "min" else check["ratio"]
    ratio = sel.latency_ratio
    return {
        "model": name, "size": args.size, "batch": batch, "runtime": rt.name, "target": target,
        "round_to": round_to, "runtime_info": dict(sel.runtime_info),
        "groups": len(lm.tables), "table_sources": sorted({t.source for t in lm.tables.values()}),
        "tables_s": tables_s, "search_s": search_s,
        "before_ms": sel.latency_before_ms, "after_ms": sel.latency_after_ms,
        "predicted_ms": sel.latency_predicted_ms, "ratio": ratio,
        "error": None if ratio is None else ratio / target - 1,
        "within_10pct": ratio is not None and abs(ratio / target - 1) <= 0.10,
        "table_prediction": lm.predict(flat) / lm.before,
        "additive_prediction": lm.predict_additive(flat) / lm.before,
        "mac_ratio": kp.count_flops(pruned) / kp.count_flops(model),
        "filters_removed": sum(len(v) for v in sel.values()),
        "verify": check,
        "statistic": args.statistic,
        "verify_within_10pct": abs(check["used"] / target - 1) <= 0.10,
    }


def alignment_rows(name, model, graph, rt, batch, args) -> list[dict]:
    import kerasprune as kp
    from kerasprune.latency import paired_ratio

    variants = {}
    for rto in (None, 8, 16):
        sel = kp.select(model, "l1", ratio=0.5, round_to=rto, graph=graph)
        variants[rto] = kp.remove_filters(model, sel, graph=graph)
    timed = rt.measure([model, *variants.values()], batch_size=batch, warmup=3, runs=args.verify_runs)
    macs0 = kp.count_flops(model)
    rows = []
    for (rto, pruned), t in zip(variants.items(), timed[1:]):
        reduction = macs0 / kp.count_flops(pruned)
        speedup = 1 / paired_ratio(t, timed[0])
        rows.append({
            "model": name, "size": args.size, "batch": batch, "runtime": rt.name, "round_to": rto,
            "original_ms": timed[0].median_ms, "pruned_ms": t.median_ms, "mac_reduction": reduction,
            "speedup": speedup, "efficiency": speedup / reduction, "runs": args.verify_runs,
        })
    return rows


def breakdown_rows(name, model, graph, rt, batch, args) -> list[dict]:
    import kerasprune as kp

    sel = kp.select(model, "l1", ratio=0.5, graph=graph)
    pruned = kp.remove_filters(model, sel, graph=graph)
    t0 = time.perf_counter()
    bd = kp.latency_breakdown(model, pruned, runtime=rt, batch_size=batch, runs=args.breakdown_runs)
    took = time.perf_counter() - t0
    by: dict[str, dict] = {}
    for r in bd.rows:
        e = by.setdefault(r.cls, {"layers": 0, "before_ms": 0.0, "after_ms": 0.0, "macs_before": 0, "macs_after": 0,
                                  "flagged": 0, "flagged_keys": []})
        e["layers"] += 1
        e["before_ms"] += r.before_ms
        e["after_ms"] += r.after_ms
        e["macs_before"] += r.macs_before
        e["macs_after"] += r.macs_after
        e["flagged"] += int(r.flagged)
        if r.flagged:
            e["flagged_keys"].append(r.key)
    common = {"model": name, "size": args.size, "batch": batch, "runtime": rt.name, "runs": args.breakdown_runs,
              "whole_before_ms": bd.total_before_ms, "whole_after_ms": bd.total_after_ms,
              "overhead_ms": bd.overhead_ms, "seconds": took, "rows": len(bd.rows)}
    return [{**common, "cls": cls, **e} for cls, e in sorted(by.items(), key=lambda kv: -kv[1]["before_ms"])]


def child(args) -> None:
    import logging

    import keras

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.verbose:
        for name in ("kerasprune.latency_model", "kerasprune.latency_search"):
            logging.getLogger(name).setLevel(logging.INFO)

    import kerasprune as kp

    sys.path.insert(0, str(HERE))
    from surgery import conditions

    out = {"conditions": conditions(), "targets": [], "alignment": [], "breakdown": [], "errors": []}
    path = Path(args.child_out)

    def flush():
        path.write_text(json.dumps(out, default=str))

    name, runtime, batch = args.child
    batch = int(batch)
    model = getattr(keras.applications, name)(weights=None, input_shape=(args.size, args.size, 3))
    graph = kp.analyze(model)
    rt = kp.get_runtime(runtime)
    for target in args.targets:
        for rto in args.round_to:
            try:
                row = target_row(name, model, graph, rt, batch, target, rto or None, args)
                out["targets"].append(row)
                print(_line(row), flush=True)
            except Exception as e:  # reported, not fatal
                out["errors"].append({"model": name, "runtime": runtime, "batch": batch, "target": target,
                                      "error": f"{type(e).__name__}: {e}"[:600]})
                print("error:", out["errors"][-1], flush=True)
            flush()
    if args.alignment:
        try:
            out["alignment"] = alignment_rows(name, model, graph, rt, batch, args)
        except Exception as e:
            out["errors"].append({"model": name, "runtime": runtime, "batch": batch, "alignment": True,
                                  "error": f"{type(e).__name__}: {e}"[:600]})
    if args.breakdown:
        try:
            out["breakdown"] = breakdown_rows(name, model, graph, rt, batch, args)
        except Exception as e:
            out["errors"].append({"model": name, "runtime": runtime, "batch": batch, "breakdown": True,
                                  "error": f"{type(e).__name__}: {e}"[:600]})
    flush()


def _line(r: dict) -> str:
    return (
        f"{r['model']:12s} {r['runtime']:6s} b={r['batch']:2d} target {r['target']:.2f} rt={r['round_to']}: "
        f"{r['before_ms']:.1f} -> {r['after_ms']:.1f} ms = {r['ratio']:.3f} (predicted {r['predicted_ms'] / r['before_ms']:.3f}, "
        f"tables {r['table_prediction']:.3f}, additive {r['additive_prediction']:.3f}), verify {r['verify']['ratio']:.3f}, "
        f"MACs {r['mac_ratio']:.3f}, {r['tables_s']:.0f}+{r['search_s']:.0f} s"
    )


def markdown(data: dict) -> str:
    lines = [
        "# Latency targets: `select(model, 'l1', target_latency=T, runtime=..., latency_batch_size=...)`",
        "",
        "`weights=None` models. *achieved* = the selection's own measurement (original and pruned "
        "timed interleaved; median of the per-round ratios); *verify* = an independent second "
        "measurement of the same two models. *tables* = the group tables' prediction for the chosen "
        "plan before recalibration (with the shared-layer correction), *additive* = the plain sum of "
        "group savings. Within +-10% means |achieved / T - 1| <= 0.10 (verify: with the statistic the "
        "search used). *statistic* median: the original's median and the median per-round ratio; min: "
        "the fastest runs. Shared machine: noisy; rerun on a quiet one with the command below.",
        "",
    ]
    for run in data.get("runs", []):
        c = run["conditions"]
        lines.append(
            f"- `{c['command']}`: {c['date']}, {c['cpu']}, {c['cpus']} cores (load average "
            f"{c['loadavg'][0]:.1f} at start), Keras {c['keras']}, TensorFlow {c['tensorflow']}."
        )
    lines += [] if not data.get("targets") else [
        "",
        "| model | size | batch | runtime | threads | statistic | T | round_to | original | pruned | achieved "
        "| predicted | tables | additive | verify (median / min) | within 10% (achieved / verify) | MACs kept "
        "| groups | tables + search |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data.get("targets", []):
        lines.append(
            f"| {r['model']} | {r['size']} | {r['batch']} | {r['runtime']} | {r['runtime_info'].get('threads')} "
            f"| {r.get('statistic', 'median')} | {r['target']:.2f} | {r['round_to'] or '-'} | {r['before_ms']:.1f} ms | {r['after_ms']:.1f} ms "
            f"| {r['ratio']:.3f} | {r['predicted_ms'] / r['before_ms']:.3f} | {r['table_prediction']:.3f} "
            f"| {r['additive_prediction']:.3f} | {r['verify']['ratio']:.3f} / {r['verify'].get('min_ratio', float('nan')):.3f} "
            f"| {'yes' if r['within_10pct'] else 'no'} / {'yes' if r['verify_within_10pct'] else 'no'} "
            f"| {r['mac_ratio']:.3f} | {r['groups']} | {r['tables_s']:.0f} + {r['search_s']:.0f} s |"
        )
    versions = {json.dumps(r["runtime_info"].get("versions"), sort_keys=True) for r in data.get("targets", [])}
    if versions:
        lines += ["", "Runtime versions: " + "; ".join(sorted(versions))]
    if data.get("alignment"):
        lines += [
            "",
            "## Width alignment (50% of every group by L1, `round_to` None / 8 / 16)",
            "",
            "| model | size | batch | runtime | round_to | MAC reduction | original | pruned | speed-up | efficiency |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["alignment"]:
            lines.append(
                f"| {r['model']} | {r['size']} | {r['batch']} | {r['runtime']} | {r['round_to'] or '-'} "
                f"| {r['mac_reduction']:.2f}x | {r['original_ms']:.1f} ms | {r['pruned_ms']:.1f} ms "
                f"| {r['speedup']:.2f}x | {r['efficiency']:.2f} |"
            )
    if data.get("breakdown"):
        lines += [
            "",
            "## Why is it not faster (`latency_breakdown`, 50% of every group by L1, by layer class)",
            "",
            "Layers with weights timed alone (dispatch overhead removed), summed per class; *flagged*: layers "
            "whose time fell less than 1.5x their MACs (and >= 1% of the layer time).",
            "",
            "| model | size | batch | runtime | whole model | class | layers | time before -> after | share of layer time "
            "| time kept | MACs kept | flagged |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        totals: dict = {}
        for r in data["breakdown"]:
            k = (r["model"], r["size"], r["batch"], r["runtime"])
            totals[k] = totals.get(k, 0.0) + r["before_ms"]
        for r in data["breakdown"]:
            k = (r["model"], r["size"], r["batch"], r["runtime"])
            macs = f"{r['macs_after'] / r['macs_before']:.2f}" if r["macs_before"] else "-"
            kept = r["after_ms"] / r["before_ms"] if r["before_ms"] > 0 else float("nan")
            lines.append(
                f"| {r['model']} | {r['size']} | {r['batch']} | {r['runtime']} "
                f"| {r['whole_before_ms']:.1f} -> {r['whole_after_ms']:.1f} ms | {r['cls']} | {r['layers']} "
                f"| {r['before_ms']:.1f} -> {r['after_ms']:.1f} ms | {r['before_ms'] / max(totals[k], 1e-9):.0%} "
                f"| {kept:.2f} | {macs} | {r['flagged']} |"
            )
    for e in data.get("errors", []):
        lines.append(f"- error: {e}")
    return "\n".join(lines) + "\n"


def _key(r: dict) -> tuple:
    return (r["model"], r["size"], r["batch"], r["runtime"], r.get("target"), r.get("round_to"), r.get("statistic"),
            r.get("cls"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--runtimes", nargs="*", default=["keras", "litert"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 16])
    ap.add_argument("--targets", nargs="*", type=float, default=[0.5])
    ap.add_argument("--round-to", nargs="*", type=int, default=[0], help="0 = no rounding")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--verify-runs", type=int, default=60)
    ap.add_argument("--statistic", choices=["median", "min"], default="median",
                    help="what the search compares: median per-round ratios, or the fastest runs")
    ap.add_argument("--alignment", action="store_true", help="also time round_to None/8/16 at 50%% removal")
    ap.add_argument("--breakdown", action="store_true", help="also the per-layer breakdown of the 50%% L1 plan")
    ap.add_argument("--breakdown-runs", type=int, default=10, help="timed batches per layer model")
    ap.add_argument("--cache", help="folder for latency tables (reruns reuse them)")
    add_update_flag(ap)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per (model, runtime, batch) process")
    ap.add_argument("-v", "--verbose", action="store_true", help="log the search steps")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    folder = results_dir(args.update)
    path = folder / "latency_target.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": [], "targets": [], "alignment": [], "errors": []}
    data.setdefault("breakdown", [])
    command = " ".join(["python", "benchmarks/latency_target.py"] + sys.argv[1:])
    for name in args.models:
        for runtime in args.runtimes:
            for batch in args.batches:
                fd, tmp = tempfile.mkstemp(suffix=".json")
                os.close(fd)
                cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name, runtime, str(batch), "--child-out", tmp]
                env = {**os.environ, "KERAS_BACKEND": "tensorflow", "KP_BENCH_COMMAND": command}
                try:
                    subprocess.run(cmd, env=env, timeout=args.timeout, check=False)
                except subprocess.TimeoutExpired:
                    print(f"{name} {runtime} b={batch}: timed out after {args.timeout} s")
                try:
                    part = json.loads(Path(tmp).read_text())
                except (OSError, ValueError):
                    print(f"{name} {runtime} b={batch}: no results")
                    continue
                finally:
                    Path(tmp).unlink(missing_ok=True)
                for kind in ("targets", "alignment", "breakdown"):
                    new = {_key(r) for r in part[kind]}
                    data[kind] = [r for r in data[kind] if _key(r) not in new] + part[kind]
                data["errors"] = [e for e in data["errors"] if (e["model"], e["runtime"], e["batch"]) != (name, runtime, batch)]
                data["errors"] += part["errors"]
                data["runs"].append({"conditions": part["conditions"], "what": [name, runtime, batch]})
                _write(folder, data)
    print(markdown(data))
    announce(folder)


def _write(folder: Path, data: dict) -> None:
    write_atomic(folder / "latency_target.json", json.dumps(data, indent=2, default=str))
    write_atomic(folder / "latency_target.md", markdown(data))


if __name__ == "__main__":
    main()
