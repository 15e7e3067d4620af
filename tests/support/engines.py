"""Each engine as a test parameter, for tests that hold both to one guarantee.

keras_jax's cases skip where its extra is not installed (jax and keras 3.15 need Python 3.11+).

Example::

    @pytest.mark.parametrize("engine", ENGINES)
    def test_it(engine): ...
"""

from __future__ import annotations

import importlib.util

import pytest

NEEDS_JAX = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason='the jax extra is not installed: pip install -e ".[jax]" (Python 3.11+)')
ENGINES = ["tf_keras", pytest.param("keras_jax", marks=NEEDS_JAX)]
