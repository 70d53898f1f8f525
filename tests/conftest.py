import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune.testing import copy_model, max_output_difference, random_input  # noqa: E402

TOL = 1e-4


def assert_removal_equals_masking(model, selection, x=None, tol=TOL):
    """The central contract: remove_filters(m, sel) == mask_filters(copy(m), sel)."""
    before = [w.numpy().copy() for w in model.weights]
    pruned = kp.remove_filters(model, selection)
    after = [w.numpy() for w in model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "original model was modified"
    masked = copy_model(model)
    kp.mask_filters(masked, selection)
    x = random_input(model) if x is None else x
    diff = max_output_difference(pruned, masked, x)
    assert diff < tol, f"removed vs masked differ by {diff}"
    assert pruned.count_params() < model.count_params() or not selection
    return pruned, masked


def run_result_script(script: str, *, timeout: int = 300) -> dict:
    """Run `script` in a child Python on this backend (it trains: a native crash fails the test)
    and return the JSON it prints after `RESULT`."""
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()



def pytest_configure(config):
    # Tests marked `isolated` (they train or export) run in a child process: tests/isolation.py.
    config.pluginmanager.import_plugin("isolation")
