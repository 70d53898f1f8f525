"""Start-up of the `kerasprune` command: `--help` wall time, `import kerasprune.cli`, backend imports.

Each measurement runs in a fresh process, `--rounds` times, interleaved with a reference
(`python -c "import keras"`: what every command that touches a model pays anyway), and the
median is reported, so machine load affects all rows alike.

    python benchmarks/startup.py                 # results to a scratch folder (printed)
    python benchmarks/startup.py --update        # benchmarks/results/startup.{json,md}
    python benchmarks/startup.py --src /other/checkout/src   # the same for another tree
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from output import add_update_flag, announce, results_dir, write_atomic  # noqa: E402

CASES = {
    "kerasprune --help": ["-m", "kerasprune", "--help"],
    "kerasprune prune --help": ["-m", "kerasprune", "prune", "--help"],
    "import keras (reference)": ["-c", "import keras"],
}


def _run(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - t0, done.stderr


def _import_time(env: dict) -> tuple[float, list[str]]:
    """Cumulative `-X importtime` of `kerasprune.cli` (seconds) and the heavy packages it pulled in."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import kerasprune.cli"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    total, heavy = 0.0, set()
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        if m.group(3) == "kerasprune.cli":
            total = int(m.group(1)) / 1e6
        top = m.group(3).split(".")[0]
        if top in ("keras", "tensorflow", "jax", "torch", "numpy"):
            heavy.add(top)
    return total, sorted(heavy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="the kerasprune source tree to measure")
    add_update_flag(ap)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": args.src}
    times: dict[str, list[float]] = {k: [] for k in CASES}
    imports: list[float] = []
    noise = ""
    for _ in range(args.rounds):
        for name, cmd in CASES.items():
            seconds, stderr = _run(cmd, env)
            times[name].append(seconds)
            if name.startswith("kerasprune"):
                noise = noise or stderr.strip()
        seconds, heavy = _import_time(env)
        imports.append(seconds)
    data = {
        "src": args.src,
        "rounds": args.rounds,
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "all_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "import_kerasprune_cli_s": round(statistics.median(imports), 3),
        "heavy_imports_of_cli": heavy,
        "help_stderr": noise[:500],
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    lines = [
        "# Start-up of the kerasprune command",
        "",
        f"`python benchmarks/startup.py --rounds {args.rounds}`; median of {args.rounds} fresh processes "
        f"(load average {data['loadavg'][0]:.1f} on {data['cpus']} CPUs).",
        "",
        "| what | median (s) |",
        "|---|---:|",
        *[f"| `{k}` | {v:.2f} |" for k, v in data["median_s"].items()],
        f"| `python -X importtime -c 'import kerasprune.cli'` (cumulative) | {data['import_kerasprune_cli_s']:.2f} |",
        "",
        f"Backend packages imported by `import kerasprune.cli`: {', '.join(heavy) or 'none'}. "
        f"`--help` wrote {'nothing' if not noise else 'text'} to stderr.",
    ]
    folder = results_dir(args.update)
    write_atomic(folder / "startup.json", json.dumps(data, indent=1))
    write_atomic(folder / "startup.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    announce(folder)


if __name__ == "__main__":
    main()
