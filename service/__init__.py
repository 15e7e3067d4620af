"""plateau: data-parallel Keras MNIST on Ray Train with globally synchronised
ReduceLROnPlateau and EarlyStopping."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plateau")  # the one place the version is written: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
