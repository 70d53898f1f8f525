"""kerasprune.io: clear errors for unusable model files; atomic, non-destructive saving."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune.io as kio
from kerasprune.errors import ModelLoadError, ModelSaveError
from kerasprune.testing import randomize_batchnorm


def _model(lambda_layer: bool = False) -> keras.Model:
    i = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(i)
    x = L.BatchNormalization(name="bn")(x)
    if lambda_layer:
        x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.Flatten()(x)
    model = keras.Model(i, L.Dense(3, name="head")(x))
    randomize_batchnorm(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("io")
    model = _model()
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    _model(lambda_layer=True).save(d / "lam.keras")
    model.save_weights(d / "w.weights.h5")
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    return d, model, x


@pytest.mark.backend
def test_load_model_round_trip(files):
    d, model, x = files
    for name in ("m.keras", "m.h5"):
        loaded = kio.load_model(d / name)
        assert isinstance(loaded, keras.Model)
        np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)


def test_files_that_are_not_models(files, tmp_path):
    d, _, _ = files
    for name in ("notes.keras", "notes.h5", "notes.txt"):
        (tmp_path / name).write_text("just some text\n")
    sm = tmp_path / "exported"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"\x08\x01")
    cases = [
        (tmp_path / "nope.keras", "Model file not found"),
        (tmp_path / "notes.keras", "not a Keras model file: a .keras file is a zip archive"),
        (tmp_path / "notes.h5", "not an HDF5 model file"),
        (tmp_path / "notes.txt", "unsupported model file type '.txt'"),
        (d / "w.weights.h5", "holds only weights, not a model"),
        (sm, "SavedModel.*TFSMLayer.*cannot be pruned"),
        (tmp_path, "is a directory"),
    ]
    for path, match in cases:
        with pytest.raises(ModelLoadError, match=match):
            kio.load_model(path)


def test_truncated_or_corrupted_files(files, tmp_path):
    d, _, _ = files
    for name in ("m.keras", "m.h5"):
        data = (d / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelLoadError, match="truncated or corrupted"):
            kio.load_model(tmp_path / name)
    data = bytearray((d / "m.keras").read_bytes())
    start = data.find(b"model.weights.h5") + 1000  # inside the stored weights
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    (tmp_path / "flipped.keras").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupted"):
        kio.load_model(tmp_path / "flipped.keras")


def test_lambda_refused_under_safe_mode(files):
    d, _, x = files
    with pytest.raises(ModelLoadError, match=r"--unsafe.*safe_mode=False.*arbitrary code"):
        kio.load_model(d / "lam.keras")
    model = kio.load_model(d / "lam.keras", safe_mode=False)
    assert model.get_layer("double") is not None


def test_unknown_custom_object(tmp_path):
    @keras.saving.register_keras_serializable(package="kptest_io")
    class Ident(keras.layers.Layer):
        def call(self, x):
            return x

    i = keras.Input((3,))
    keras.Model(i, L.Dense(2)(Ident()(i))).save(tmp_path / "c.keras")
    del keras.saving.get_custom_objects()["kptest_io>Ident"]
    with pytest.raises(ModelLoadError, match=r"custom objects that are not registered: kptest_io>Ident"):
        kio.load_model(tmp_path / "c.keras")
    assert isinstance(kio.load_model(tmp_path / "c.keras", custom_objects={"kptest_io>Ident": Ident}), keras.Model)


# -- saving ------------------------------------------------------------------------------
@pytest.mark.backend
def test_save_model_writes_loadable_file(files, tmp_path):
    _, model, x = files
    path = kio.save_model(model, tmp_path / "out.keras")
    assert path.is_file()
    np.testing.assert_allclose(keras.saving.load_model(path).predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.keras"]
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777  # not mkstemp's 0600


def test_save_refuses_existing_file_unless_overwrite(files, tmp_path):
    _, model, _ = files
    target = tmp_path / "out.keras"
    target.write_bytes(b"precious")
    with pytest.raises(ModelSaveError, match="already exists"):
        kio.save_model(model, target)
    assert target.read_bytes() == b"precious"
    kio.save_model(model, target, overwrite=True)
    assert target.read_bytes()[:4] == b"PK\x03\x04"


def test_save_refuses_source_even_with_overwrite(files, tmp_path):
    d, model, _ = files
    src = tmp_path / "src.keras"
    src.write_bytes((d / "m.keras").read_bytes())
    before = src.read_bytes()
    link = tmp_path / "link.keras"
    os.symlink(src, link)
    for target in (src, link, tmp_path / "." / "src.keras"):
        with pytest.raises(ModelSaveError, match="onto the input file"):
            kio.save_model(model, target, overwrite=True, source=src)
    assert src.read_bytes() == before
    with pytest.raises(ModelSaveError, match=r"must end in \.keras"):
        kio.save_model(model, tmp_path / "out.h5")


def test_failed_or_interrupted_save_leaves_no_partial_file(files, tmp_path, monkeypatch):
    _, model, _ = files
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):

        def broken_save(model, path, error=error, **kwargs):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise error

        monkeypatch.setattr(keras.saving, "save_model", broken_save)
        folder = tmp_path / type(error).__name__
        folder.mkdir()
        target = folder / "out.keras"
        with pytest.raises(type(error)):
            kio.save_model(model, target)
        assert list(folder.iterdir()) == []
        target.write_bytes(b"old")
        with pytest.raises(type(error)):
            kio.save_model(model, target, overwrite=True)
        assert target.read_bytes() == b"old"
        assert [p.name for p in folder.iterdir()] == ["out.keras"]


def test_write_text_atomic(tmp_path):
    path = kio.write_text('{"a": 1}', tmp_path / "r.json")
    assert path.read_text() == '{"a": 1}'
    with pytest.raises(ModelSaveError, match="already exists"):
        kio.write_text("x", path, overwrite=False)
    assert path.read_text() == '{"a": 1}'
