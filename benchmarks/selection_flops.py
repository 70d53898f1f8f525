"""MAC counts at 224x224 against published figures, and the cost of a FLOPs target.

For VGG16, ResNet50 and MobileNetV2 (`weights=None`, 224x224): `count_flops` against
the published figures, then `select(model, "l1", target_flops=0.5)` timed, with the
achieved ratio counted on the rebuilt model.

    python benchmarks/selection_flops.py

Results: benchmarks/results/selection_flops.json
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import kerasprune as kp  # noqa: E402

PUBLISHED_GMACS = {"VGG16": 15.5, "ResNet50": 3.9, "MobileNetV2": 0.30}


def main() -> None:
    rows = []
    for name, published in PUBLISHED_GMACS.items():
        t0 = time.perf_counter()
        model = getattr(keras.applications, name)(weights=None)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        macs = kp.count_flops(model)
        counted = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel = kp.select(model, "l1", target_flops=0.5)
        selected = time.perf_counter() - t0
        rows.append(
            {
                "model": name,
                "backend": keras.backend.backend(),
                "gmacs": macs / 1e9,
                "published_gmacs": published,
                "params": kp.count_params(model),
                "build_s": round(built, 3),
                "count_flops_s": round(counted, 4),
                "select_target_0.5_s": round(selected, 3),
                "achieved_flops_ratio": sel.flops_ratio,
                "achieved_params_ratio": sel.params_ratio,
                "measured_on_rebuilt_model": sel.measured,
            }
        )
        print(json.dumps(rows[-1]))
        keras.backend.clear_session()
    out = os.path.join(os.path.dirname(__file__), "results", "selection_flops.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
