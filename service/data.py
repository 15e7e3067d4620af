"""The data layer: find MNIST, check it, split it, and cut it into per-worker shards.

`load(source, validation)` returns the `Splits` the built-in model trains on, flat uint8 arrays:

    splits = load("sample")              # the 10,000-image sample bundled with the package
    splits.sizes()                       # {"source": "sample", "validation": "holdout",
                                         #  "n_train": 8334, "n_val": 1666, "n_test": 2000}

For a model of your own (`model.build`), `load(source, layout=Layout(own=True))` keeps the
features' shape: any (n, ...) array, uint8 kept as uint8 (pixels, scaled in the worker), other
numbers as float32; labels 0..K-1 (`Splits.classes` = K, `Splits.feature_shape`).

Sources:

* ``"mnist"``  -- full MNIST from the Keras cache (``~/.keras/datasets/mnist.npz``), downloaded
  into that cache on first use.
* ``"sample"`` -- the first 10,000 training and 2,000 test images, shipped inside the package so
  that everything runs offline.
* ``"auto"``   -- full MNIST when it can be had, else the sample with a loud warning.
* a ``.npz`` path (or any existing file) in the Keras layout: x_train, y_train, x_test, y_test.
* a Parquet directory or URI with ``train`` and ``test`` parts, read with pyarrow (local paths
  and any URI ``pyarrow.fs`` understands: s3://, gs://, hdfs://, file://); the columns are
  ``image`` and ``label`` unless the `Layout` names others.

The shards of a split (`shard`) and of each global batch (`BatchSplit`) are every engine's.

Every problem with the data becomes one `DataError` line that says what is wrong and how to
fix it, raised here on the driver before any worker starts.

Why no TensorFlow or Ray here: this module runs on the driver before Ray starts, where importing
TensorFlow costs seconds and is not needed to read arrays; a Ray started here to read files
would be a local one even when the run then joins a cluster.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zipfile
import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

import numpy as np

from service.errors import BadInput, first_line

if TYPE_CHECKING:  # pyarrow is imported only to read Parquet
    import pyarrow
    import pyarrow.fs

# Keras's own download location and checksum for mnist.npz, so a file fetched here is the same
# file `keras.datasets.mnist.load_data()` would have fetched, and each can use the other's cache.
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
# Short, so that "auto" on a machine without internet falls back to the sample quickly.
DOWNLOAD_TIMEOUT_S = 10.0

# The bundled sample, as package data (see scripts/make_sample.py for how it was cut).
SAMPLE_PACKAGE = "service"
SAMPLE_RESOURCE = "sample/mnist-sample.npz"

KEYS = ("x_train", "y_train", "x_test", "y_test")
PIXELS = 28 * 28
VALIDATIONS = ("holdout", "test")
# How a user can point at other data; repeated in every "could not find data" message.
ALTERNATIVES = "use --data sample for the bundled 10,000-image sample, or --data PATH/TO/mnist.npz"


class DataError(BadInput):
    """One line: what is wrong with the data and how to fix it."""


@dataclass(frozen=True)
class Layout:
    """What `load` makes of the arrays it reads.

    The default is the built-in model's: x (n, 784) uint8 pixels, y (n,) uint8 labels 0..9.
    `own=True` (a `model.build`) keeps the features' shape, optionally reshaped per row to
    `shape`, with labels 0..`classes`-1 (None: from the data). `features` and `labels` name the
    Parquet columns.

    Example::

        Layout.of(load_spec("examples/features.yaml"))   # Layout(own=True, classes=None, ...)
    """

    own: bool = False
    classes: Optional[int] = None
    features: str = "image"
    labels: str = "label"
    shape: Optional[tuple[int, ...]] = None

    @classmethod
    def of(cls, spec: Any) -> "Layout":
        """A train spec's layout (its `model.build` and `data` fields)."""
        data = spec.data
        return cls(spec.model.build is not None, data.classes, data.features, data.labels,
                   tuple(data.shape) if data.shape else None)


SEED_LAYOUT = Layout()
SEED_CLASSES = 10


@dataclass
class Splits:
    """Train / validation / test arrays plus where they came from and how many classes they have.

    For the built-in model x arrays are (n, 784) uint8 pixels 0..255 and y arrays (n,) uint8
    labels 0..9. For a model of your own x keeps its (n, *feature_shape) shape, uint8 or float32,
    and y is (n,) int32 labels 0..classes-1. Scaling uint8 to [0, 1] is left to the workers, so the
    arrays stay small when sent to them.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # "mnist", "sample", or the path/URI that was read
    validation: str  # "holdout" or "test"
    classes: int = SEED_CLASSES  # K: labels are 0..K-1

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """One example's features: (784,) for the built-in model, e.g. (28, 28) or (20,) otherwise."""
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict:
        """What a results record needs to say which data a run used."""
        return {
            "source": self.source,
            "validation": self.validation,
            "n_train": int(len(self.y_train)),
            "n_val": int(len(self.y_val)),
            "n_test": int(len(self.y_test)),
        }




# --------------------------------------------------------------------------------------------
# Entry point


def _print_warning(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def load(
    source: str = "auto",
    validation: str = "holdout",
    *,
    warn: Callable[[str], object] = _print_warning,
    cache_dir: Optional[Path] = None,
    layout: Layout = SEED_LAYOUT,
) -> Splits:
    """Read, check and split the data of `source` (see the module docstring for the choices),
    shaped as `layout` says (default: the built-in model's flat MNIST).

    validation="holdout" validates on the last sixth of the training images and trains on the
    rest, keeping the test set unseen; validation="test" validates on the test set and trains on
    all training images, which is what the original seed script did.

    `warn` receives the one-line warning when "auto" falls back to the sample, without a
    "WARNING:" prefix so that the caller can present it its own way; by default it is printed
    to stderr with that prefix. `cache_dir` is where full MNIST is looked for and downloaded to
    (default: Keras's own, ~/.keras/datasets).
    """
    if validation not in VALIDATIONS:
        raise DataError(f"validation must be 'holdout' or 'test', got {validation!r}")
    arrays, used = _read_source(source, warn, Path(cache_dir) if cache_dir else default_cache_dir(), layout)
    return _split(arrays, used, validation, _classes(arrays, used, layout))


def load_offline(source: str = "auto", validation: str = "holdout", *,
                 cache_dir: Optional[Path] = None, layout: Layout = SEED_LAYOUT) -> Optional[Splits]:
    """`load` without the network, for `plateau check`: the same splits, or the same DataError,
    or None when reading the data needs the network (full MNIST not in the cache yet, a remote
    Parquet URI). No warning: "auto" without a cached MNIST is None, not the sample."""
    if validation not in VALIDATIONS:
        raise DataError(f"validation must be 'holdout' or 'test', got {validation!r}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = source.strip() if isinstance(source, str) else source
    if name in ("mnist", "auto") and not (cache / "mnist.npz").is_file():
        return None
    if isinstance(name, str) and "://" in name and not name.lower().startswith("file://"):
        return None
    return load(source, validation, warn=lambda message: None, cache_dir=cache, layout=layout)


def _read_source(source: str, warn: Callable[[str], object], cache_dir: Path,
                 layout: Layout) -> tuple[dict[str, np.ndarray], str]:
    """Dispatch on `source`; return the checked Keras-layout arrays and the name to record."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(
            f"data source must be auto, mnist, sample, a .npz path or a Parquet directory; got {source!r}"
        )
    source = source.strip()
    if source == "sample":
        return _read_sample(layout), "sample"
    if source in ("mnist", "auto"):
        path, reason = _find_mnist(cache_dir)
        if path is not None:
            return _read_npz(path, layout), "mnist"
        if source == "mnist":
            raise DataError(f"MNIST could not be downloaded from {MNIST_URL} ({reason}); {ALTERNATIVES}")
        # Loud on purpose: a run on 10,000 images is not comparable to one on 60,000.
        warn(
            f"full MNIST could not be downloaded ({reason}); this run uses the bundled "
            "10,000-image sample. For full data pass --data PATH/TO/mnist.npz "
            f"or put mnist.npz in {cache_dir}"
        )
        return _read_sample(layout), "sample"
    if "://" in source:
        return _read_parquet(source, layout), source
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_parquet(str(path), layout), source
    if path.suffix == ".npz" or path.exists():
        return _read_npz(path, layout), source
    raise DataError(
        f"{source}: no such file or directory; data source must be auto, mnist, sample, "
        "a Keras-layout .npz file, or a Parquet directory/URI with train and test parts"
    )


def _split(arrays: Mapping[str, np.ndarray], source: str, validation: str, classes: int = SEED_CLASSES) -> Splits:
    """Carve the validation set out of the checked arrays."""
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if validation == "test":
        return Splits(x_train, y_train, x_test, y_test, x_test, y_test, source, validation, classes)
    n = len(y_train)
    # The last sixth, not a random draw: for full MNIST that is the classic 50,000 / 10,000
    # split, and it is the same on every run and on every worker with no seed to pass around.
    n_val = n // 6
    if n_val == 0:
        raise DataError(
            f"{source}: only {n} training images, too few for a holdout validation split "
            "(need at least 6); use validation: test or more data"
        )
    cut = n - n_val
    return Splits(
        x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:], x_test, y_test, source, validation, classes
    )


def _classes(arrays: Mapping[str, np.ndarray], where: str, layout: Layout) -> int:
    """K: the layout's, with every label below it; else the largest label + 1, at least 2."""
    if not layout.own:
        return SEED_CLASSES
    if layout.classes is None:
        return max(2, max(int(arrays[k].max()) for k in ("y_train", "y_test")) + 1)
    for key in ("y_train", "y_test"):
        top = int(arrays[key].max())
        if top >= layout.classes:
            raise DataError(f"{where}: {key} has the label {top}, outside 0..{layout.classes - 1} of data.classes "
                            f"{layout.classes}; raise data.classes, or leave it out to count the classes from the data")
    return layout.classes


def check_fits(splits: Splits, workers: int, memory_bytes: Optional[int] = None) -> None:
    """A DataError when `workers` ranks on this machine cannot all hold the data: every rank holds
    every split whole. `memory_bytes`: the machine's memory (default: what the OS reports)."""
    memory = memory_bytes if memory_bytes is not None else machine_memory()
    arrays = {id(a): a for a in (splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test,
                                 splits.y_test)}
    size = sum(a.nbytes for a in arrays.values())
    if not memory or workers * size <= memory:
        return
    gib = 1024 ** 3
    fewer = (f"use at most {memory // size} workers here (--workers {memory // size}), a cluster, or less data"
             if memory >= size else "use a machine or cluster with more memory, or less data")
    raise DataError(f"{splits.source}: the data takes {size / gib:.1f} GiB and each of the {workers} workers holds "
                    f"all of it ({workers * size / gib:.1f} GiB), more than this machine's {memory / gib:.1f} GiB of "
                    f"memory; {fewer}")


def machine_memory() -> Optional[int]:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Sharding across data-parallel workers


def shard(n: int, num_workers: int, rank: int) -> slice:
    """The contiguous range of `n` examples that worker `rank` of `num_workers` trains on.

    Same ranges as np.array_split: the first n % num_workers workers get one extra example, so
    sizes differ by at most one, the ranges are disjoint and together cover 0..n. Computed from
    (n, num_workers, rank) alone so that each worker can find its part without talking to others.
    """
    if n < 0 or num_workers < 1 or not 0 <= rank < num_workers:
        raise ValueError(
            "shard needs n >= 0, num_workers >= 1 and 0 <= rank < num_workers; "
            f"got n={n}, num_workers={num_workers}, rank={rank}"
        )
    base, extra = divmod(n, num_workers)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return slice(start, stop)


def steps_per_epoch(n_train: int, global_batch: int) -> int:
    """Optimizer steps per epoch: whole global batches of the epoch's order of all training images.

    The same for every world size: an elastic run that loses a worker trains on the same batches.
    """
    steps = n_train // global_batch
    if steps == 0:
        raise DataError(
            f"too little training data for batch size {global_batch}: {n_train} images make no whole batch; "
            "use a smaller batch size or more data"
        )
    return steps


# --------------------------------------------------------------------------------------------
# The bundled sample and full MNIST


def default_cache_dir() -> Path:
    """Where Keras keeps downloaded datasets when KERAS_HOME is not set (the CLI reads that)."""
    return Path.home() / ".keras" / "datasets"


def _read_sample(layout: Layout = SEED_LAYOUT) -> dict[str, np.ndarray]:
    ref = resources.files(SAMPLE_PACKAGE).joinpath(SAMPLE_RESOURCE)
    if not ref.is_file():
        raise DataError(
            f"the bundled sample {SAMPLE_PACKAGE}/{SAMPLE_RESOURCE} is missing from the installation; "
            "reinstall the package, or pass --data PATH/TO/mnist.npz"
        )
    # as_file gives a real path even if the package is installed as a zip.
    with resources.as_file(ref) as path:
        return _read_npz(path, layout)


def _find_mnist(cache_dir: Path) -> tuple[Path | None, str]:
    """Full MNIST in the Keras cache, downloaded there if not cached yet; else (None, why not)."""
    path = cache_dir / "mnist.npz"
    if path.is_file():
        return path, ""
    try:
        _download_mnist(path)
    # Any failure on the network boundary means "not available": the network or the server (OSError:
    # URLError, a timeout, a reset), a broken HTTP exchange, a malformed URL, a wrong checksum.
    except (OSError, http.client.HTTPException, ValueError, DataError) as exc:
        # URLError's str() wraps the reason in "<urlopen error ...>"; the reason alone reads better.
        return None, str(getattr(exc, "reason", "") or first_line(exc))
    return path, ""


def _download_mnist(dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch mnist.npz from Keras's URL into `dest`, verifying Keras's checksum.

    The file (11 MB) is held in memory until verified, then written to a temporary file and
    renamed: a failed or interrupted download leaves nothing in the cache that a later run
    would take for the real file.
    """
    with urllib.request.urlopen(MNIST_URL, timeout=timeout) as response:
        payload = response.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(f"the downloaded file has sha256 {digest}, expected {MNIST_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".mnist-", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Keras-layout .npz files


def _read_npz(path: Path, layout: Layout = SEED_LAYOUT) -> dict[str, np.ndarray]:
    """Read and check a Keras-layout .npz; every numpy/zipfile failure becomes a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; {ALTERNATIVES}")
    if not path.is_file():
        raise DataError(f"{path}: not a file; expected a Keras-layout .npz with {', '.join(KEYS)}")
    expected = f"a Keras-layout .npz with {', '.join(KEYS)}"
    if not zipfile.is_zipfile(path):
        parquet = path.suffix == ".parquet"
        hint = " (for Parquet, pass the directory holding train/ and test/)" if parquet else ""
        raise DataError(f"{path}: not an .npz archive; expected {expected}{hint}")
    arrays, key = {}, "the archive"
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                found = ", ".join(f.files) or "nothing"
                raise DataError(f"{path}: missing {', '.join(missing)} (found {found}); expected {expected}")
            for key in KEYS:
                arrays[key] = f[key]  # members are read (and decompressed) here, lazily
    except DataError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, OSError, ValueError: never raw
        if isinstance(exc, ValueError) and "pickle" in str(exc):
            # An object array: reading it would mean unpickling, which we never do.
            raise DataError(
                f"{path}: {key} holds Python objects, not a numeric array; save numeric arrays with np.savez"
            ) from exc
        raise DataError(
            f"{path}: damaged .npz archive, {key} is unreadable ({first_line(exc)}); "
            "re-create or re-download it"
        ) from exc
    return _check(arrays, str(path), layout)


# --------------------------------------------------------------------------------------------
# Checking and normalising arrays, whatever format they came from


def _check(arrays: Mapping[str, np.ndarray], where: str, layout: Layout = SEED_LAYOUT) -> dict[str, np.ndarray]:
    """Return x as (n, 784) uint8 and y as (n,) uint8 (the built-in model's layout), or x in its
    own shape and y as (n,) int32 (`layout.own`); or raise one DataError line."""
    out = {}
    for split in ("train", "test"):
        if layout.own:
            x = _features(arrays[f"x_{split}"], f"{where}: x_{split}", layout.shape)
            y = _labels(arrays[f"y_{split}"], f"{where}: y_{split}", None)
        else:
            x = _pixels(arrays[f"x_{split}"], f"{where}: x_{split}")
            y = _labels(arrays[f"y_{split}"], f"{where}: y_{split}")
        if len(x) != len(y):
            raise DataError(
                f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; "
                "they must match one to one"
            )
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    train, test = out["x_train"].shape[1:], out["x_test"].shape[1:]
    if train != test:
        raise DataError(f"{where}: x_train's rows have shape {train} but x_test's {test}; train and test need "
                        "the same feature shape")
    return out


def _features(x: np.ndarray, name: str, shape: Optional[tuple[int, ...]]) -> np.ndarray:
    """A model of your own's features: (n, ...) in their own shape (or `shape`), uint8 kept,
    any other numbers as float32, all finite."""
    x = np.asarray(x)
    if x.dtype.kind not in "iufb":
        raise DataError(f"{name} has dtype {x.dtype}; expected numbers (uint8 pixels, or floats)")
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{name} has shape {x.shape}; expected one row of features per example, (n, d) or "
                        "(n, h, w[, c]) with n > 0")
    if shape is not None:
        values = int(np.prod(x.shape[1:]))
        if values != int(np.prod(shape)):
            raise DataError(f"{name}: data.shape {list(shape)} holds {int(np.prod(shape))} values, but each row has "
                            f"{values} ({x.shape[1:]}); give a shape of {values} values")
        x = x.reshape(len(x), *shape)
    if x.dtype != np.uint8:
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
            raise DataError(f"{name} has {int(bad.sum())} NaN or infinite values (or beyond float32's range), the "
                            f"first in row {row}; remove or fill them in")
    return np.ascontiguousarray(x)


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    _numeric(x, name, "pixels 0..255")
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{name} is empty; expected images of shape (n, 28, 28) or (n, 784) with n > 0")
    if x.shape[1:] not in ((PIXELS,), (28, 28), (28, 28, 1)):
        raise DataError(f"{name} has shape {x.shape}; expected (n, 28, 28) or (n, 784)")
    scaled_hint = " (if the images were scaled to [0, 1], multiply by 255 and round)"
    _whole_numbers_in(x, 0, 255, name, "pixels", scaled_hint)
    return np.ascontiguousarray(x.reshape(len(x), PIXELS), dtype=np.uint8)


def _labels(y: np.ndarray, name: str, highest: Optional[int] = SEED_CLASSES - 1) -> np.ndarray:
    """Class indices 0..`highest` as (n,) uint8; `highest` None (a model of your own): any
    whole number from 0, as (n,) int32."""
    y = np.asarray(y)
    _numeric(y, name, f"labels 0..{highest if highest is not None else 'K-1'}")
    if y.ndim == 0 or y.shape[0] == 0:
        raise DataError(f"{name} is empty; expected labels of shape (n,) with n > 0")
    if y.shape[1:] not in ((), (1,)):
        one_hot = y.ndim == 2 and (y.shape[1] == 10 or highest is None)
        hint = " (one-hot labels? pass the class index, e.g. y.argmax(axis=1))" if one_hot else ""
        raise DataError(f"{name} has shape {y.shape}; expected (n,){hint}")
    if highest is None:
        _whole_numbers_in(y, 0, None, name, "class labels")
        return np.ascontiguousarray(y.reshape(len(y)), dtype=np.int32)
    _whole_numbers_in(y, 0, highest, name, "labels")
    return np.ascontiguousarray(y.reshape(len(y)), dtype=np.uint8)


def _numeric(a: np.ndarray, name: str, expected: str) -> None:
    if a.dtype.kind not in "iuf":
        raise DataError(f"{name} has dtype {a.dtype}; expected integer {expected} (uint8)")


def _whole_numbers_in(a: np.ndarray, lo: int, hi: Optional[int], name: str, what: str,
                      fraction_hint: str = "") -> None:
    """Values must be whole numbers in lo..hi (None: lo..K-1, any K), so the conversion to an
    integer type loses nothing."""
    if a.dtype == np.uint8 and (hi is None or hi >= 255):
        return  # every uint8 is a valid pixel, or class; skip the scan for the common case
    span = f"{lo}..{hi if hi is not None else 'K-1'}"
    if hi is None:
        hi = np.iinfo(np.int32).max
    if a.dtype.kind == "f":
        expected = f"expected whole-number {what} {span}"
        if not np.isfinite(a).all():
            raise DataError(f"{name} contains NaN or infinite values; {expected}")
        if not (a == np.round(a)).all():
            raise DataError(f"{name} has fractional values; {expected}{fraction_hint}")
    amin, amax = a.min(), a.max()
    if amin < lo or amax > hi:
        raise DataError(f"{name} has values {amin:g}..{amax:g}; expected {what} {span}")


# --------------------------------------------------------------------------------------------
# Parquet: read and written with pyarrow


def _read_parquet(root: str, layout: Layout = SEED_LAYOUT) -> dict[str, np.ndarray]:
    """Read a Parquet dataset with `train` and `test` parts, each with the layout's features and
    labels columns (`image` and `label` by default).

    pyarrow reads a local directory and any URI its filesystems know (s3://, gs://, hdfs://,
    file://) in file order and row order, which the holdout split relies on (it takes the LAST
    sixth).
    """
    fs, parts = _parquet_parts(root, layout)
    arrays = {}
    for split, location in parts.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_parquet_part(fs, location, f"{root}: {split}", layout)
    return _check(arrays, root, layout)


def _parquet_parts(root: str, layout: Layout = SEED_LAYOUT):
    """(filesystem, {split: path}) for `train/` or `train.parquet` and `test/` or `test.parquet`."""
    import pyarrow.fs as pafs

    try:
        if "://" in root:
            fs, base = pafs.FileSystem.from_uri(root)
        else:
            fs, base = pafs.LocalFileSystem(), str(Path(root).resolve())
        base = base.rstrip("/")
        parts = {}
        for split in ("train", "test"):
            for name in (split, f"{split}.parquet"):
                if fs.get_file_info(f"{base}/{name}").type in (pafs.FileType.Directory, pafs.FileType.File):
                    parts[split] = f"{base}/{name}"
                    break
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
        raise DataError(f"{root}: cannot open ({first_line(exc)})") from exc
    missing = [s for s in ("train", "test") if s not in parts]
    if missing:
        wanted = " and ".join(f"{s}/ or {s}.parquet" for s in missing)
        raise DataError(
            f"{root}: no {wanted}; a Parquet data source needs train and test parts "
            f"with columns {layout.features} and {layout.labels}"
        )
    return fs, parts


def _read_parquet_part(fs: pyarrow.fs.FileSystem, location: str, where: str,
                       layout: Layout = SEED_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.dataset as pads

    columns = [layout.features, layout.labels]
    try:
        dataset = pads.dataset(location, format="parquet", filesystem=fs)
        names = dataset.schema.names
        missing = [c for c in columns if c not in names]
        if missing:
            found = ", ".join(names) or "none"
            raise DataError(f"{where}: missing column {', '.join(missing)} (found {found}); expected "
                            f"{' and '.join(columns)} (name others with data.features and data.labels)")
        batches = [b for b in dataset.to_batches(columns=columns) if b.num_rows]
    except DataError:
        raise
    except Exception as exc:  # ArrowInvalid, OSError: one line, never a traceback
        raise DataError(f"{where}: cannot read as Parquet ({first_line(exc)})") from exc
    if not batches:
        return np.zeros((0, PIXELS), np.uint8), np.zeros((0,), np.uint8)
    # One numpy conversion per batch, then concatenate: this also tolerates files whose integer
    # types differ (int32 in one, int64 in another), which pyarrow would refuse to concatenate.
    # A model of your own takes rows of any one length: the first row's.
    width = None if layout.own else PIXELS
    xs = []
    for b in batches:
        xs.append(_image_column(b.column(layout.features), where, width, layout.features))
        width = xs[-1].shape[1]
    ys = [_label_column(b.column(layout.labels), where, layout.labels) for b in batches]
    return np.concatenate(xs), np.concatenate(ys)


def _image_column(column: pyarrow.ChunkedArray | pyarrow.Array, where: str, width: Optional[int] = PIXELS,
                  name: str = "image") -> np.ndarray:
    """A features column as (n, width): a list of `width` numbers per row, or `width` bytes per
    row (None: as many as the first row has)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise DataError(f"{where}: {name} column has {arr.null_count} missing values")
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = _check_row_lengths(lengths, where, "values", width, name)
        values = arr.flatten()
        if values.null_count:
            raise DataError(f"{where}: {name} column has {values.null_count} missing values inside its rows")
        return values.to_numpy(zero_copy_only=False).reshape(len(arr), width)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        rows = arr.to_pylist()
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = _check_row_lengths(lengths, where, "bytes", width, name)
        return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), width)
    if isinstance(t, pa.ExtensionType):  # e.g. Ray's own tensor type, if Ray wrote the files
        try:
            return np.asarray(arr.to_numpy(zero_copy_only=False))
        except Exception as exc:
            raise DataError(f"{where}: {name} column of type {t} is unreadable ({first_line(exc)})") from exc
    count = width if width is not None else "N"
    raise DataError(
        f"{where}: {name} column has type {t}; expected a list of {count} numbers or {count} bytes per row"
    )


def _check_row_lengths(lengths: np.ndarray, where: str, unit: str, width: Optional[int] = PIXELS,
                       name: str = "image") -> int:
    """Every row's length is `width` (None: the first row's); returns it."""
    if width is None:
        width = int(lengths[0]) if len(lengths) else 0
        needs = f"as many as row 0 ({width})"
    else:
        needs = f"{width} (28x28)" if width == PIXELS else str(width)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        row = bad[0]
        raise DataError(
            f"{where}: {name} row {row} has {lengths[row]} {unit}; every row needs {needs}"
        )
    return width


def _label_column(column: pyarrow.ChunkedArray | pyarrow.Array, where: str, name: str = "label") -> np.ndarray:
    if column.null_count:
        raise DataError(f"{where}: {name} column has {column.null_count} missing values")
    return column.to_numpy()


ArraysLike = Union[Splits, Mapping[str, np.ndarray]]


def export_parquet(splits_or_arrays: ArraysLike, directory: Union[str, os.PathLike]) -> Path:
    """Write data in the Parquet layout `load` reads: directory/train/ and directory/test/.

    Takes a `Splits` (a holdout split is stitched back together, so that loading the
    result with the same validation gives the same arrays) or a Keras-layout mapping with
    x_train, y_train, x_test, y_test. Each image is a list of 784 uint8 pixels; labels are uint8.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(splits_or_arrays, Splits):
        s = splits_or_arrays
        arrays = {"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test, "y_test": s.y_test}
        if s.validation == "holdout":
            arrays["x_train"] = np.concatenate([s.x_train, s.x_val])
            arrays["y_train"] = np.concatenate([s.y_train, s.y_val])
    else:
        missing = [k for k in KEYS if k not in splits_or_arrays]
        if missing:
            raise DataError(f"export_parquet: missing {', '.join(missing)}; needs {', '.join(KEYS)}")
        arrays = dict(splits_or_arrays)
    arrays = _check(arrays, "export_parquet")

    directory = Path(directory)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        offsets = np.arange(0, (len(x) + 1) * PIXELS, PIXELS, dtype=np.int32)
        images = pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.reshape(-1)))
        table = pa.table({"image": images, "label": pa.array(y)})
        part = directory / split
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, part / "part-00000.parquet")
    return directory


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """Which rows of each global batch every replica trains on (replica = rank: one per worker)."""

    global_batch: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, global_batch: int, workers: int) -> "BatchSplit":
        """As even as possible: the first `global_batch % workers` replicas take one row more
        (the rows `data.shard` gives each rank)."""
        rows = [shard(global_batch, workers, rank) for rank in range(workers)]
        return cls(global_batch, tuple(r.start for r in rows), tuple(r.stop - r.start for r in rows))

    @property
    def even(self) -> bool:
        return len(set(self.sizes)) == 1

    def loss_factors(self) -> tuple[float, ...]:
        """Per replica: Keras divides a replica's loss by its rows x the replicas and sums the
        replicas' gradients; times size x replicas / global batch, the sum is the global mean."""
        return tuple(size * len(self.sizes) / self.global_batch for size in self.sizes)
