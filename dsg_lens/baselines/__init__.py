"""Baselines evaluated by the same code as DSG: static SAE clamping (Farrell et al.) and RMU (Li et al.), their
sweeps, and the side-by-side comparison at each method's best point."""

from dsg_lens.baselines.best import best_point, best_points
from dsg_lens.baselines.compare import METHODS, StaticSettings, compare_at_best, compare_methods, format_table
from dsg_lens.baselines.cost import Measured, measure
from dsg_lens.baselines.rmu import PARAM_SETS, RMUConfig, RMUResult, rmu_unlearn
from dsg_lens.baselines.rmu_grid import rmu_grid
from dsg_lens.baselines.static_clamp import StaticClamp
from dsg_lens.baselines.static_sweep import SAEBENCH_GRID, static_clamp_sweep

__all__ = ["METHODS", "PARAM_SETS", "SAEBENCH_GRID", "Measured", "RMUConfig", "RMUResult", "StaticClamp",
           "StaticSettings", "best_point", "best_points", "compare_at_best", "compare_methods", "format_table",
           "measure", "rmu_grid", "rmu_unlearn", "static_clamp_sweep"]
