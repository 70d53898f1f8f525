"""A representative of each zoo family, through kerasprune (the full zoo: benchmarks/zoo.py).

For each model: every group that `analyze` calls exact is removed (30% by L1) exactly as
masking zeroes it, the original is left unchanged, and every refusal names the blocking
layer and its class. On TensorFlow, the saved pruned models of a few of them reload,
compute the same and train one step in a fresh process that never imports kerasprune.
"""

import keras
import pytest

import zoo
from zoo.check import TOL, Reloader, check, judge_reason

#: One small model per family; True: also run on JAX and PyTorch (`-m backend`; none now: the
#: backend subset is in test_zoo_findings.py, and `benchmarks/zoo.py --backends jax torch` runs all).
FAST = {
    "convmixer": False,
    "unet_classic": False,
    "retinanet_functional": False,
    "vae_encoder": False,
    "fcn_classifier": False,
    "speaker_recognition": False,
    "text_cnn": False,
    "ct_classifier": False,
    "siamese_contrastive": False,
    "captcha_ocr": False,
    "ops_functional": False,
}
#: Saved, reloaded and trained in one child process (TensorFlow runs).
RELOADED = ("convmixer", "retinanet_functional", "siamese_contrastive", "text_cnn")


@pytest.fixture(scope="module")
def reloader():
    with Reloader(timeout=300) as r:
        yield r


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.backend) if on_all else n for n, on_all in FAST.items()]
)
def test_zoo_model(name, reloader, tmp_path):
    reload = name in RELOADED and keras.backend.backend() == "tensorflow"
    row = check(zoo.REGISTRY[name], reloader=reloader if reload else None, workdir=str(tmp_path))
    assert row["status"] != "FAILED" or "select failed" in row.get("error", ""), row.get("error")
    assert row["original_unchanged"], "remove_filters changed the original model"
    assert row["prunable"] > 0 and row["removed_channels"] > 0
    assert row["params_after"] < row["params"]
    assert row["max_diff"] < TOL, f"removed vs masked differ by {row['max_diff']}"
    assert row["mask_effect"] > 0, "masking changed nothing: the check would be vacuous"
    for refusal in row["refusals"]:
        assert refusal["names_layer"], f"refusal does not name the layer and its class: {refusal['reason']}"
    if reload:
        assert row["reload"].startswith("ok"), row.get("reload_error")
        assert row["kerasprune_imported"] is False
        assert row["reload_diff"] < TOL, row["reload_diff"]
        assert row["train"] == "ok", row.get("train_error")


def test_zoo_builders_are_documented():
    assert len(zoo.REGISTRY) >= 35
    assert {m.family for m in zoo.models()} == set(zoo.FAMILIES)
    for m in zoo.models():
        assert m.url.startswith("https://") and m.follows, m.name
        assert m.build.__doc__, f"builder {m.name} has no docstring"


def test_refusal_reasons_are_judged():
    named = (
        "layer 'lstm' (LSTM) blocks it: no pruning rule is registered for this layer type "
        "(register one with kerasprune.register_rule)"
    )
    assert judge_reason(named) == {"names_layer": True, "says_fix": True}
    assert judge_reason("expects channels on axis 1, but they are on axis 2") == {
        "names_layer": False,
        "says_fix": False,
    }
