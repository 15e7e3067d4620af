"""Build the small MNIST sample that ships inside the package.

Usage::

    python scripts/make_sample.py SRC.npz [--out service/sample/mnist-sample.npz]

SRC is any Keras-layout mnist.npz (keys x_train, y_train, x_test, y_test). The sample keeps
the FIRST 10,000 training images/labels and the FIRST 2,000 test images/labels, with the same
keys, dtypes and shapes, so `service.data` can read it exactly like the full file.

Why the first ones and not a random draw: the result is reproducible from the source alone,
with no seed to remember, and MNIST's order is already mixed across digits.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

N_TRAIN = 10_000
N_TEST = 2_000
KEYS = ("x_train", "y_train", "x_test", "y_test")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "service" / "sample" / "mnist-sample.npz"


def make_sample(src: Path) -> dict[str, np.ndarray]:
    """Return the sample arrays cut from the Keras-layout file at `src`."""
    with np.load(src, allow_pickle=False) as f:
        missing = [k for k in KEYS if k not in f.files]
        if missing:
            raise SystemExit(f"{src}: missing keys {', '.join(missing)} (expected {', '.join(KEYS)})")
        arrays = {k: np.asarray(f[k]) for k in KEYS}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        if len(arrays[f"x_{split}"]) < n or len(arrays[f"y_{split}"]) < n:
            raise SystemExit(f"{src}: need at least {n} {split} images for the sample")
        arrays[f"x_{split}"] = np.ascontiguousarray(arrays[f"x_{split}"][:n])
        arrays[f"y_{split}"] = np.ascontiguousarray(arrays[f"y_{split}"][:n])
    return arrays


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> None:
    """Write `arrays` like np.savez_compressed, but byte-identical on every run.

    np.savez_compressed stamps each zip member with the current time, so two runs differ in a
    few bytes. Writing the members ourselves with a fixed timestamp keeps the committed file
    stable; np.load reads it exactly like a savez_compressed file.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in KEYS:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arrays[key], allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a Keras-layout mnist.npz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the sample")
    args = parser.parse_args(argv)
    if not args.src.is_file():
        parser.error(f"{args.src}: no such file")
    arrays = make_sample(args.src)
    write_npz(arrays, args.out)
    shapes = ", ".join(f"{k} {arrays[k].shape} {arrays[k].dtype}" for k in KEYS)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
