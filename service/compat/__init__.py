"""Every touch of a private part of a library, one module per library (`ray.py`, `tensorflow.py`,
`keras.py`, `mlflow.py`): what a version bump has to re-check. Each module's docstring lists its
touches and why; tests/test_compat.py fails when an upgrade removes or renames one of them.
"""
