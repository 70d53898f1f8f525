"""MAC counts at 224x224 against published figures, and the cost of a FLOPs target.

For VGG16, ResNet50 and MobileNetV2 (`weights=None`, 224x224): `count_flops` against
the published figures, then `select(model, "l1", target_flops=0.5)` timed, with the
achieved ratio counted on the rebuilt model.

    python benchmarks/selection_flops.py            # results to a scratch folder (printed)
    python benchmarks/selection_flops.py --update   # benchmarks/results/selection_flops.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import kerasprune as kp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from output import add_update_flag, announce, results_dir, write_atomic  # noqa: E402

PUBLISHED_GMACS = {"VGG16": 15.5, "ResNet50": 3.9, "MobileNetV2": 0.30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_update_flag(ap)
    args = ap.parse_args()
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
    folder = results_dir(args.update)
    write_atomic(folder / "selection_flops.json", json.dumps(rows, indent=1))
    announce(folder)


if __name__ == "__main__":
    main()
