"""Benchmark grids (``selfdistill bench``) and reports (``selfdistill report``)."""

from .report import write_report
from .runner import Grid, RunSpec, load_grid, run_grid

__all__ = ["Grid", "RunSpec", "load_grid", "run_grid", "write_report"]
