"""A removed model saved as .keras loads in plain Keras, in a fresh process, without kerasprune."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kerasprune as kp
from kerasprune.testing import copy_model, predict, random_input
from models import residual, squeeze_excite


@pytest.mark.backend
@pytest.mark.parametrize("build", [residual, squeeze_excite])
def test_saved_pruned_model_loads_without_kerasprune(tmp_path, build):
    model = build()
    first = kp.analyze(model).prunable_groups[0].layers[0]
    sel = {first: [0, 2]}
    pruned = kp.remove_filters(model, sel)
    masked = copy_model(model)
    kp.mask_filters(masked, sel)
    x = random_input(model, batch=3)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, keras
        m = keras.saving.load_model({str(path)!r})
        y = keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r}), training=False))
        np.save({str(tmp_path / 'y.npy')!r}, y)
        assert "kerasprune" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    y = np.load(tmp_path / "y.npy")
    expected = predict(masked, x)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))
