"""Unit tests for service.data: sources, checks, splits and sharding. No TensorFlow here."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from service import data
from service.data import DataError, Splits, load, shard, steps_per_epoch


@pytest.fixture(scope="module")
def sample_arrays():
    """The bundled sample as a Keras-layout dict, the starting point for the bad-data cases."""
    s = load("sample", "test")
    return {"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test, "y_test": s.y_test}


@pytest.fixture
def no_mnist(tmp_path, monkeypatch):
    """No Keras cache and no network: HOME and KERAS_HOME point at an empty tmp dir."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))

    def offline(dest, timeout=data.DOWNLOAD_TIMEOUT_S):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download_mnist", offline)
    return tmp_path


def small_arrays(n_train=60, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


# --- the bundled sample ---------------------------------------------------------------------


def test_sample_holdout_sizes_and_dtypes():
    s = load("sample")
    assert isinstance(s, Splits)
    assert s.sizes() == {"source": "sample", "validation": "holdout", "n_train": 8334, "n_val": 1666, "n_test": 2000}
    for x in (s.x_train, s.x_val, s.x_test):
        assert x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 784
    for y in (s.y_train, s.y_val, s.y_test):
        assert y.dtype == np.uint8 and y.ndim == 1
        assert y.min() == 0 and y.max() == 9


def test_sample_test_validation_sizes():
    s = load("sample", "test")
    assert s.sizes() == {"source": "sample", "validation": "test", "n_train": 10000, "n_val": 2000, "n_test": 2000}
    np.testing.assert_array_equal(s.x_val, s.x_test)


def test_sample_is_real_mnist():
    s = load("sample", "test")
    assert s.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert s.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # Digits are ink on black: mostly zero pixels, some saturated ones.
    assert s.x_train.max() == 255 and (s.x_train == 0).mean() > 0.7


def test_holdout_is_the_last_sixth_of_the_training_images():
    h, t = load("sample", "holdout"), load("sample", "test")
    np.testing.assert_array_equal(np.concatenate([h.x_train, h.x_val]), t.x_train)
    np.testing.assert_array_equal(np.concatenate([h.y_train, h.y_val]), t.y_train)
    np.testing.assert_array_equal(h.x_test, t.x_test)


def test_unknown_validation_is_a_data_error():
    with pytest.raises(DataError, match="holdout.*test"):
        load("sample", "train")


def test_driver_import_does_not_pull_in_tensorflow_or_ray():
    import subprocess

    code = "import sys, service.data; print('tensorflow' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- npz paths ----------------------------------------------------------------------------------


def test_npz_path_accepts_flat_and_wider_integer_arrays(tmp_path):
    a = small_arrays()
    path = write_npz(
        tmp_path / "flat.npz",
        x_train=a["x_train"].reshape(60, 784).astype(np.int64),
        y_train=a["y_train"].astype(np.int32),
        x_test=a["x_test"].astype(np.float32),  # whole numbers 0..255 convert exactly
        y_test=a["y_test"].reshape(-1, 1),
    )
    s = load(str(path), "holdout")
    assert s.sizes() == {"source": str(path), "validation": "holdout", "n_train": 50, "n_val": 10, "n_test": 12}
    np.testing.assert_array_equal(s.x_train, a["x_train"][:50].reshape(50, 784))
    np.testing.assert_array_equal(s.x_test, a["x_test"].reshape(12, 784))
    np.testing.assert_array_equal(s.y_test, a["y_test"])
    assert s.x_test.dtype == np.uint8 and s.y_train.dtype == np.uint8


def bad(case: str, a: dict) -> dict:
    """A copy of `a` broken in one way."""
    a = dict(a)
    if case == "missing key":
        del a["y_test"]
    elif case == "wrong x shape":
        a["x_train"] = a["x_train"].reshape(len(a["x_train"]), 14, 56)
    elif case == "wrong y shape":
        a["y_train"] = np.eye(10, dtype=np.uint8)[a["y_train"]]
    elif case == "string dtype":
        a["y_train"] = a["y_train"].astype(str)
    elif case == "pixel out of range":
        a["x_train"] = a["x_train"].astype(np.int16)
        a["x_train"][3, 4, 5] = 300
    elif case == "negative pixel":
        a["x_test"] = a["x_test"].astype(np.int16)
        a["x_test"][0, 0, 0] = -1
    elif case == "scaled floats":
        a["x_train"] = a["x_train"].astype(np.float32) / 255
    elif case == "nan pixel":
        a["x_train"] = a["x_train"].astype(np.float32)
        a["x_train"][0, 0, 0] = np.nan
    elif case == "label out of range":
        a["y_test"] = a["y_test"].copy()
        a["y_test"][1] = 10
    elif case == "length mismatch":
        a["y_train"] = a["y_train"][:-1]
    elif case == "empty train":
        a["x_train"], a["y_train"] = a["x_train"][:0], a["y_train"][:0]
    elif case == "empty test":
        a["x_test"] = np.zeros((0, 28, 28), np.uint8)
    else:
        raise AssertionError(case)
    return a


BAD_CASES = {
    # case: words the one-line message must contain
    "missing key": ["missing y_test", "x_train, y_train, x_test, y_test"],
    "wrong x shape": ["x_train", "(60, 14, 56)", "expected (n, 28, 28) or (n, 784)"],
    "wrong y shape": ["y_train", "expected (n,)", "one-hot"],
    "string dtype": ["y_train", "dtype", "labels 0..9"],
    "pixel out of range": ["x_train", "0..300", "0..255"],
    "negative pixel": ["x_test", "-1..", "0..255"],
    "scaled floats": ["x_train", "fractional", "multiply by 255"],
    "nan pixel": ["x_train", "NaN"],
    "label out of range": ["y_test", "..10", "0..9"],
    "length mismatch": ["60 images", "59 labels"],
    "empty train": ["x_train is empty"],
    "empty test": ["x_test is empty"],
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_npz_is_one_clear_data_error(tmp_path, case):
    path = write_npz(tmp_path / "bad.npz", **bad(case, small_arrays()))
    with pytest.raises(DataError) as info:
        load(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for words in BAD_CASES[case]:
        assert words in message, (case, message)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"no such file.*--data sample"):
        load(str(tmp_path / "nope.npz"))


def test_unknown_source_that_is_not_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no such file or directory.*auto, mnist, sample"):
        load("fashion")


def test_not_a_zip(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_text("this is not an archive\n")
    with pytest.raises(DataError, match="not an .npz archive"):
        load(str(path))


def test_plain_npy_file_is_not_an_npz(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 784), np.uint8))
    with pytest.raises(DataError, match="not an .npz archive"):
        load(str(path))


def test_truncated_npz(tmp_path):
    good = write_npz(tmp_path / "good.npz", **small_arrays())
    raw = good.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated.npz"):
        load(str(path))


def test_corrupted_member(tmp_path):
    """A zip with a valid directory but damaged data: a CRC or zlib error, translated."""
    good = write_npz(tmp_path / "good.npz", **small_arrays())
    raw = bytearray(good.read_bytes())
    for i in range(200, 1200):
        raw[i] ^= 0xFF
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="damaged.npz") as info:
        load(str(path))
    assert "\n" not in str(info.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    a = small_arrays()
    a["y_train"] = np.array([int(v) for v in a["y_train"]], dtype=object)
    path = write_npz(tmp_path / "objects.npz", **a)
    with pytest.raises(DataError, match="y_train holds Python objects"):
        load(str(path))


def test_too_few_images_for_a_holdout(tmp_path):
    path = write_npz(tmp_path / "tiny.npz", **small_arrays(n_train=5))
    with pytest.raises(DataError, match="too few for a holdout"):
        load(str(path), "holdout")
    assert load(str(path), "test").sizes()["n_train"] == 5


# --- mnist / auto -------------------------------------------------------------------------------


def test_auto_falls_back_to_the_sample_with_a_loud_warning(no_mnist):
    warnings = []
    s = load("auto", warn=warnings.append)
    assert s.sizes()["source"] == "sample" and s.sizes()["n_train"] == 8334
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "could not be downloaded" in warnings[0] and "10,000-image sample" in warnings[0]
    assert "--data PATH/TO/mnist.npz" in warnings[0] and not warnings[0].startswith("WARNING")


def test_auto_fallback_warns_on_stderr_by_default(no_mnist, capsys):
    assert load("auto").source == "sample"
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("WARNING: full MNIST could not be downloaded") and err.count("\n") == 1


def test_mnist_without_cache_or_network_is_a_data_error(no_mnist):
    with pytest.raises(DataError) as info:
        load("mnist")
    message = str(info.value)
    assert "could not be downloaded" in message and "network is unreachable" in message
    assert "--data sample" in message and "--data PATH/TO/mnist.npz" in message


def test_mnist_and_auto_use_the_keras_cache(no_mnist):
    cache = no_mnist / ".keras" / "datasets"
    cache.mkdir(parents=True)
    write_npz(cache / "mnist.npz", **small_arrays(n_train=120, n_test=30))
    warnings = []
    for source in ("mnist", "auto"):
        s = load(source, "holdout", warn=warnings.append)
        assert s.sizes() == {"source": "mnist", "validation": "holdout", "n_train": 100, "n_val": 20, "n_test": 30}
    assert warnings == []


def test_cache_dir_is_keras_home_datasets_else_the_home_keras_cache(tmp_path, monkeypatch):
    from service import cli

    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.data_cache_dir() is None and data.default_cache_dir() == tmp_path / ".keras" / "datasets"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    assert cli.data_cache_dir() == tmp_path / "k" / "datasets"


def test_download_lands_in_the_cache(no_mnist, monkeypatch):
    """A successful download is written where the next run will find it."""
    payload = small_arrays(n_train=12, n_test=6)

    def fake_download(dest, timeout=data.DOWNLOAD_TIMEOUT_S):
        dest.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(dest, **payload)

    monkeypatch.setattr(data, "_download_mnist", fake_download)
    s = load("mnist", "test")
    assert s.sizes()["n_train"] == 12 and (no_mnist / ".keras" / "datasets" / "mnist.npz").is_file()


def test_download_verifies_the_checksum_before_caching(tmp_path, monkeypatch):
    """The real _download_mnist, with urlopen faked: a bad file never reaches the cache."""
    import hashlib
    import io

    payload = b"pretend this is mnist.npz"
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    dest = tmp_path / "datasets" / "mnist.npz"
    with pytest.raises(DataError, match="sha256"):
        data._download_mnist(dest)
    assert not dest.parent.exists()

    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(payload).hexdigest())
    data._download_mnist(dest)
    assert dest.read_bytes() == payload and [p.name for p in dest.parent.iterdir()] == ["mnist.npz"]


# --- sharding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 10, 100, 8334, 50000, 60001])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7, 16])
def test_shards_are_disjoint_cover_everything_and_balanced(n, workers):
    slices = [shard(n, workers, r) for r in range(workers)]
    covered = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(covered, np.arange(n))  # in order: disjoint and complete
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [len(part) for part in np.array_split(np.arange(n), workers)]


@pytest.mark.parametrize("args", [(10, 0, 0), (10, 2, 2), (10, 2, -1), (-1, 2, 0)])
def test_shard_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        shard(*args)


@pytest.mark.parametrize("n, batch", [(8334, 128), (50000, 200), (60000, 100), (1001, 10), (13, 4), (200, 200)])
def test_steps_per_epoch_counts_whole_global_batches(n, batch):
    # The same for every number of workers: each takes its rows of every global batch.
    assert steps_per_epoch(n, batch) == n // batch


def test_steps_per_epoch_known_values():
    assert steps_per_epoch(8334, 200) == 41
    assert steps_per_epoch(50000, 200) == 250


def test_steps_per_epoch_too_little_data():
    with pytest.raises(DataError, match="too little training data for batch size 128: 100 images make no whole batch"):
        steps_per_epoch(100, 128)


# --- Parquet ----------------------------------------------------------------------------------


def test_parquet_missing_parts_is_a_data_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no test/ or test.parquet"):
        load(str(tmp_path))


def test_parquet_round_trip(tmp_path, sample_arrays):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Through export_parquet, from the full sample: the same arrays come back, in order (the
    # holdout split takes the LAST sixth, so order matters).
    original = load("sample", "holdout")
    out = data.export_parquet(original, tmp_path / "pq")
    assert (out / "train").is_dir() and (out / "test").is_dir()
    again = load(str(out), "holdout")
    assert again.source == str(out) and again.sizes()["n_train"] == 8334
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        got, want = getattr(again, field), getattr(original, field)
        assert got.dtype == want.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    # The same directory as a URI.
    np.testing.assert_array_equal(load(f"file://{out}", "test").x_train, sample_arrays["x_train"].reshape(-1, 784))

    # Written by hand: train.parquet / test.parquet files, binary images, int64 labels.
    small = small_arrays(n_train=24, n_test=6)
    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    for split in ("train", "test"):
        x, y = small[f"x_{split}"], small[f"y_{split}"]
        images = pa.array([row.tobytes() for row in x.reshape(len(x), 784)], type=pa.binary())
        pq.write_table(pa.table({"image": images, "label": y.astype(np.int64)}), by_hand / f"{split}.parquet")
    s = load(str(by_hand), "test")
    np.testing.assert_array_equal(s.x_train, small["x_train"].reshape(24, 784))
    np.testing.assert_array_equal(s.y_test, small["y_test"])

    # A malformed Parquet part is one DataError line too.
    pq.write_table(pa.table({"pixels": [[0] * 784], "label": [3]}), by_hand / "test.parquet")
    with pytest.raises(DataError, match="missing column image"):
        load(str(by_hand), "test")
    pq.write_table(pa.table({"image": [[0] * 783], "label": [3]}), by_hand / "test.parquet")
    with pytest.raises(DataError, match="row 0 has 783 values; every row needs 784"):
        load(str(by_hand), "test")


def test_parquet_parts_split_over_several_files_keep_file_then_row_order(tmp_path):
    """A `train/` written by a cluster job has many files: read in file-name order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    small = small_arrays(n_train=30, n_test=6)
    for split, n in (("train", 30), ("test", 6)):
        (tmp_path / split).mkdir()
        x, y = small[f"x_{split}"].reshape(n, 784), small[f"y_{split}"]
        for i, rows in enumerate(np.array_split(np.arange(n), 3)):
            images = pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int32) * 784),
                                              pa.array(x[rows].reshape(-1)))
            pq.write_table(pa.table({"image": images, "label": y[rows]}), tmp_path / split / f"part-{i:05d}.parquet")
    s = load(str(tmp_path), "holdout")
    np.testing.assert_array_equal(np.concatenate([s.y_train, s.y_val]), small["y_train"])
    np.testing.assert_array_equal(s.x_val, small["x_train"].reshape(30, 784)[25:])
