"""Baselines evaluated by the same code as DSG: static SAE clamping (Farrell et al.) and RMU (Li et al.)."""

from dsg_lens.baselines.compare import METHODS, compare_methods, format_table
from dsg_lens.baselines.cost import Measured, measure
from dsg_lens.baselines.rmu import RMUConfig, RMUResult, rmu_unlearn
from dsg_lens.baselines.static_clamp import StaticClamp

__all__ = ["METHODS", "Measured", "RMUConfig", "RMUResult", "StaticClamp", "compare_methods", "format_table",
           "measure", "rmu_unlearn"]
