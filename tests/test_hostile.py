"""Hostile and bad input: every refusal is a kerasprune error naming the layer and the
reason (library) or a one-line message with exit code 1 (CLI), and nothing is modified:
not the caller's model, not the input file, and no partial output file is left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import io as kio
from kerasprune.cli import main
from kerasprune.selection import Selection
from kerasprune.testing import copy_model, randomize_batchnorm, randomize_weights


def _model(name: str = "hostile") -> keras.Model:
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(6, 3, name="c1")(i))
    x = L.Conv2D(4, 3, name="c2")(L.ReLU(name="relu")(x))
    model = keras.Model(i, L.Dense(2, name="head")(L.Flatten(name="flat")(x)), name=name)
    randomize_weights(model, seed=1)
    randomize_batchnorm(model, seed=2)
    return model


def _state(model):
    return model.get_config(), [np.array(w.numpy(), copy=True) for w in model.weights]


def _assert_unchanged(model, state):
    config, weights = state
    assert model.get_config() == config, "the caller's model config changed"
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights, model.weights)), "weights changed"


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _leftovers(folder, keep) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "model.keras"
    _model().save(path)
    return path


# -- selections --------------------------------------------------------------------------
BAD_SELECTIONS = [
    ([1.5], kp.SelectionError, r"layer 'c1' must be integer indices or a boolean mask.*float"),
    ([1.0], kp.SelectionError, r"layer 'c1' must be integer indices"),
    ([float("nan")], kp.SelectionError, r"layer 'c1' must be integer indices.*nan"),
    (np.array([0.0, np.nan]), kp.SelectionError, r"layer 'c1' must be integer indices"),
    ("1,2", kp.SelectionError, r"layer 'c1' must be integers or a boolean mask. Received: '1,2'"),
    (["1"], kp.SelectionError, r"layer 'c1' must be integer indices"),
    (b"\x01", kp.SelectionError, r"layer 'c1' must be integers"),
    ([1j], kp.SelectionError, r"layer 'c1' must be integer indices.*complex"),
    (None, kp.SelectionError, r"layer 'c1' must be integer indices"),
    ({1, 2}, kp.SelectionError, r"layer 'c1' must be integer indices"),
    ([[1, 2]], kp.SelectionError, r"layer 'c1' must be a flat list"),
    ([[1], [1, 2]], kp.SelectionError, r"layer 'c1' could not be read as indices"),
    ([True, False], kp.SelectionError, r"Boolean mask for layer 'c1' must have shape \(6,\).*\(2,\)"),
    ([False] * 7, kp.SelectionError, r"Boolean mask for layer 'c1' must have shape \(6,\).*\(7,\)"),
    (True, kp.SelectionError, r"Boolean mask for layer 'c1' must have shape \(6,\)"),
    (np.zeros(6), kp.SelectionError, r"must be integer indices or a boolean mask"),
    ([True, 1], kp.SelectionError, r"layer 'c1' mix booleans and integers"),
    ([6], kp.SelectionError, r"index 6 is out of range for layer 'c1' with 6 filters \(valid: -6 .. 5\)"),
    ([-7], kp.SelectionError, r"index -7 is out of range for layer 'c1'"),
    ([10**20], kp.SelectionError, r"index 100000000000000000000 is out of range for layer 'c1'"),
    (np.array([2**63 - 1]), kp.SelectionError, r"out of range for layer 'c1'"),
    (np.array([2**64 - 1], dtype=np.uint64), kp.SelectionError, r"out of range for layer 'c1'"),
    ([1, 1], kp.SelectionError, r"Filter index 1 is given twice for layer 'c1'"),
    ([1, -5], kp.SelectionError, r"Filter index 1 is given twice for layer 'c1'"),
    (list(range(6)), kp.PruningError, r"removes all 6 channels of group .*\['c1'\].*at least one must remain"),
    ([True] * 6, kp.PruningError, r"removes all 6 channels"),
]


@pytest.mark.backend
def test_bad_filter_values_are_refused_and_change_nothing():
    model = _model()
    before = _state(model)
    for value, error, match in BAD_SELECTIONS:
        with pytest.raises(error, match=match):
            kp.remove_filters(model, {"c1": value})
        with pytest.raises(error, match=match):
            kp.mask_filters(model, {"c1": value})  # validated before anything is zeroed
    _assert_unchanged(model, before)


def test_bad_selection_keys_and_types():
    model = _model()
    before = _state(model)
    for selection, match in [
        ({"nope": [1]}, r"Unknown layer 'nope' in model 'hostile'"),
        ({"C1": [1]}, r"Unknown layer 'C1'.*Did you mean 'c1'"),
        ({3: [1]}, r"Layer '3' \(int\) is not part of model 'hostile'"),
        ([("c1", [1])], r"selection must be a mapping.*Received: list"),
        ("c1", r"selection must be a mapping.*Received: str"),
    ]:
        with pytest.raises(kp.SelectionError, match=match):
            kp.remove_filters(model, selection)
    _assert_unchanged(model, before)


def test_layer_of_another_model_is_refused():
    model, other = _model(), _model("other")
    with pytest.raises(kp.SelectionError, match=r"Layer 'c1' \(Conv2D\) is not part of model 'hostile'"):
        kp.remove_filters(model, {other.get_layer("c1"): [0]})


def test_channels_reaching_the_output_are_refused_with_the_reason():
    with pytest.raises(kp.PruningError, match=r"layer 'head'.*not prunable: channels reach the model output"):
        kp.remove_filters(_model(), {"head": [0]})


@pytest.mark.backend
@pytest.mark.parametrize("empty", [{}, None, {"c1": []}, {"c1": np.zeros(6, dtype=bool)}, Selection({})])
def test_empty_selection_is_a_no_op_that_says_so_and_returns_a_copy(empty, caplog):
    model = _model()
    before = _state(model)
    with caplog.at_level(logging.INFO, logger="kerasprune"):
        out = kp.remove_filters(model, empty)
    assert "empty selection" in caplog.text
    assert out is not model
    assert out.count_params() == model.count_params()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out(x)), keras.ops.convert_to_numpy(model(x)))
    _assert_unchanged(model, before)
    kp.mask_filters(model, empty)  # masking nothing changes nothing either
    _assert_unchanged(model, before)


class _Unregistered(keras.layers.Layer):
    """A user layer kerasprune has no rule for, and cannot trace (it uses its own weight directly)."""

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(), initializer="ones", name="factor")

    def call(self, x):
        return x * self.factor


def test_unregistered_custom_layer_blocks_its_channels_with_its_name():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="conv_a")(i)
    x = _Unregistered(name="mystery")(a)
    x = L.Conv2D(4, 3, name="conv_b")(x)
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    before = _state(model)
    graph = kp.analyze(model)
    assert not graph.group_of("conv_a").prunable
    assert graph.group_of("conv_b").prunable  # the layers after it are unaffected
    with pytest.raises(kp.PruningError, match=r"'conv_a'.*layer 'mystery' \(_Unregistered\).*no pruning rule"):
        kp.remove_filters(model, {"conv_a": [0]})
    pruned = kp.remove_filters(model, {"conv_b": [0]})
    assert pruned.get_layer("conv_b").filters == 3
    _assert_unchanged(model, before)


@pytest.mark.backend
def test_only_mask_filters_mutates_and_its_docstring_says_so():
    model = _model()
    before = _state(model)
    graph = kp.analyze(model)
    kp.make_plan(graph, {"c1": [0, 2]})
    kp.remove_filters(model, {"c1": [0, 2]}, graph=graph)
    kp.select(model, "l1", ratio=0.5)
    _assert_unchanged(model, before)
    kp.mask_filters(model, {"c1": [0, 2]})
    assert not np.any(model.get_layer("c1").kernel.numpy()[..., [0, 2]])
    assert "**in place**" in kp.mask_filters.__doc__
    assert "never modified" in kp.remove_filters.__doc__


def test_graph_of_another_model_is_refused():
    model, other = _model(), _model("other")
    with pytest.raises(kp.PruningError, match="graph was built for a different model"):
        kp.remove_filters(model, {"c1": [0]}, graph=kp.analyze(other))
    with pytest.raises(kp.PruningError, match="graph was built for a different model"):
        kp.mask_filters(model, {"c1": [0]}, graph=kp.analyze(other))


# -- plan / selection JSON ---------------------------------------------------------------
BAD_PLAN_JSON = [
        ("{not json", r"not valid JSON"),
        ("[1, 2]", r"must be an object. Received: list"),
        ('{"format": "something.else", "filters": {}}', r"Not a kerasprune selection"),
        ('{"format": "kerasprune.selection", "version": 99, "filters": {}}', r"Unsupported selection version 99"),
        ('{"groups": []}', r"needs 'filters'"),
        ('{"filters": [1, 2]}', r"needs 'filters'"),
        ('{"filters": {"c1": [-1]}}', r"'c1' must be a list of non-negative integers"),
        ('{"filters": {"c1": [1.5]}}', r"'c1' must be a list of non-negative integers"),
        ('{"filters": {"c1": ["1"]}}', r"'c1' must be a list of non-negative integers"),
        ('{"filters": {"c1": 3}}', r"'c1' must be a list of non-negative integers"),
        ('{"filters": {"c1": [NaN]}}', r"'c1' must be a list of non-negative integers"),
    ]


def test_plan_json_with_a_bad_schema_is_refused():
    for text, match in BAD_PLAN_JSON:
        with pytest.raises(kp.SelectionError, match=match):
            Selection.from_json(text)


def test_plan_that_does_not_match_the_model_is_refused():
    model = _model()
    before = _state(model)
    for filters, error, match in [
        ({"conv2d_7": [1]}, kp.SelectionError, r"Unknown layer 'conv2d_7' in model 'hostile'"),
        ({"c1": [6]}, kp.SelectionError, r"index 6 is out of range for layer 'c1' with 6 filters"),
        ({"c1": [0, 0]}, kp.SelectionError, r"given twice for layer 'c1'"),
        ({"head": [0]}, kp.PruningError, r"'head'.*channels reach the model output"),
        ({"flat": [3], "c2": [0, 1, 2]}, kp.PruningError, r"removes all 4 channels"),
    ]:
        plan = Selection.from_json(json.dumps({"filters": filters}))
        with pytest.raises(error, match=match):
            kp.remove_filters(model, plan)
    _assert_unchanged(model, before)


def test_cli_plan_for_another_model_exits_1_and_writes_nothing(model_file, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "kerasprune.selection", "version": 1, "filters": {"conv9": [0]}}))
    digest = _digest(model_file)
    out = tmp_path / "out.keras"
    assert main(["prune", str(model_file), "-o", str(out), "--plan", str(plan)]) == 1
    err = capsys.readouterr().err
    assert "Unknown layer 'conv9'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path, {"plan.json"}) == []
    assert _digest(model_file) == digest


# -- model files -------------------------------------------------------------------------
def _hostile_files(model_file, folder):
    data = model_file.read_bytes()
    (folder / "text.keras").write_text("this is not a model\n")
    (folder / "empty.keras").write_bytes(b"")
    (folder / "truncated.keras").write_bytes(data[: len(data) // 3])
    flipped = bytearray(data)
    mid = len(flipped) // 2
    flipped[mid : mid + 64] = bytes(b ^ 0xFF for b in flipped[mid : mid + 64])
    (folder / "flipped.keras").write_bytes(bytes(flipped))
    (folder / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "model.onnx").write_bytes(data)
    import zipfile

    with zipfile.ZipFile(folder / "noconfig.keras", "w") as z:
        z.writestr("hello.txt", "hi")
    return {
        "text.keras": r"not a Keras model file: a \.keras file is a zip archive",
        "empty.keras": r"not a Keras model file",
        "truncated.keras": r"truncated or corrupted",
        "flipped.keras": r"(corrupted|checksum)",
        "random.h5": r"not an HDF5 model file",
        "model.onnx": r"unsupported model file type '\.onnx'.*looks like a zip archive",
        "noconfig.keras": r"not a Keras model \(no config\.json inside\)",
        "missing.keras": r"Model file not found",
    }


def test_hostile_model_files_give_one_line_errors_and_stay_untouched(model_file, tmp_path, capsys):
    cases = _hostile_files(model_file, tmp_path)
    digests = {p.name: _digest(p) for p in tmp_path.iterdir()}
    for name, match in cases.items():
        with pytest.raises(kp.ModelLoadError, match=match):
            kio.load_model(tmp_path / name)
        out = tmp_path / f"out-{name}.keras"
        code = main(["prune", str(tmp_path / name), "-o", str(out), "--layer", "c1", "--filters", "0"])
        err = capsys.readouterr().err.strip()
        assert code == 1, (name, err)
        assert err.startswith("Error:") and len(err.splitlines()) == 1, err
        assert not out.exists()
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == digests  # no leftovers, nothing changed


def test_lambda_needs_an_explicit_unsafe_flag(tmp_path, capsys):
    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(2)(L.Lambda(lambda t: t * 3.0, name="triple")(L.Dense(5)(i))))
    path = tmp_path / "lam.keras"
    model.save(path)
    with pytest.raises(kp.ModelLoadError, match=r"Lambda.*safe mode.*arbitrary code"):
        kio.load_model(path)
    assert main(["inspect", str(path)]) == 1
    assert "--unsafe" in capsys.readouterr().err
    assert kio.load_model(path, safe_mode=False).get_layer("triple") is not None


def test_unregistered_custom_object_in_file(tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="kptest_hostile")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    i = keras.Input((3,))
    keras.Model(i, L.Dense(2)(Twice()(i))).save(tmp_path / "custom.keras")
    del keras.saving.get_custom_objects()["kptest_hostile>Twice"]
    with pytest.raises(kp.ModelLoadError, match=r"not registered: kptest_hostile>Twice"):
        kio.load_model(tmp_path / "custom.keras")
    assert main(["inspect", str(tmp_path / "custom.keras")]) == 1
    assert "kptest_hostile>Twice" in capsys.readouterr().err


# -- no lost work ------------------------------------------------------------------------
@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch, interrupt):
    model = _model()
    target = tmp_path / "pruned.keras"
    target.write_bytes(b"previous good file")
    real_save = keras.saving.save_model

    def half_save(m, path, **kw):
        real_save(m, path, **kw)
        with open(path, "r+b") as f:  # a partial file on disk, then the failure
            f.truncate(100)
        raise interrupt

    monkeypatch.setattr(keras.saving, "save_model", half_save)
    with pytest.raises(type(interrupt)):
        kio.save_model(model, tmp_path / "fresh.keras")
    with pytest.raises(type(interrupt)):
        kio.save_model(model, target, overwrite=True)
    assert target.read_bytes() == b"previous good file"
    assert _leftovers(tmp_path, {"pruned.keras"}) == []


def test_interrupted_cli_run_writes_no_output(model_file, tmp_path, monkeypatch, capsys):
    def interrupted(m, path, **kw):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.saving, "save_model", interrupted)
    out = tmp_path / "out.keras"
    code = main(["prune", str(model_file), "-o", str(out), "--layer", "c1", "--filters", "0"])
    assert code == 130  # interrupted: no output, nothing partial
    assert _leftovers(tmp_path, set()) == []


def test_input_file_is_never_overwritten(model_file, tmp_path, capsys):
    digest = _digest(model_file)
    model = kio.load_model(model_file)
    hard = tmp_path / "hardlink.keras"
    os.link(model_file, hard)
    soft = tmp_path / "symlink.keras"
    soft.symlink_to(model_file)
    for alias in (model_file, hard, soft):
        with pytest.raises(kp.ModelSaveError, match="Refusing to write onto the input file"):
            kio.save_model(model, alias, overwrite=True, source=model_file)
        code = main(["prune", str(model_file), "-o", str(alias), "--force", "--layer", "c1", "--filters", "0"])
        assert code == 1
        assert "onto the input file" in capsys.readouterr().err
    assert _digest(model_file) == digest
    with pytest.raises(kp.ModelSaveError, match="already exists"):
        kio.save_model(model, hard)


def test_masking_a_copy_leaves_the_loaded_model_alone(model_file):
    model = kio.load_model(model_file)
    before = _state(model)
    masked = copy_model(model)
    kp.mask_filters(masked, {"c1": [1]})
    _assert_unchanged(model, before)
    assert not np.any(masked.get_layer("c1").kernel.numpy()[..., 1])
