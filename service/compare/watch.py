"""What a study says while it runs (pure: the Tune callback in `trials` only forwards events).

* a line per trial epoch: `[3/6] reduce_lr=on  seed 7  epoch 4/30  val_accuracy 0.9375  lr 0.01 -> 0.001`
  (k/N: the trial's place in the study, the monitored metric, the learning rate and what the
  callbacks did with it);
* with `quiet_trials`, instead, a status line at most every `STATUS_EVERY_S` seconds:
  `study: 2/6 trials done, 1 running (reduce_lr=on seed 9 epoch 4/30), elapsed 5m12s, eta 9m40s`;
* a line per finished trial (`tables.live_line`) followed by the study's progress and ETA
  (`progress.StudyPace`: finished trials' mean wall time, spread over the concurrency).

Example::

    watch = StudyWatch(trials, pace=StudyPace(len(trials), 1), quiet_trials=False)
    watch.epoch(trials[0].name, {"epoch": 1, "val_accuracy": 0.9, "lr": 0.01, "lr_after": 0.01})
"""

from __future__ import annotations

import time
from typing import Optional

from service.grid import Trial
from service.compare.tables import TrialOutcome, live_line
from service.progress import Clock, StudyPace

STATUS_EVERY_S = 10.0


class StudyWatch:
    def __init__(self, trials: list[Trial], pace: StudyPace, quiet_trials: bool = False,
                 clock: Clock = time.monotonic):
        self.by_name = {t.name: t for t in trials}
        self.index = {t.name: i for i, t in enumerate(trials, 1)}
        self.pace, self.quiet_trials, self.clock = pace, quiet_trials, clock
        self.latest: dict[str, dict] = {}   # running trial -> its last epoch's metrics
        self.outcomes: dict[str, TrialOutcome] = {}   # trials that ended (reused ones too) -> outcome
        self._said: Optional[float] = None

    def _head(self, name: str) -> str:
        trial = self.by_name[name]
        total = len(self.by_name)
        return f"[{self.index[name]:>{len(str(total))}}/{total}] {trial.setting.label}  seed {trial.seed}"

    def started(self, name: str) -> None:
        if name in self.by_name:
            self.pace.start(name)

    def epoch(self, name: str, metrics: dict) -> Optional[str]:
        """The line for one trial epoch (None with quiet_trials, or for a result that is not one)."""
        if name not in self.by_name or "epoch" not in metrics or "status" in metrics:
            return None
        self.pace.start(name)
        self.latest[name] = metrics
        if self.quiet_trials:
            return self.status()
        return f"{self._head(name)}  {epoch_words(self.by_name[name], metrics)}"

    def finished(self, name: str, outcome: TrialOutcome) -> Optional[str]:
        """The line for a finished trial, with the study's progress."""
        if name not in self.by_name:
            return None
        self.outcomes[name] = outcome
        self.pace.finish(name, reused=outcome.reused)
        self.latest.pop(name, None)
        k, total = self.index[name], len(self.by_name)
        return f"{live_line(k, total, self.by_name[name], outcome)}  | study: {self.pace.line()}"

    def status(self, force: bool = False) -> Optional[str]:
        """With quiet_trials: the status line, when STATUS_EVERY_S passed since the last one."""
        if not self.quiet_trials:
            return None
        now = self.clock()
        if not force and self._said is not None and now - self._said < STATUS_EVERY_S:
            return None
        self._said = now
        running = [f"{self.by_name[n].setting.label} seed {self.by_name[n].seed} epoch {m['epoch']}/"
                   f"{self.by_name[n].spec.training.epochs}" for n, m in self.latest.items()]
        line = f"study: {self.pace.line()}"
        return f"{line} ({'; '.join(running)})" if running else line


def epoch_words(trial: Trial, metrics: dict) -> str:
    """`epoch 4/30  val_accuracy 0.9375  lr 0.01 -> 0.001  early stop` for one trial epoch."""
    monitor = trial.spec.monitor or "val_accuracy"
    parts = [f"epoch {metrics['epoch']}/{trial.spec.training.epochs}"]
    if metrics.get(monitor) is not None:
        parts.append(f"{monitor} {metrics[monitor]:.4f}")
    lr, after = metrics.get("lr"), metrics.get("lr_after")
    if lr is not None:
        parts.append(f"lr {lr:.3g}" + (f" -> {after:.3g}" if after is not None and after < lr else ""))
    if metrics.get("stop"):
        parts.append("early stop")
    return "  ".join(parts)
