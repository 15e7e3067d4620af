"""Write a generated, learnable data set for features.yaml: 3 classes of 20 float features.

Each class is a cloud of points around its own centre; the clouds overlap a little, so a small
network learns them to high but not perfect accuracy. The file is in the Keras layout plateau
reads (x_train, y_train, x_test, y_test).

    python examples/make_data.py                 # writes examples/features.npz
    python examples/make_data.py OTHER.npz       # or where you say
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CLASSES, FEATURES, TRAIN, TEST, SEED = 3, 20, 3000, 600, 0
DEFAULT = Path(__file__).resolve().parent / "features.npz"


def make(rows: int, centres: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`rows` points: a class drawn at random, its centre, unit noise on every feature."""
    y = rng.integers(0, len(centres), size=rows)
    x = centres[y] + rng.normal(size=(rows, centres.shape[1]))
    return x.astype(np.float32), y.astype(np.int64)


def write(path: Path = DEFAULT) -> Path:
    """Write the data set to `path` (the same file every time: the generator is seeded)."""
    rng = np.random.default_rng(SEED)
    centres = rng.normal(scale=0.6, size=(CLASSES, FEATURES))
    x_train, y_train = make(TRAIN, centres, rng)
    x_test, y_test = make(TEST, centres, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
