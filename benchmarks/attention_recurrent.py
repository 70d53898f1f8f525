"""Transformer and recurrent models as people write them, pruned end to end.

Four models built from Keras layers (random weights, randomized LayerNorm/BatchNorm): a
ViT-style image classifier (patch embedding, 4 pre-norm encoder blocks), a BiLSTM text
classifier, a GRU forecaster, and a ConvLSTM2D video classifier. For each:
the share of parameters in prunable groups, `select("l1", target_flops=0.5)`, removal ==
masking (max relative difference, exact groups only and all groups), MACs/params before and
after, and wall times of analyze/select/remove (noisy on a shared machine: medians of
`--repeat` runs).

Usage:
    python benchmarks/attention_recurrent.py [--repeat 3] [--update]

Writes a scratch JSON (printed path) unless `--update`, which writes
benchmarks/results/attention_recurrent.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402
from output import add_update_flag, results_dir  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune.io import write_text  # noqa: E402
from kerasprune.testing import copy_model, max_output_difference, random_input, randomize_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def vit(dim=64, heads=4, blocks=4):
    i = keras.Input((32, 32, 3))
    x = L.Conv2D(dim, 4, strides=4, name="patches")(i)
    x = L.Reshape((64, dim))(x)
    for b in range(blocks):
        y = L.LayerNormalization(name=f"b{b}_ln1")(x)
        y = L.MultiHeadAttention(heads, dim // heads, name=f"b{b}_mha")(y, y)
        x = L.Add()([x, y])
        y = L.LayerNormalization(name=f"b{b}_ln2")(x)
        y = L.Dense(2 * dim, activation="gelu", name=f"b{b}_ff1")(y)
        x = L.Add()([x, L.Dense(dim, name=f"b{b}_ff2")(y)])
    x = L.GlobalAveragePooling1D()(L.LayerNormalization(name="ln")(x))
    return keras.Model(i, L.Dense(10, name="head")(x), name="vit")


def bilstm_text():
    i = keras.Input((50,), dtype="int32")
    # (mask_zero=True puts a keras.ops `NotEqual` node in the graph, which `select` handles once
    # issue 17 part 1 lands; remove_filters/mask_filters handle it already, see tests/test_recurrent.py)
    x = L.Embedding(1000, 64, name="emb")(i)
    x = L.Bidirectional(L.LSTM(64, return_sequences=True), name="bilstm")(x)
    x = L.LSTM(64, name="lstm")(x)
    x = L.Dense(32, activation="relu", name="fc")(x)
    return keras.Model(i, L.Dense(5, name="head")(x), name="bilstm_text")


def gru_forecaster():
    i = keras.Input((100, 8))
    x = L.Conv1D(32, 3, padding="causal", activation="relu", name="conv")(i)
    x = L.GRU(48, return_sequences=True, name="gru1")(x)
    x = L.GRU(32, name="gru2")(x)
    return keras.Model(i, L.Dense(1, name="head")(x), name="gru_forecaster")


def convlstm_video():
    i = keras.Input((8, 16, 16, 1))
    x = L.ConvLSTM2D(16, 3, padding="same", return_sequences=True, name="clstm1")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ConvLSTM2D(16, 3, padding="same", name="clstm2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(3, name="head")(x), name="convlstm_video")


MODELS = [vit, bilstm_text, gru_forecaster, convlstm_video]


def prunable_share(graph) -> float:
    """Parameters of the weights that have an axis in a prunable group, over all parameters."""
    prunable = {g.id for g in graph.prunable_groups}
    seen, total = {}, 0
    for key in graph.order:
        rec = graph.records[key]
        for i, v in enumerate(rec.layer.weights):
            size = int(np.prod(v.shape))
            hit = any(s.index == i and prunable & set(graph.atom_group[s.atoms].tolist()) for s in rec.slices)
            seen[id(v)] = max(seen.get(id(v), 0), size if hit else 0)
    total = kp.count_params(graph.model)
    return sum(seen.values()) / total


def measure(build, repeat: int) -> dict:
    model = build()
    randomize_weights(model, seed=0)
    times = {"analyze": [], "select": [], "remove": []}
    for _ in range(repeat):
        t = time.perf_counter()
        graph = kp.analyze(model)
        times["analyze"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sel = kp.select(model, "l1", target_flops=0.5, graph=graph)
        times["select"].append(time.perf_counter() - t)
        t = time.perf_counter()
        pruned = kp.remove_filters(model, sel, graph=graph)
        times["remove"].append(time.perf_counter() - t)
    masked = copy_model(model)
    kp.mask_filters(masked, sel)
    x = random_input(model, batch=4, seed=1)
    plan = kp.make_plan(graph, sel)
    exact_plan = kp.Plan.from_groups(graph, {g: c for g, c in plan.removed.items() if graph._all_groups[g].exact})
    return {
        "model": model.name,
        "params": kp.count_params(model),
        "macs": kp.count_flops(model),
        "groups": len(graph.groups),
        "prunable": len(graph.prunable_groups),
        "approximate": sum(1 for g in graph.prunable_groups if not g.exact),
        "prunable_param_share": round(prunable_share(graph), 4),
        "params_after": kp.count_params(pruned),
        "macs_after": kp.count_flops(pruned),
        "max_diff_all": max_output_difference(pruned, masked, x),
        "max_diff_exact_groups": _exact_diff(model, exact_plan, x),
        "all_exact": plan.exact,
        **{f"{k}_s": round(statistics.median(v), 3) for k, v in times.items()},
    }


def _exact_diff(model, plan, x) -> float:
    if plan.is_empty:
        return 0.0
    pruned = kp.remove_filters(model, plan)
    masked = copy_model(model)
    kp.mask_filters(masked, plan.to_selection())
    return max_output_difference(pruned, masked, x)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | params | MACs | groups (prunable / approx.) | params in prunable groups | "
        "l1, target_flops=0.5: params, MACs | removed vs masked (exact groups / all) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['macs']:,} | {r['groups']} ({r['prunable']} / {r['approximate']}) "
            f"| {r['prunable_param_share']:.1%} | {r['params_after'] / r['params']:.1%}, "
            f"{r['macs_after'] / r['macs']:.1%} | {r['max_diff_exact_groups']:.1e} / {r['max_diff_all']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    add_update_flag(ap)
    args = ap.parse_args()
    rows = [measure(build, args.repeat) for build in MODELS]
    md = table(rows)
    print(md)
    print(json.dumps(rows, indent=1))
    out = results_dir(args.update) / "attention_recurrent"
    record = {"backend": keras.backend.backend(), "keras": keras.__version__, "cpus": os.cpu_count(), "rows": rows}
    write_text(json.dumps(record, indent=1), out.with_suffix(".json"))
    write_text(md + "\n", out.with_suffix(".md"))
    print(f"wrote {out}.json/.md", file=sys.stderr)


if __name__ == "__main__":
    main()
