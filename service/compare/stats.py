"""Paired statistics for `plateau compare`: each setting against the baseline, seed by seed.

This module owns the numbers that say whether a setting really differs from the baseline
(the grid's first setting). It only does arithmetic: no Ray, no TensorFlow, no files. Its
inputs are two mappings seed -> test accuracy; the seeds both arms finished are paired, and
every statistic is computed on the paired differences d = setting - baseline:

- ``diff_mean`` / ``diff_sd``: the mean and the sample standard deviation (n - 1) of d;
- ``diff_ci_low`` / ``diff_ci_high``: a percentile bootstrap confidence interval of the mean
  of d (95% by default), from ``DEFAULT_RESAMPLES`` resamples drawn by
  ``numpy.random.default_rng(seed)`` with a fixed default seed, so the same study always gives
  the same interval. Undefined (None) for one pair; the value itself when every d is equal;
- ``p_sign``: the exact two-sided sign test (binomial, zero differences dropped);
- ``p_wilcoxon``: the exact two-sided Wilcoxon signed-rank test (zero differences dropped,
  tied |d| get their average rank, and the null distribution is the exact one over all 2^n
  sign assignments of those ranks; without ties it equals scipy's
  ``wilcoxon(d, zero_method="wilcox", method="exact")``);
- ``p_value``: the one the table shows, which is ``p_wilcoxon``. Both tests have the same
  smallest possible p, so with few seeds neither is better. With more seeds the Wilcoxon test
  does better because it also looks at how big each difference is. A single seed that goes
  slightly the other way costs it little, but the sign test counts it as much as a large one
  (5 of 6 positive with the negative one the smallest: Wilcoxon 0.0625, sign test 0.219).
  The Wilcoxon test assumes the differences are symmetric about their median under the null,
  which is reasonable for seed-to-seed noise. The sign test makes no such assumption and is
  kept as ``p_sign`` to check against;
- ``seeds_needed``: how many paired seeds a paired t-test needs to detect the observed mean
  difference at two-sided alpha = 0.05 with power 0.80, given the observed sd. This is the
  issue's "95% / 80% power". See `seeds_needed`.

Few seeds can never reach p < 0.05. With n non-zero differences the smallest two-sided p of
both exact tests is 2 / 2^n: 0.25 for 3 seeds, 0.125 for 4, 0.0625 for 5, and 0.03125 for 6.
So an exact test needs at least 6 seeds before it can resolve anything at 0.05
(`min_seeds_for_exact`). `seeds_needed` does not include that floor. The bootstrap interval
has no such floor, and `PairedComparison.resolved` (the interval excludes zero) uses it. Keep
in mind that a percentile bootstrap over very few seeds is too narrow. Three seeds give only 10
distinct resample means, so the interval covers the true difference less often than 95%. A
rule that stops adding seeds once the interval is resolved should wait for a minimum number
of seeds first.

Accuracies are fractions of a finite test set. Differences are rounded to ``DECIMALS`` (12)
decimal places so that float noise does not hide ties or zeros: 0.9812 - 0.9700 and
0.9824 - 0.9712 should count as the same difference, and in floats they are not.

Example::

    base = {7: 0.9712, 8: 0.9695, 9: 0.9724}
    lr = {7: 0.9802, 8: 0.9788, 9: 0.9820}     # d = 0.0090, 0.0093, 0.0096
    c = paired(lr, base)
    c.n_seeds, c.diff_mean, c.diff_sd         # 3, 0.0093, 0.0003
    c.diff_ci_low, c.diff_ci_high             # 0.009, 0.0096
    c.resolved()                              # True: the interval lies above zero
    c.p_value                                 # 0.25: the smallest any exact test gives with 3 seeds
    c.seeds_needed                            # 2: a paired t-test would already resolve it
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Sequence

import numpy as np

DEFAULT_SEED = 0            # the bootstrap's seed: a fixed one, so a study's interval is stable
DEFAULT_RESAMPLES = 10_000  # bootstrap resamples: the 2.5% / 97.5% quantiles vary by ~1% of the width
ALPHA = 0.05                # two-sided significance level (and 1 - the interval's level)
POWER = 0.80                # the power `seeds_needed` aims for
DECIMALS = 12               # differences are rounded to this many decimals (ties, zeros; see above)
T_EXACT_MAX_DF = 1000       # above this the t quantile comes from a series in the normal one

_NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class PairedComparison:
    """One setting against the baseline over the seeds both finished (see the module docstring).

    Every field but ``n_seeds`` is None when it is undefined: all of them for no pairs;
    ``diff_sd``, the interval and ``seeds_needed`` for one pair; ``seeds_needed`` when the mean
    difference is 0. The p-values are 1.0 when every difference is zero.
    """

    n_seeds: int
    diff_mean: Optional[float]
    diff_sd: Optional[float]
    diff_ci_low: Optional[float]
    diff_ci_high: Optional[float]
    p_value: Optional[float]      # = p_wilcoxon, the exact Wilcoxon signed-rank test
    p_sign: Optional[float]
    p_wilcoxon: Optional[float]
    seeds_needed: Optional[int]

    def resolved(self) -> bool:
        """Whether the confidence interval excludes zero (the sign of the difference is known)."""
        if self.diff_ci_low is None or self.diff_ci_high is None:
            return False
        return self.diff_ci_low > 0 or self.diff_ci_high < 0


def paired(setting: Mapping[int, Optional[float]], baseline: Mapping[int, Optional[float]], *,
           seed: int = DEFAULT_SEED, resamples: int = DEFAULT_RESAMPLES, alpha: float = ALPHA,
           power: float = POWER) -> PairedComparison:
    """Compare `setting` with `baseline` (each seed -> test accuracy) over their common seeds.

    Seeds missing from either side, or whose value is None or NaN, are left out. The interval's
    level is 1 - alpha, so `resolved()` and `seeds_needed` use the same alpha.
    """
    diffs = differences(setting, baseline)
    n = len(diffs)
    if n == 0:
        return PairedComparison(0, None, None, None, None, None, None, None, None)
    mean = round(math.fsum(diffs) / n, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    sd = round(statistics.stdev(diffs), DECIMALS) if n >= 2 else None
    ci = bootstrap_ci(diffs, level=1 - alpha, resamples=resamples, seed=seed)
    p_wilcoxon = wilcoxon_exact_p(diffs)
    return PairedComparison(
        n_seeds=n, diff_mean=mean, diff_sd=sd,
        diff_ci_low=ci[0] if ci else None, diff_ci_high=ci[1] if ci else None,
        p_value=p_wilcoxon, p_sign=sign_test_p(diffs), p_wilcoxon=p_wilcoxon,
        seeds_needed=seeds_needed(mean, sd, alpha=alpha, power=power),
    )


def differences(setting: Mapping[int, Optional[float]],
                baseline: Mapping[int, Optional[float]]) -> list[float]:
    """setting[s] - baseline[s] for each seed s both have a number for, in seed order.

    Seed order matters: the bootstrap resamples by position, so a fixed order is what makes
    the interval the same however the mappings were built.
    """
    def usable(value: Optional[float]) -> bool:
        return value is not None and math.isfinite(value)

    seeds = sorted(s for s in setting.keys() & baseline.keys()
                   if usable(setting[s]) and usable(baseline[s]))
    return [round(float(setting[s]) - float(baseline[s]), DECIMALS) + 0.0 for s in seeds]


# ---------------------------------------------------------------------------------------------
# Exact tests


def _nonzero(diffs: Sequence[float]) -> list[float]:
    """The differences rounded to DECIMALS, zeros dropped (both exact tests discard them)."""
    rounded = (round(float(d), DECIMALS) for d in diffs)
    return [d for d in rounded if d != 0]


def _two_sided(counts: Sequence[int], observed: int) -> float:
    """Two-sided p of `observed` under a symmetric null given as counts per statistic value.

    With a symmetric null, twice the smaller tail is the usual exact two-sided p (scipy's too),
    capped at 1 because the two tails overlap when the observation is the centre.
    """
    total = sum(counts)
    lower, upper = sum(counts[:observed + 1]), sum(counts[observed:])
    return min(1.0, 2 * min(lower, upper) / total)


def sign_test_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test: under the null each non-zero difference is positive w.p. 1/2.

    Zeros are dropped; 1.0 when no difference is non-zero. 3 of 3 positive -> 2 * 1/8 = 0.25.
    """
    d = _nonzero(diffs)
    positives = sum(1 for x in d if x > 0)
    return _two_sided([math.comb(len(d), k) for k in range(len(d) + 1)], positives)


def _doubled_average_ranks(magnitudes: Sequence[float]) -> list[int]:
    """Twice the average rank of each value (ties share the mean of their ranks), in input order.

    Doubling keeps the ranks whole numbers (ranks 2 and 3 tied -> 2.5 each -> 5), so that the
    null distribution can be counted exactly over integer rank sums.
    """
    order = sorted(range(len(magnitudes)), key=lambda i: magnitudes[i])
    doubled = [0] * len(magnitudes)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and magnitudes[order[end + 1]] == magnitudes[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            doubled[i] = (start + 1) + (end + 1)  # first rank + last rank = 2 * average rank
        start = end + 1
    return doubled


def _sign_flip_counts(weights: Sequence[int]) -> list[int]:
    """counts[s] = how many of the 2^n sign assignments give the positive weights the sum s.

    Counting subset sums one weight at a time gives the same numbers as enumerating all 2^n
    assignments, exactly (Python ints), in O(n * sum) steps instead of O(2^n).
    """
    counts = [1] + [0] * sum(weights)
    for w in weights:
        counts = [c + shifted for c, shifted in zip(counts, [0] * w + counts[:-w])]
    return counts


def wilcoxon_exact_p(diffs: Sequence[float]) -> float:
    """Exact two-sided Wilcoxon signed-rank p-value of the differences against a zero median.

    Zeros are dropped ("wilcox"); tied |d| get their average rank. The null distribution of
    T+ (the sum of the ranks of the positive differences) is the exact one over all 2^n sign
    assignments of those ranks, so ties are handled exactly too. 1.0 when no difference is
    non-zero. n = 5, all positive -> 2 * 1/32 = 0.0625.
    """
    d = _nonzero(diffs)
    ranks = _doubled_average_ranks([abs(x) for x in d])
    t_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    return _two_sided(_sign_flip_counts(ranks), t_plus)


def min_seeds_for_exact(alpha: float = ALPHA) -> int:
    """The fewest non-zero pairs with which the exact tests can reach p <= alpha (6 for 0.05).

    Both tests give their smallest two-sided p, 2 / 2^n, when every difference has the same sign.
    """
    _check_probability("alpha", alpha)
    n = 1
    while 2.0 ** (1 - n) > alpha:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Bootstrap interval


def bootstrap_ci(diffs: Sequence[float], *, level: float = 1 - ALPHA,
                 resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> Optional[tuple[float, float]]:
    """Percentile bootstrap interval of the mean of `diffs`: (low, high), or None for n < 2.

    Each resample draws n positions with replacement using one
    ``default_rng(seed).integers(0, n, size=(resamples, n))`` call. The bounds are numpy's
    default (linear) quantiles at (1 - level) / 2 and (1 + level) / 2 of the resampled means.
    When every difference is equal the interval is that value. One pair has no spread to
    resample, so its interval is None.
    """
    _check_probability("level", level)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return None
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])  # skip the resampling: float means could drift by an ulp
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# Seeds needed


def seeds_needed(mean: Optional[float], sd: Optional[float], *, alpha: float = ALPHA,
                 power: float = POWER, method: Literal["t", "normal"] = "t") -> Optional[int]:
    """Paired seeds needed to detect a mean difference `mean` with sd `sd` (two-sided alpha, power).

    "normal": n = ((z_{1-alpha/2} + z_power) * sd / |mean|)^2, rounded up. For mean = sd
    that is (1.95996 + 0.84162)^2 = 7.85, so 8.
    "t" (the default): the smallest n >= the normal n with
    n >= ((t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / |mean|)^2. This is the normal formula
    with Student t quantiles for the sd estimated from n pairs. It is more honest at the few
    seeds a study can afford: for mean = sd it gives 10, which is the exact paired t-test answer.
    Both methods return at least 2, because an sd needs two pairs. The result is None when
    mean or sd is None, mean is 0, or the answer does not fit in a float. It does not include
    the 6-seed floor of the exact tests (`min_seeds_for_exact`).
    """
    _check_probability("alpha", alpha)
    _check_probability("power", power)
    if mean is None or sd is None or mean == 0 or not math.isfinite(mean) or not math.isfinite(sd):
        return None
    if sd < 0:
        raise ValueError(f"sd must not be negative, got {sd}")
    ratio = (sd / abs(mean)) * (sd / abs(mean))  # float ** overflows with an error, * gives inf
    z_sum = _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)
    if not math.isfinite(z_sum ** 2 * ratio):
        return None
    n = max(2, math.ceil(z_sum ** 2 * ratio))
    if method == "normal":
        return n
    if method != "t":
        raise ValueError(f"method must be 't' or 'normal', got {method!r}")
    # t quantiles exceed the normal ones and shrink towards them as n grows, so counting up from
    # the normal answer finds the smallest n that satisfies the inequality, in a few steps.
    while (_t_quantile(1 - alpha / 2, n - 1) + _t_quantile(power, n - 1)) ** 2 * ratio > n:
        n += 1
    return n


def _t_cdf_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with integer df, in closed form (Abramowitz & Stegun 26.7.3)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        # (2/pi) * (theta + sin * (cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(df-2)))
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total)
    # sin * (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ... up to cos^(df-2))
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


def _t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer df >= 1: the closed form inverted by bisection.

    Above T_EXACT_MAX_DF the closed form's df/2 terms get slow. There the Cornish-Fisher series
    in the normal quantile (A&S 26.7.5, three terms) is used; at that df its error is below 1e-10
    for p up to 0.9995.
    """
    if p < 0.5:
        return -_t_quantile(1 - p, df)
    z = _NORMAL.inv_cdf(p)
    if df > T_EXACT_MAX_DF:
        return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
                + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))
    target = 2 * p - 1
    lo, hi = 0.0, max(1.0, z)
    while _t_cdf_central(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_central(mid, df) < target else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2


def _check_probability(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
