"""What a train run leaves behind and prints, one module per kind of output:

* `files`    history.csv, decisions.jsonl, summary.json and spec.yaml as files (written whole);
* `summary`  summary.json's object, from the history and the decision records;
* `lines`    the lines a run prints (its start, each epoch, its workers, its end);
* `plots`    curves.png, and any figure written as a PNG.

The worker side's per-epoch reports are `service.core.reporting`, not this package.
"""
