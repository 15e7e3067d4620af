"""What plateau relies on in MLflow beyond its documented calls, and why. MLflow has no private
name touched; these are its settings by name and behaviours a version bump could change.
MLflow is never imported here.

* The environment variables a driver sets, unless the user did (`DRIVER_SETTINGS`, applied by
  `driver_settings`, put back after a command by `settings_restored`): no HTTP retries and a 10 s request timeout (a tracking store that does not
  answer costs seconds, not minutes), a folder store allowed (MLflow 3 refuses `./mlruns` unless
  told), no telemetry. Each is one of `mlflow.environment_variables`; a renamed one would be
  silently ignored.
* `MlflowException.error_code == "RESOURCE_DOES_NOT_EXIST"` (`NOT_FOUND`): the run a resume
  continues is gone, so a new run is started (`tracking.py`).
* `mlflow.set_tracking_uri` also exports `MLFLOW_TRACKING_URI` (`TRACKING_URI_VAR`) for MLflow's
  subprocesses: `tracking.py` puts the variable back after logging the model.

Example::

    with settings_restored():   # a command
        driver_settings()       # before its first MlflowClient
"""

from __future__ import annotations

import os
from typing import ContextManager

from service.envvars import restored

# How long the driver's client waits on a tracking server: once, briefly. MLflow's defaults
# (7 retries with exponential backoff, 120 s timeouts) would stall a run for minutes on a dead server.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
DRIVER_SETTINGS = {**HTTP_SETTINGS, "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
TRACKING_URI_VAR = "MLFLOW_TRACKING_URI"


def driver_settings() -> None:
    """Set `DRIVER_SETTINGS` in this process's environment; a user's own setting wins."""
    for name, value in DRIVER_SETTINGS.items():
        os.environ.setdefault(name, value)


def settings_restored() -> ContextManager[None]:
    """The variables `driver_settings` sets, as they were before the block, after it."""
    return restored(*DRIVER_SETTINGS)
