"""Stock Keras 3 ReduceLROnPlateau and EarlyStopping fed one metric sequence (tests/support/keras3.py).

    python -m tests.support.programs.keras3_replay SPEC_JSON SEQUENCE_JSON
    -> @@{"rows": [{epoch, lr, stop, plateau_wait, stopping_wait}, ...], "best_epoch": ...}
"""

from __future__ import annotations

import json
import os
import sys


def main(spec_json: str, sequence_json: str) -> None:
    os.environ["KERAS_BACKEND"] = "jax"  # before Keras 3 is first imported
    from service.spec import TrainSpec
    from tests.support.keras3 import stock_trace
    from tests.support.project import say_json

    rows, best_epoch = stock_trace(TrainSpec.model_validate_json(spec_json), json.loads(sequence_json))
    say_json({"rows": rows, "best_epoch": best_epoch})


if __name__ == "__main__":
    main(*sys.argv[1:3])
