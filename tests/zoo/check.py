"""Run one zoo model through kerasprune and say what happened (used by benchmarks/zoo.py and the tests).

`check(entry)` builds the model, randomizes its normalization statistics, analyzes it,
selects 30% of every prunable group by L1 norm, removes those filters and compares the
smaller model with the masked original, then saves the smaller model as `.keras` and,
in a fresh process that never imports kerasprune, reloads it, compares its outputs and
trains it for one step. The result is a row (a dict) with a `status`:

- ``pruned exactly``: every group that does not end at a model output is prunable (and
  removal equals masking), and no layer with weights is a barrier; approximate groups
  (normalization across channels) are counted.
- ``partly refused``: some groups are prunable, some are refused; `refusals` says why.
- ``fully refused``: no group is prunable (or `analyze` refuses the model), with reasons.
- ``FAILED``: an exception in kerasprune, removal != masking, the original model changed,
  or the pruned model does not reload or train (and the original does).

Refusal reasons are checked: each should name the blocking layer and its class
(``'name' (Class)``) and say what would make the group prunable; `flagged` lists those
that do not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path

import keras
import numpy as np

import kerasprune as kp
from kerasprune.plan import Plan
from kerasprune.testing import predict, random_input, randomize_batchnorm
from zoo.registry import ZooModel

TOL = 1e-4
RATIO = 0.3
BATCH = 4
TESTS_DIR = str(Path(__file__).resolve().parent.parent)
OUTPUT_REASON = "channels reach the model output"
_NAMED = re.compile(r"'[^']+' \([A-Za-z_][\w.]*\)")
#: Words that say what would make a group prunable (a registration, a declaration, a needed change).
_REMEDY = re.compile(
    r"register|channelwise|declare|\bneeds?\b|\bmust\b|\binstead\b|\bwould\b|\bmake\b|\buse\b|\bset\b|"
    r"\bgive\b|\bpass\b|\bsupported\b|\bonly when\b|\bunless\b|\bprunable if\b|\bto prune\b",
    re.IGNORECASE,
)


def randomize_normalizations(model, seed: int = 0) -> None:
    """Random BatchNorm statistics (`kerasprune.testing`) and random LayerNorm/GroupNorm gamma, beta."""
    randomize_batchnorm(model, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        for name, mean in (("gamma", 1.0), ("beta", 0.0)):
            v = getattr(layer, name, None)
            if isinstance(v, keras.Variable) and len(v.shape) == 1:
                v.assign(rng.normal(mean, 0.5, tuple(v.shape)).astype(v.dtype))


def _layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def judge_reason(reason: str) -> dict:
    """Whether a refusal reason names the layer and its class, and says what would make it prunable."""
    return {"names_layer": bool(_NAMED.search(reason)), "says_fix": bool(_REMEDY.search(reason))}


def _seed_states(model) -> list:
    return [v for v in model.variables if "seed_generator" in v.path]


def _run(model, x, seeds: list[np.ndarray]) -> list[np.ndarray]:
    """`predict(model, x)` with every random layer's seed state reset first (same noise every call)."""
    for v, value in zip(_seed_states(model), seeds):
        v.assign(value)
    return predict(model, x)


def _snapshot(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.weights]


def _rel_diff(a: list, b: list) -> float:
    worst = 0.0
    for ya, yb in zip(a, b):
        ya, yb = np.asarray(ya, dtype=np.float64), np.asarray(yb, dtype=np.float64)
        scale = max(1.0, float(np.abs(ya).max()) if ya.size else 1.0)
        worst = max(worst, float(np.abs(ya - yb).max()) / scale if ya.size else 0.0)
    return worst


def prunable_share(graph) -> float:
    """Fraction of the model's parameters held by weights that some prunable group slices."""
    sliced = {}
    for g in graph.prunable_groups:
        for key, s, _ in graph.slices(g):
            var = graph.records[key].layer.weights[s.index]
            sliced[id(var)] = int(np.prod(var.shape))
    total = sum(int(np.prod(v.shape)) for v in graph.model.weights)
    return sum(sliced.values()) / total if total else 0.0


def _fallback_plan(graph) -> Plan:
    """The first 30% of every prunable group (used when `select` itself fails)."""
    removed = {}
    for g in graph.prunable_groups:
        n = min(max(int(g.size * RATIO), 1), g.size - 1)
        if n > 0:
            removed[g.id] = list(range(n))
    return Plan.from_groups(graph, removed)


def _exact_part(plan: Plan) -> Plan:
    graph = plan.graph
    return Plan.from_groups(graph, {g: c for g, c in plan.removed.items() if graph._all_groups[g].exact})


def check(entry: ZooModel, *, reloader: Reloader | None = None, seed: int = 0, workdir: str | None = None) -> dict:
    """Run `entry` through analyze, select, remove_filters/mask_filters, save, reload and training.

    Args:
        entry: The zoo model.
        reloader: Reload and train the saved pruned model in this fresh process (`Reloader`);
            None skips the save/reload/training checks.
        seed: Seed for weights and inputs.
        workdir: Where the `.keras` files go (a temporary folder by default).

    Returns:
        The row: counts, differences, refusals, timings and `status`.
    """
    row: dict = {
        "model": entry.name,
        "family": entry.family,
        "follows": entry.follows,
        "url": entry.url,
        "backend": keras.backend.backend(),
    }
    t0 = time.perf_counter()
    stage = "build"
    try:
        keras.utils.set_random_seed(seed)
        model = entry.build()
        randomize_normalizations(model, seed)
        x = entry.sample(model, BATCH, seed) if entry.sample else random_input(model, batch=BATCH, seed=seed)
        row["params"] = int(model.count_params())
        stage = "analyze"
        t1 = time.perf_counter()
        seeds = [keras.ops.convert_to_numpy(v.value).copy() for v in _seed_states(model)]
        try:
            graph = kp.analyze(model)
        except kp.PruningError as e:  # analyze refuses the whole model: a refusal, with its reason
            row["refusals"] = [{"reason": str(e), "groups": 0, **judge_reason(str(e))}]
            row["flagged"] = [str(e)] if not all(judge_reason(str(e)).values()) else []
            row.update(groups=0, prunable=0, exact=0, approximate=0, refused=0, output_groups=0, prunable_share=0.0)
            row["status"] = "fully refused"
            return row
        row["analyze_s"] = round(time.perf_counter() - t1, 2)
        _describe_graph(graph, row)
        if not graph.prunable_groups:
            row["status"] = "fully refused" if row["refusals"] else "FAILED"
            if not row["refusals"]:
                row["error"] = "nothing is prunable and analyze gives no reason"
            return row
        before = _snapshot(model)
        stage = "select"
        try:
            sel = kp.select(model, "l1", ratio=RATIO, graph=graph)
            plan = sel.plan_for(model)
        except Exception as e:  # noqa: BLE001 - recorded; removal is still checked with a fixed plan
            row["select_error"] = f"{type(e).__name__}: {e}"[:400]
            plan = _fallback_plan(graph)
        row["removed_channels"] = plan.n_removed
        stage = "remove_filters"
        t2 = time.perf_counter()
        pruned = kp.remove_filters(model, plan, graph=graph)
        exact_plan = _exact_part(plan)
        pruned_exact = pruned if len(exact_plan.removed) == len(plan.removed) else (
            kp.remove_filters(model, exact_plan, graph=graph) if exact_plan.removed else None
        )
        row["remove_s"] = round(time.perf_counter() - t2, 2)
        row["params_after"] = int(pruned.count_params())
        unchanged = all(np.array_equal(a, b) for a, b in zip(before, _snapshot(model)))
        row["original_unchanged"] = unchanged
        stage = "mask_filters"
        y0 = _run(model, x, seeds)
        if pruned_exact is not None:
            kp.mask_filters(model, exact_plan, graph=graph)
            row["max_diff"] = _rel_diff(_run(pruned_exact, x, seeds), _run(model, x, seeds))
        kp.mask_filters(model, plan, graph=graph)
        y_all = _run(model, x, seeds)
        y_pruned = _run(pruned, x, seeds)
        row["mask_effect"] = _rel_diff(y0, y_all)
        if pruned is not pruned_exact:
            row["approx_diff"] = _rel_diff(y_pruned, y_all)
        if reloader is not None:
            stage = "save"
            for v, value in zip(_seed_states(pruned), seeds):
                v.assign(value)
            _save_and_reload(entry, model, pruned, x, y_pruned, row, workdir, reloader)
        row["status"] = _status(row)
    except Exception as e:  # noqa: BLE001 - the zoo records every failure
        row["status"] = "FAILED"
        row["error"] = f"{stage}: {type(e).__name__}: {e}"[:600]
        row["traceback"] = traceback.format_exc()[-2500:]
    finally:
        row["time_s"] = round(time.perf_counter() - t0, 2)
        keras.backend.clear_session()
    return row


def _describe_graph(graph, row: dict) -> None:
    groups = graph.groups
    outputs = [g for g in groups if not g.prunable and g.reason.startswith(OUTPUT_REASON)]
    refused = [g for g in groups if not g.prunable and not g.reason.startswith(OUTPUT_REASON)]
    row["groups"] = len(groups)
    row["output_groups"] = len(outputs)
    row["prunable"] = len(graph.prunable_groups)
    row["exact"] = sum(1 for g in graph.prunable_groups if g.exact)
    row["approximate"] = row["prunable"] - row["exact"]
    row["approx_reasons"] = sorted({g.approx_reason for g in graph.prunable_groups if not g.exact})[:5]
    row["refused"] = len(refused)
    row["prunable_share"] = round(prunable_share(graph), 4)
    reasons: dict[str, dict] = {}
    for g in refused:
        r = reasons.setdefault(g.reason, {"reason": g.reason, "groups": 0, **judge_reason(g.reason)})
        r["groups"] += 1
    # Barriers that block no group (their inputs come straight from a model input or another
    # barrier) still hide their own weights: a composite layer's convolutions, an RNN on the input.
    blocked = set(reasons)
    hidden = 0
    for key in graph.order:
        rec = graph.records[key]
        own = [v for v in getattr(rec.layer, "trainable_weights", [])]
        if rec.barrier and own and not any(rec.barrier in r for r in blocked):
            reasons.setdefault(rec.barrier, {"reason": rec.barrier, "groups": 0, **judge_reason(rec.barrier)})
            hidden += sum(int(np.prod(v.shape)) for v in own)
    row["hidden_params"] = hidden
    row["refusals"] = sorted(reasons.values(), key=lambda r: -r["groups"])
    row["flagged"] = [r["reason"] for r in row["refusals"] if not (r["names_layer"] and r["says_fix"])]


def _status(row: dict) -> str:
    problems = []
    if "select_error" in row:
        problems.append("select failed")
    if not row.get("original_unchanged", True):
        problems.append("remove_filters changed the original")
    if row.get("max_diff", 0.0) > TOL:
        problems.append(f"removed != masked ({row['max_diff']:.1e})")
    if row.get("reload") == "FAILED":
        problems.append("pruned model does not reload")
    if row.get("reload_diff", 0.0) > TOL:
        problems.append(f"reloaded != masked ({row['reload_diff']:.1e})")
    if row.get("train") == "FAILED":
        problems.append("pruned model does not train")
    if problems:
        row["error"] = "; ".join(problems) + (f" ({row['select_error']})" if "select_error" in row else "")
        return "FAILED"
    return "pruned exactly" if not row["refusals"] else "partly refused"


_WORKER = textwrap.dedent(
    """
    import json, math, sys, numpy as np
    sys.path.insert(0, {tests!r})
    import keras
    import zoo  # registers the zoo's custom layers; never kerasprune

    def load(path):
        try:
            return keras.saving.load_model(path), "ok"
        except Exception as e:
            if "safe_mode" not in str(e):
                raise
            return keras.saving.load_model(path, safe_mode=False), "ok (safe_mode=False: Lambda)"

    def one(job):
        out = {{}}
        data = np.load(job["x"])
        x = [data[k] for k in sorted(data.files)]
        x = x[0] if len(x) == 1 else x
        try:
            m, out["reload"] = load(job["pruned"])
        except Exception as e:
            out["reload"] = "FAILED"
            out["reload_error"] = (type(e).__name__ + ": " + str(e))[:400]
            try:
                load(job["original"])
                out["original_reload"] = "ok"
            except Exception as e2:
                out["original_reload"] = (type(e2).__name__ + ": " + str(e2))[:300]
            return out
        y = m(x, training=False)
        y = [keras.ops.convert_to_numpy(v) for v in (y if isinstance(y, (list, tuple)) else [y])]
        np.savez(job["y"], *y)
        try:
            targets = [np.zeros(v.shape, "float32") for v in y]
            m.compile(optimizer="adam", loss="mse", run_eagerly=job.get("eager", True))
            h = m.fit(x, targets if len(targets) > 1 else targets[0], batch_size=job["batch"], epochs=1, verbose=0)
            loss = float(h.history["loss"][0])
            out["train"] = "ok" if math.isfinite(loss) else "FAILED"
            out["train_loss"] = loss
        except Exception as e:
            out["train"] = "FAILED"
            out["train_error"] = (type(e).__name__ + ": " + str(e))[:400]
        return out

    print("ZOO-READY", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            out = one(job)
        except Exception as e:
            out = {{"reload": "FAILED", "reload_error": (type(e).__name__ + ": " + str(e))[:400]}}
        out["kerasprune_imported"] = "kerasprune" in sys.modules
        keras.backend.clear_session()
        print("ZOO-CHILD " + json.dumps(out), flush=True)
    """
)


class Reloader:
    """A fresh Python process (no kerasprune) that reloads saved models, runs and trains them.

    One process serves many models, so Keras is imported once; a model that crashes it
    natively is reported as such and the next model gets a new process.
    """

    def __init__(self, timeout: float = 600):
        self.timeout = timeout
        self.proc = None

    def _start(self) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env["PYTHONPATH"] = TESTS_DIR  # the child sees the zoo, not the worktree's kerasprune
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER.format(tests=TESTS_DIR)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._read("ZOO-READY")

    def _read(self, prefix: str) -> str | None:
        timer = threading.Timer(self.timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            return None
        finally:
            timer.cancel()

    def run(self, job: dict) -> dict:
        """Check one saved model; `job` holds the paths `pruned`, `original`, `x`, `y` and `batch`."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        answer = self._read("ZOO-CHILD ")
        if answer is None:
            code = self.proc.wait()
            self.proc = None
            return {"reload": "FAILED", "reload_error": f"the child process died (exit code {code})"}
        return json.loads(answer)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.proc = None

    def __enter__(self) -> Reloader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _save_and_reload(entry, model, pruned, x, y_pruned, row: dict, workdir: str | None, reloader) -> None:
    """Save `pruned` (and the original, to tell Keras's problems from ours) and check it in a child."""
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        paths = {k: os.path.join(d, f"{k}.keras") for k in ("pruned", "original")}
        try:
            pruned.save(paths["pruned"])
        except Exception as e:  # noqa: BLE001
            row["reload"] = "FAILED"
            row["reload_error"] = f"save: {type(e).__name__}: {e}"[:400]
            try:
                model.save(paths["original"])
            except Exception as e2:  # noqa: BLE001
                row["reload"] = f"n/a: the original does not save either ({type(e2).__name__})"
            return
        try:
            model.save(paths["original"])
        except Exception:  # noqa: BLE001 - only used to tell whose problem a failed reload is
            pass
        xs = x if isinstance(x, (list, tuple)) else [x]
        job = {**paths, "x": os.path.join(d, "x.npz"), "y": os.path.join(d, "y.npz"), "batch": BATCH}
        np.savez(job["x"], **{f"x{i:02d}": v for i, v in enumerate(xs)})
        t = time.perf_counter()
        out = reloader.run(job)
        row["child_s"] = round(time.perf_counter() - t, 2)
        if out.get("reload") == "FAILED" and out.get("original_reload") not in (None, "ok"):
            out["reload"] = "n/a: the original does not reload either"
        row.update(out)
        if os.path.exists(job["y"]):
            data = np.load(job["y"])
            ys = [data[k] for k in sorted(data.files, key=lambda s: int(s.split("_")[1]))]
            row["reload_diff"] = _rel_diff(y_pruned, ys)


def result_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, default=str)
