"""Statistics over seeds: mean ± std, paired gains and their tests, and the step-time ratio to the baseline."""

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


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided Welch t-test p-value (nan with fewer than two values per side)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_gain(cell: Cell, base: Cell, value: Callable[[Run], float]) -> tuple[float, float, int]:
    """Mean ± std of per-seed differences ``cell − base`` of ``value`` over the seeds both have."""
    a = {r.seed: value(r) for r in cell.runs}
    b = {r.seed: value(r) for r in base.runs}
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    m, s = mean_std(diffs)
    return m, s, len(diffs)


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
