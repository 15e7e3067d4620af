"""plateau: data-parallel Keras MNIST on Ray Train with globally synchronised
ReduceLROnPlateau and EarlyStopping."""

__version__ = "0.1.0"
