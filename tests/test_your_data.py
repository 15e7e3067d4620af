"""Data for a model of your own (`model.build`): any feature shape kept, uint8 kept for the workers to
scale, other numbers as float32, labels 0..K-1 with K from the data or `data.classes`, Parquet
columns named in the spec, and one DataError line for each thing wrong (each compared whole), before
Ray starts. The built-in model's data is unchanged (tests/test_data.py). No Ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.data import DataError, Layout, check_fits, load
from service.spec import load_spec

OWN = Layout(own=True)


def npz(path: Path, x_train, y_train, x_test, y_test) -> str:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def rows(rng: np.random.Generator, n: int, shape: tuple, classes: int, dtype=np.float32):
    x = rng.normal(size=(n, *shape)).astype(dtype) if dtype != np.uint8 else \
        rng.integers(0, 256, size=(n, *shape)).astype(np.uint8)
    return x, rng.integers(0, classes, size=n)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_vectors_of_three_classes(tmp_path, rng):
    x, y = rows(rng, 600, (20,), 3, np.float64)
    xt, yt = rows(rng, 120, (20,), 3, np.float64)
    s = load(npz(tmp_path / "v.npz", x, y, xt, yt), layout=OWN)
    assert (s.feature_shape, s.classes, s.x_train.dtype, s.y_train.dtype) == ((20,), 3, np.float32, np.int32)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (500, 100, 120)
    np.testing.assert_array_equal(s.x_train, x[:500].astype(np.float32))
    np.testing.assert_array_equal(s.y_val, y[500:])


def test_images_keep_their_shape_and_uint8(tmp_path, rng):
    x, y = rows(rng, 60, (8, 8), 4, np.uint8)
    xt, yt = rows(rng, 12, (8, 8), 4, np.uint8)
    s = load(npz(tmp_path / "hw.npz", x, y, xt, yt), "test", layout=OWN)
    assert (s.feature_shape, s.x_train.dtype, s.classes) == ((8, 8), np.uint8, int(max(y.max(), yt.max())) + 1)
    assert s.x_val is s.x_test
    x, y = rows(rng, 60, (6, 6, 3), 2)
    s = load(npz(tmp_path / "hwc.npz", x, y, x[:10], y[:10]), layout=Layout(own=True, classes=5))
    assert (s.feature_shape, s.x_train.dtype, s.classes) == ((6, 6, 3), np.float32, 5)
    # data.shape reshapes each row: a vector of 72 values becomes 6x6x2.
    s = load(npz(tmp_path / "flat.npz", x.reshape(60, -1)[:, :72], y, x.reshape(60, -1)[:10, :72], y[:10]),
             layout=Layout(own=True, shape=(6, 6, 2)))
    assert s.feature_shape == (6, 6, 2)


def test_mnist_with_a_builder_keeps_its_28x28_and_without_is_unchanged():
    own = load("sample", layout=OWN)
    assert (own.feature_shape, own.x_train.dtype, own.classes) == ((28, 28), np.uint8, 10)
    seed = load("sample")
    assert (seed.feature_shape, seed.x_train.dtype, seed.y_train.dtype, seed.classes) == ((784,), np.uint8, np.uint8, 10)
    np.testing.assert_array_equal(seed.x_train, own.x_train.reshape(-1, 784))


def test_labels_of_one_class_still_make_two_classes(tmp_path, rng):
    x, _ = rows(rng, 12, (3,), 1)
    s = load(npz(tmp_path / "one.npz", x, np.zeros(12, int), x, np.zeros(12, int)), layout=OWN)
    assert s.classes == 2


def test_the_layout_of_a_spec():
    assert Layout.of(load_spec(None)) == Layout()
    spec = load_spec(None, ["model.build=pkg.models:cnn", "data.classes=3", "data.shape=[28, 28, 1]",
                            "data.features=pixels", "data.labels=digit"])
    assert Layout.of(spec) == Layout(own=True, classes=3, features="pixels", labels="digit", shape=(28, 28, 1))


def _bad(tmp_path: Path, rng: np.random.Generator, case: str) -> tuple[str, Layout]:
    x, y = rows(rng, 60, (5,), 3)
    xt, yt = rows(rng, 12, (5,), 3)
    layout = OWN
    if case == "label above classes":
        y[7], layout = 3, Layout(own=True, classes=3)
    elif case == "negative label":
        yt[2] = -1
    elif case == "fractional label":
        y = y.astype(np.float32)
        y[4] = 0.5
    elif case == "nan feature":
        x[9, 2] = np.nan
    elif case == "shape mismatch":
        xt = rng.normal(size=(12, 6))
    elif case == "shape does not hold a row":
        layout = Layout(own=True, shape=(2, 2))
    elif case == "one value per example":
        x = x[:, 0]
    return npz(tmp_path / "bad.npz", x, y, xt, yt), layout


BAD = {
    "label above classes": "y_train has the label 3, outside 0..2 of data.classes 3; raise data.classes, or leave it "
                           "out to count the classes from the data",
    "negative label": "y_test has values -1..2; expected class labels 0..K-1",
    "fractional label": "y_train has fractional values; expected whole-number class labels 0..K-1",
    "nan feature": "x_train has 1 NaN or infinite values (or beyond float32's range), the first in row 9; remove or "
                   "fill them in",
    "shape mismatch": "x_train's rows have shape (5,) but x_test's (6,); train and test need the same feature shape",
    "shape does not hold a row": "x_train: data.shape [2, 2] holds 4 values, but each row has 5 ((5,)); give a shape "
                                 "of 5 values",
    "one value per example": "x_train has shape (60,); expected one row of features per example, (n, d) or "
                             "(n, h, w[, c]) with n > 0",
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_input_is_one_line(tmp_path, rng, case):
    path, layout = _bad(tmp_path, rng, case)
    with pytest.raises(DataError) as exc:
        load(path, layout=layout)
    assert str(exc.value) == f"{path}: {BAD[case]}"


def test_data_too_big_for_every_worker_here(tmp_path, rng):
    x, y = rows(rng, 1000, (256,), 3)  # about 1 MB
    s = load(npz(tmp_path / "big.npz", x, y, x[:200], y[:200]), layout=OWN)
    size = sum(a.nbytes for a in (s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test))
    check_fits(s, 4, memory_bytes=4 * size)  # fits exactly
    with pytest.raises(DataError) as exc:
        check_fits(s, 4, memory_bytes=3 * size)
    gib = size / 1024 ** 3
    assert str(exc.value) == (f"{s.source}: the data takes {gib:.1f} GiB and each of the 4 workers holds all of it "
                             f"({4 * gib:.1f} GiB), more than this machine's {3 * gib:.1f} GiB of memory; use at most "
                             f"3 workers here (--workers 3), a cluster, or less data")
    with pytest.raises(DataError) as exc:
        check_fits(s, 1, memory_bytes=size // 2)
    assert str(exc.value).endswith("more memory, or less data") and "\n" not in str(exc.value)
    check_fits(s, 2)  # this machine's own memory, as the OS reports it


def _parquet(root: Path, name: str, x: np.ndarray, y: np.ndarray, features="feats", labels="target") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / name).mkdir(parents=True)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]) if x.ndim == 2 else \
        pa.array([list(r) for r in x], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({features: column, labels: pa.array(y)}), root / name / "part-0.parquet")


def test_parquet_columns_of_your_own(tmp_path, rng):
    x, y = rows(rng, 60, (12,), 3)
    _parquet(tmp_path / "p", "train", x, y)
    _parquet(tmp_path / "p", "test", x[:12], y[:12])
    layout = Layout(own=True, features="feats", labels="target", shape=(3, 4))
    s = load(str(tmp_path / "p"), layout=layout)
    assert (s.feature_shape, s.x_train.dtype, s.classes) == ((3, 4), np.float32, 3)
    np.testing.assert_array_equal(s.x_train.reshape(50, 12), x[:50])
    with pytest.raises(DataError) as exc:
        load(str(tmp_path / "p"), layout=OWN)
    assert str(exc.value) == (f"{tmp_path / 'p'}: train: missing column image, label (found feats, target); expected "
                             "image and label (name others with data.features and data.labels)")


def test_parquet_rows_of_different_lengths(tmp_path):
    ragged = np.array([np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(3, np.float32)], dtype=object)
    _parquet(tmp_path / "p", "train", ragged, np.array([0, 1, 0]))
    _parquet(tmp_path / "p", "test", ragged, np.array([0, 1, 0]))
    with pytest.raises(DataError) as exc:
        load(str(tmp_path / "p"), layout=Layout(own=True, features="feats", labels="target"))
    assert str(exc.value) == f"{tmp_path / 'p'}: train: feats row 2 has 3 values; every row needs as many as row 0 (4)"
