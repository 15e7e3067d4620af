"""Each epoch's decisions in words, recomputed from the decision trace and the spec.

`plateau show NAME` prints one line per epoch, e.g.

    epoch 4: val_accuracy 0.9375 did not beat the best 0.9375 by min_delta 1e-4; wait 1 >= patience 1: lr 0.01 -> 0.001; early stopping: did not beat its best 0.9375; wait 1 < patience 2

The words come from replaying the spec's callbacks over the recorded global metrics with the
arithmetic of tf_keras 2.21's own `ReduceLROnPlateau.on_epoch_end` and
`EarlyStopping.on_epoch_end` (pure Python: no TensorFlow):

* ReduceLROnPlateau: `mode: auto` maximises a monitor whose name contains "acc"; an improvement
  is `current > best + min_delta` (max) or `current < best - min_delta` (min). A cooldown epoch
  counts the cooldown down and resets wait first; then an improvement sets the best and wait 0;
  otherwise, out of cooldown, wait += 1, and at wait >= patience the rate is multiplied by factor
  (not below min_lr) if it is above min_lr (as float32), wait resets and the cooldown starts.
* EarlyStopping: `mode: auto` maximises a monitor ending in acc/accuracy/auc; an improvement is
  `current - min_delta > best` (max) or `current + min_delta < best` (min). Epochs before
  start_from_epoch are skipped; wait += 1 first, an improvement sets the best and resets wait
  (only if it also beats `baseline`, when one is set), and otherwise wait >= patience stops,
  never at the first epoch.

The replay's learning rates, stops and wait counters are checked against the trace; where they
differ (a rank took a rank-local decision that consensus spread), the line says what the trace
recorded ("the trace says ...").

Example::

    for line in explain(spec, decisions):
        print(line)
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from service.spec import EarlyStoppingSpec, ReduceLRSpec, TrainSpec


def short(x: float) -> str:
    """0.01, 0.001, 1e-4, 2.5e-6: a number as a person writes it."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1e-3:
        return f"{x:g}"
    mantissa, exponent = f"{x:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def pair(a: float, b: float) -> tuple[str, str]:
    """Both numbers with 4 decimals, or more until unequal numbers read differently."""
    digits = 4
    while digits < 12 and a != b and f"{a:.{digits}f}" == f"{b:.{digits}f}":
        digits += 1
    return f"{a:.{digits}f}", f"{b:.{digits}f}"


def _compared(current: float, best: float, improved: bool, min_delta: float, whose: str = "the") -> str:
    """'beat the best 0.9270 by more than min_delta 1e-4' / 'did not beat the best 0.9375'."""
    if math.isinf(best):
        return "is the first value"
    cur, ref = pair(current, best)
    delta = f" by more than min_delta {short(min_delta)}" if improved else f" by min_delta {short(min_delta)}"
    verb = "beat" if improved else "did not beat"
    return f"{verb} {whose} best {ref}{delta if min_delta else ''}"


class ReduceLRWords:
    """tf_keras ReduceLROnPlateau's state machine, saying what it did."""

    def __init__(self, cfg: ReduceLRSpec):
        self.cfg = cfg
        self.maximize = cfg.mode == "max" or (cfg.mode == "auto" and "acc" in cfg.monitor)
        self.best = -math.inf if self.maximize else math.inf
        self.wait = self.cooldown_counter = 0

    def _better(self, current: float) -> bool:
        if self.maximize:
            return current > self.best + self.cfg.min_delta
        return current < self.best - self.cfg.min_delta

    def step(self, d: dict) -> tuple[str, Optional[float]]:
        """Words for one epoch and the learning rate the replay sets (None: unchanged)."""
        cfg, current = self.cfg, d["values"].get(self.cfg.monitor)
        if current is None:
            return f"{cfg.monitor} missing: ReduceLROnPlateau did nothing", None
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        improved = self._better(current)
        head = f"{cfg.monitor} {pair(current, self.best)[0]} {_compared(current, self.best, improved, cfg.min_delta)}"
        if improved:
            self.best, self.wait = current, 0
            return f"{head}: new best, wait 0", None
        if self.cooldown_counter > 0:
            return f"{head}; in cooldown ({self.cooldown_counter} more epoch(s)): wait 0", None
        self.wait += 1
        if self.wait < cfg.patience:
            return f"{head}; wait {self.wait} < patience {cfg.patience}", None
        lr = d["lr_before"]
        if not np.float32(lr) > np.float32(cfg.min_lr):
            return f"{head}; wait {self.wait} >= patience {cfg.patience}, but lr {short(lr)} is at min_lr", None
        new_lr = max(float(np.float32(lr) * cfg.factor), cfg.min_lr)
        words = f"{head}; wait {self.wait} >= patience {cfg.patience}: lr {short(lr)} -> {short(d['lr_after'])}"
        if new_lr <= cfg.min_lr:
            words += " (min_lr)"
        if cfg.cooldown:
            words += f", cooldown {cfg.cooldown}"
        self.wait, self.cooldown_counter = 0, cfg.cooldown
        return words, new_lr


class EarlyStoppingWords:
    """tf_keras EarlyStopping's state machine, saying what it did."""

    def __init__(self, cfg: EarlyStoppingSpec, same_monitor_said: bool = False):
        self.cfg, self.same_monitor_said = cfg, same_monitor_said
        self.maximize = cfg.mode == "max" or (cfg.mode == "auto" and cfg.monitor.endswith(("acc", "accuracy", "auc")))
        self.min_delta = abs(cfg.min_delta) * (1 if self.maximize else -1)
        self.best = -math.inf if self.maximize else math.inf
        self.wait = 0

    def _improves(self, value: float, reference: float) -> bool:
        shifted = value - self.min_delta
        return shifted > reference if self.maximize else shifted < reference

    def step(self, d: dict) -> tuple[str, bool]:
        """Words for one epoch and whether the replay stops here."""
        cfg, epoch0 = self.cfg, d["epoch"] - 1
        current = d["values"].get(cfg.monitor)
        if current is None:
            return f"early stopping: {cfg.monitor} missing", False
        if epoch0 < cfg.start_from_epoch:
            return f"early stopping: not watching before epoch {cfg.start_from_epoch + 1} (start_from_epoch)", False
        self.wait += 1
        improved = self._improves(current, self.best)
        named = "" if self.same_monitor_said else f"{cfg.monitor} {pair(current, self.best)[0]} "
        head = f"early stopping: {named}{_compared(current, self.best, improved, cfg.min_delta, 'its')}"
        if improved:
            self.best = current
            if cfg.baseline is None or self._improves(current, cfg.baseline):
                self.wait = 0
                return f"{head}: new best, wait 0", False
            return f"{head}: new best, but not past the baseline {short(cfg.baseline)}: wait {self.wait}", False
        if self.wait >= cfg.patience and epoch0 > 0:
            return f"{head}; wait {self.wait} >= patience {cfg.patience}: stop", True
        return f"{head}; wait {self.wait} < patience {cfg.patience}" if self.wait < cfg.patience else \
            f"{head}; wait {self.wait} >= patience {cfg.patience}, but never at the first epoch", False


def explain(spec: TrainSpec, decisions: list[dict]) -> list[str]:
    """One line per epoch (rank 0's records), in epoch order."""
    rank0 = sorted((d for d in decisions if d.get("rank", 0) == 0), key=lambda d: d["epoch"])
    reduce = ReduceLRWords(spec.reduce_lr) if spec.reduce_lr is not None else None
    same = reduce is not None and spec.early_stopping is not None and spec.early_stopping.monitor == spec.reduce_lr.monitor
    stopper = EarlyStoppingWords(spec.early_stopping, same) if spec.early_stopping is not None else None
    lines = []
    for d in rank0:
        parts, new_lr, stops = [], None, False
        if reduce is not None:
            words, new_lr = reduce.step(d)
            parts.append(words)
        if stopper is not None:
            words, stops = stopper.step(d)
            parts.append(words)
        if not parts:
            parts.append(f"no callbacks; lr {short(d['lr_before'])}")
        parts += _against_trace(d, new_lr, stops)
        parts += [f"the trace says {key} {d[key]}" for key, replay in (("plateau_wait", reduce), ("stopping_wait", stopper))
                  if replay is not None and d.get(key) is not None and d[key] != replay.wait]
        lines.append(f"epoch {d['epoch']}: " + "; ".join(parts))
    return lines


def _against_trace(d: dict, new_lr: Optional[float], stops: bool) -> list[str]:
    """What the trace recorded where the replay of this rank's callbacks differs (consensus)."""
    notes = []
    if bool(d.get("reduced")) != (new_lr is not None):
        notes.append(f"the trace says lr {short(d['lr_before'])} -> {short(d['lr_after'])} (consensus)")
    if bool(d.get("stop")) != stops:
        notes.append("the trace says stop (another rank's EarlyStopping, by consensus)" if d.get("stop")
                     else "the trace says the run went on")
    return notes
