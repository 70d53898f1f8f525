"""One data adapter: every form of data the rest of the API takes works for the criteria too."""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune.data import batches


def small_model():
    i = keras.Input((6, 6, 1), name="image")
    x = L.Conv2D(4, 3, activation="relu", name="c1")(i)
    x = L.Conv2D(3, 3, activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(2, name="head")(x))


def arrays(n=10):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 2, n)


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.x[i * 5 : (i + 1) * 5], self.y[i * 5 : (i + 1) * 5]


def forms():
    x, y = arrays()
    return {
        "x": x,
        "(x, y)": (x, y),
        "list of batches": [x[:5], x[5:]],
        "list of (x, y)": [(x[:5], y[:5]), (x[5:], y[5:])],
        "generator": (b for b in [(x[:5], y[:5]), (x[5:], y[5:])]),
        "mapping": {"x": x, "y": y},
        "PyDataset": Batches(x, y),
    }


@pytest.mark.backend
@pytest.mark.parametrize("form", list(forms()))
def test_every_form_gives_the_same_scores(form):
    model = small_model()
    x, y = arrays()
    reference = kp.score(model, "apoz", data=[x[:5], x[5:]])
    scores = kp.score(model, "apoz", data=forms()[form], batch_size=5)
    assert reference.keys() == scores.keys() and reference
    for gid in reference:
        np.testing.assert_allclose(scores[gid], reference[gid], rtol=1e-6)
    sel = kp.select(model, "mean_activation", ratio=0.25, data=forms()[form], batch_size=5)
    assert sum(len(v) for v in sel.values()) >= 1


def test_tf_dataset_batched_and_unbatched():
    tf = pytest.importorskip("tensorflow")
    model = small_model()
    x, y = arrays()
    reference = kp.score(model, "apoz", data=(x, y))
    for ds in (tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x, y)).batch(4)):
        scores = kp.score(model, "apoz", data=ds)
        for gid in reference:
            np.testing.assert_allclose(scores[gid], reference[gid], rtol=1e-6)


def test_taylor_takes_labelled_forms():
    model = small_model()
    x, y = arrays()
    a = kp.score(model, "taylor", data=(x, y), loss="sparse_categorical_crossentropy", batch_size=5)
    b = kp.score(model, "taylor", data=[(x[:5], y[:5]), (x[5:], y[5:])], loss="sparse_categorical_crossentropy")
    for gid in a:
        np.testing.assert_allclose(a[gid], b[gid], rtol=1e-5)
    with pytest.raises(kp.PruningError, match="labelled"):
        kp.score(model, "taylor", data=x, loss="sparse_categorical_crossentropy")


def test_wrong_shape_names_the_model_input():
    model = small_model()
    with pytest.raises(kp.PruningError, match=r"shape \(10,\).*model input 'image' expects \(None, 6, 6, 1\)"):
        kp.select(model, "apoz", ratio=0.2, data=np.zeros(10))
    with pytest.raises(kp.PruningError, match="yielded no batches"):
        kp.score(model, "apoz", data=[])
    with pytest.raises(kp.PruningError, match="batch_size must be a positive integer"):
        list(batches(arrays()[0], batch_size=0))


def test_npz_file_with_other_keys(tmp_path):
    x, y = arrays()
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=y)
    got = list(batches(path, model=small_model(), batch_size=4, x_key="images", y_key="labels"))
    assert [len(b[0]) for b in got] == [4, 4, 2] and np.array_equal(np.concatenate([b[1] for b in got]), y)
    with pytest.raises(kp.PruningError, match=r"must hold arrays 'x' and 'y'.*\['images', 'labels'\]"):
        list(batches(path))
