"""Each epoch's decisions in words, read from the decision trace.

`plateau show NAME` prints one line per epoch, e.g.

    epoch 4: val_accuracy 0.9375 did not beat the best 0.9375 by min_delta 1e-4; wait 1 >= patience 1: lr 0.01 -> 0.001; early stopping: did not beat its best 0.9375; wait 1 < patience 2

The stock tf_keras callbacks decide; each decision record keeps what they decided and the state
they decided it with (decisions.jsonl, `sync.Decision`): the rank's own proposal (`proposed_lr`,
`stop_reason`), ReduceLROnPlateau's `plateau_best`, `plateau_wait` and `plateau_cooldown`, and
EarlyStopping's `stopping_best` and `stopping_wait`. The words read those records: the best
before an epoch is the one the record of the epoch before kept, an improvement is a best that
changed. No callback arithmetic is redone here.

A trace written before the records kept the deciders' best (an older plateau) still reads: its
lines give the values, the recorded waits and what happened, and say the rest was not recorded.

Where this rank's own decision differs from what the run did (a rank-local decision that
consensus spread), the line says what the trace recorded ("the trace says ...").

Example::

    for line in explain(spec, decisions):
        print(line)
"""

from __future__ import annotations

import math
from typing import Optional

from service.spec import EarlyStoppingSpec, ReduceLRSpec, TrainSpec
from service.stopreason import StopReason


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


NOT_RECORDED = "(best and cooldown not recorded: a trace of an older plateau)"


def _best(value: Optional[float], higher: bool) -> float:
    """A recorded best; none yet (inf in memory, null in a file) is the callback's starting one."""
    if value is None or math.isinf(value):
        return -math.inf if higher else math.inf
    return value


class ReduceLRWords:
    """What ReduceLROnPlateau did at each epoch, read from the records."""

    def __init__(self, cfg: ReduceLRSpec):
        self.cfg = cfg
        self.best = _best(None, cfg.higher_is_better)

    def step(self, d: dict) -> str:
        cfg, current = self.cfg, d["values"].get(self.cfg.monitor)
        if current is None:
            return f"{cfg.monitor} missing: ReduceLROnPlateau did nothing"
        reduced = d.get("proposed_lr", d["lr_after"]) < d["lr_before"]
        if "plateau_best" not in d:
            return self._unrecorded(d, current, reduced)
        best_before, self.best = self.best, _best(d["plateau_best"], cfg.higher_is_better)
        improved = self.best != best_before
        head = f"{cfg.monitor} {pair(current, best_before)[0]} {_compared(current, best_before, improved, cfg.min_delta)}"
        if improved:
            return f"{head}: new best, wait 0"
        if reduced:
            lr, new_lr = d["lr_before"], d.get("proposed_lr", d["lr_after"])
            words = f"{head}; wait reached patience {cfg.patience}: lr {short(lr)} -> {short(new_lr)}"
            if new_lr <= cfg.min_lr:
                words += " (min_lr)"
            return words + (f", cooldown {cfg.cooldown}" if cfg.cooldown else "")
        if d["plateau_cooldown"]:
            return f"{head}; in cooldown ({d['plateau_cooldown']} more epoch(s)): wait 0"
        wait = d["plateau_wait"]
        if wait < cfg.patience:
            return f"{head}; wait {wait} < patience {cfg.patience}"
        return f"{head}; wait {wait} >= patience {cfg.patience}, but lr {short(d['lr_before'])} is at min_lr"

    def _unrecorded(self, d: dict, current: float, reduced: bool) -> str:
        action = f"lr {short(d['lr_before'])} -> {short(d['lr_after'])}" if reduced else "lr unchanged"
        wait = "" if d.get("plateau_wait") is None else f"wait {d['plateau_wait']}, "
        return f"{self.cfg.monitor} {current:.4f}; {wait}{action} {NOT_RECORDED}"


class EarlyStoppingWords:
    """What EarlyStopping did at each epoch, read from the records."""

    def __init__(self, cfg: EarlyStoppingSpec, same_monitor_said: bool = False):
        self.cfg, self.same_monitor_said = cfg, same_monitor_said
        self.best = _best(None, cfg.higher_is_better)

    def step(self, d: dict) -> str:
        cfg = self.cfg
        current = d["values"].get(cfg.monitor)
        if current is None:
            return f"early stopping: {cfg.monitor} missing"
        if d["epoch"] - 1 < cfg.start_from_epoch:
            return f"early stopping: not watching before epoch {cfg.start_from_epoch + 1} (start_from_epoch)"
        stops = d.get("stop_reason") in (StopReason.PATIENCE, StopReason.BASELINE)
        wait = d.get("stopping_wait")
        if "stopping_best" not in d:
            said = f"; wait {wait}" if wait is not None else ""
            return f"early stopping: {cfg.monitor} {current:.4f}{said}" + (": stop" if stops else "") + \
                f" {NOT_RECORDED.replace(' and cooldown', '')}"
        best_before, self.best = self.best, _best(d["stopping_best"], cfg.higher_is_better)
        improved = self.best != best_before
        named = "" if self.same_monitor_said else f"{cfg.monitor} {pair(current, best_before)[0]} "
        head = f"early stopping: {named}{_compared(current, best_before, improved, cfg.min_delta, 'its')}"
        if improved:
            if wait == 0:
                return f"{head}: new best, wait 0"
            return f"{head}: new best, but not past the baseline {short(cfg.baseline)}: wait {wait}"
        if stops:
            return f"{head}; wait {wait} >= patience {cfg.patience}: stop"
        if wait < cfg.patience:
            return f"{head}; wait {wait} < patience {cfg.patience}"
        return f"{head}; wait {wait} >= patience {cfg.patience}, but never at the first epoch"


def explain(spec: TrainSpec, decisions: list[dict]) -> list[str]:
    """One line per epoch (rank 0's records), in epoch order."""
    rank0 = sorted((d for d in decisions if d.get("rank", 0) == 0), key=lambda d: d["epoch"])
    reduce = ReduceLRWords(spec.reduce_lr) if spec.reduce_lr is not None else None
    same = reduce is not None and spec.early_stopping is not None and spec.early_stopping.monitor == spec.reduce_lr.monitor
    stopper = EarlyStoppingWords(spec.early_stopping, same) if spec.early_stopping is not None else None
    lines = []
    for d in rank0:
        parts = [words.step(d) for words in (reduce, stopper) if words is not None]
        if not parts:
            parts.append(f"no callbacks; lr {short(d['lr_before'])}")
        parts += _against_trace(d)
        lines.append(f"epoch {d['epoch']}: " + "; ".join(parts))
    return lines


def _against_trace(d: dict) -> list[str]:
    """What the run did where this rank's own callbacks proposed otherwise (consensus)."""
    notes = []
    proposed = d.get("proposed_lr")
    if proposed is not None and d["lr_after"] != proposed:
        notes.append(f"the trace says lr {short(d['lr_before'])} -> {short(d['lr_after'])} (consensus)")
    if d.get("stop") and d.get("stop_reason") == StopReason.CONSENSUS:
        notes.append("the trace says stop (another rank's EarlyStopping, by consensus)")
    return notes
