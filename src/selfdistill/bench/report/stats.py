"""Statistics over seeds: mean ± std, paired gains and their t-test, and the step-time ratio to the baseline."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable

from .runs import Cell, Run


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n−1); std is nan for one value."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else float("nan")


def fmt(mean: float, std: float, digits: int = 2, signed: bool = False) -> str:
    """``mean ± std`` (or ``mean`` when std is undefined, ``–`` when mean is); ``signed`` writes the mean's sign."""
    if math.isnan(mean):
        return "–"
    m = f"{mean:{'+' if signed else ''}.{digits}f}"
    return m if math.isnan(std) else f"{m} ± {std:.{digits}f}"


def fmt_gain(mean: float, std: float, n: int) -> str:
    """A paired gain: signed ``mean ± std (n=…)`` over ``n`` paired seeds, ``–`` without one."""
    return "–" if math.isnan(mean) else f"{fmt(mean, std, signed=True)} (n={n})"


def paired(cell: Cell, base: Cell, value: Callable[[Run], float]) -> tuple[list[float], list[float]]:
    """``value`` of ``cell``'s runs and of ``base``'s on the seeds both have (and both measured), in seed order."""
    a = {r.seed: value(r) for r in cell.runs}
    b = {r.seed: value(r) for r in base.runs}
    seeds = [s for s in sorted(set(a) & set(b)) if not (math.isnan(a[s]) or math.isnan(b[s]))]
    return [a[s] for s in seeds], [b[s] for s in seeds]


MIN_PAIRS_FOR_P = 3
"""Fewer pairs print no p-value: with two, the t-test has one degree of freedom and the report lists both
differences instead."""


def paired_p(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value of ``a`` against ``b`` (values of the same seeds, in the same order:
    ``scipy.stats.ttest_rel``); nan with fewer than :data:`MIN_PAIRS_FOR_P` pairs."""
    if len(a) < MIN_PAIRS_FOR_P:
        return math.nan
    from scipy import stats

    return float(stats.ttest_rel(a, b).pvalue)


def step_time(run: Run) -> float:
    """Seconds per training step of ``run`` (nan when its summary has no step count)."""
    return run.seconds_per_epoch / (run.summary.steps_per_epoch or math.nan)


def environment(run: Run) -> str:
    """The device name and platform a run recorded: runs of one environment compare their times."""
    env = run.summary.env
    return f"{env.get('device_name', '?')} · {env.get('platform', '?')}"


def step_ratio(cell: Cell, base: Cell) -> float:
    """Mean over the cell's runs of its time per step over the baseline's (mean over the baseline's runs of the same
    environment): a cost ratio that never divides one machine's time by another's. NaN when no run has one."""
    base_steps: dict[str, list[float]] = defaultdict(list)
    for run in base.runs:
        base_steps[environment(run)].append(step_time(run))
    ratios = [step_time(run) / statistics.fmean(base_steps[environment(run)])
              for run in cell.runs if environment(run) in base_steps]
    return statistics.fmean(ratios) if ratios else math.nan
