"""Each method's best point from its saved sweep: the configuration that `dsg-lens compare` re-runs and measures.

The rule (one for every method): among a sweep's rows with retain accuracy >= ``min_retain``, the lowest forget
accuracy (ties: higher retain accuracy, then the earlier row). Such a row is on the sweep's Pareto front.

Where each sweep is read from (under a results folder, as ``scripts/run_studies.sh`` writes them):

========================  ==========================================  ==========================================
method                     file                                        settings taken from the row
========================  ==========================================  ==========================================
``dsg_window``             ``sweep/sweep.json`` (``dsg-lens sweep``)    n, p_ratio, p_dyn, clamp (+ the sweep's gate)
``static_clamp``           ``static_clamp/static_clamp_sweep.json``     retain_threshold, n, multiplier
``rmu``                    ``rmu/rmu_grid.json`` (``dsg-lens rmu-grid``) every RMUConfig field
========================  ==========================================  ==========================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SWEEP_FILES = {
    "dsg_window": Path("sweep") / "sweep.json",
    "static_clamp": Path("static_clamp") / "static_clamp_sweep.json",
    "rmu": Path("rmu") / "rmu_grid.json",
}
"""Where each method's sweep lies under a results folder."""


def best_point(rows: Sequence[dict[str, Any]], min_retain: float) -> dict[str, Any] | None:
    """The row with the lowest ``forget_acc`` among those with ``retain_acc >= min_retain`` (ties: the higher
    retain accuracy first, then the earlier row); None when no row keeps retain accuracy that high."""
    kept = [(i, r) for i, r in enumerate(rows) if r["retain_acc"] >= min_retain]
    if not kept:
        return None
    return min(kept, key=lambda item: (item[1]["forget_acc"], -item[1]["retain_acc"], item[0]))[1]


def best_points(results_dir: str | Path, min_retain: float, methods: Sequence[str] = tuple(SWEEP_FILES)
                ) -> dict[str, dict[str, Any]]:
    """``{method: {"row": best row, "source": path, "sweep_params": the sweep's params, "n_rows"}}`` for every
    method in ``methods`` (module docstring). A missing sweep or one without a row at ``min_retain`` is an error
    that says which command writes it."""
    unknown = sorted(set(methods) - set(SWEEP_FILES))
    if unknown:
        raise ValueError(f"no sweep is known for methods {unknown}: choose from {sorted(SWEEP_FILES)}")
    out = {}
    commands = {"dsg_window": "dsg-lens sweep", "static_clamp": "dsg-lens static-clamp-sweep",
                "rmu": "dsg-lens rmu-grid"}
    for method in methods:
        path = Path(results_dir) / SWEEP_FILES[method]
        if not path.is_file():
            raise ValueError(f"no {method} sweep at {path}: run `{commands[method]} --out {path.parent}` first")
        sweep = json.loads(path.read_text())
        rows = sweep.get("rows") or []
        row = best_point(rows, min_retain)
        if row is None:
            best_retain = max((r["retain_acc"] for r in rows), default=float("nan"))
            raise ValueError(f"no {method} configuration in {path} keeps retain accuracy >= {min_retain} (best "
                             f"{best_retain:.3f}): lower --min-retain or widen the sweep")
        out[method] = {"row": row, "source": str(path), "sweep_params": sweep.get("params", {}), "n_rows": len(rows)}
    return out
