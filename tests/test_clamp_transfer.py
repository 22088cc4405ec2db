"""scripts/clamp_transfer.py's choice of the best clamp and its table, on hand-made rows (seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("clamp_transfer",
                                              Path(__file__).parents[1] / "scripts" / "clamp_transfer.py")
clamp_transfer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(clamp_transfer)


def _row(clamp: float, forget: float, ci: tuple[float, float], retain: float = 0.95) -> dict:
    return {"clamp": clamp, "tau": 0.5, "forget_acc": forget, "forget_ci95": list(ci), "retain_acc": retain,
            "retain_ci95": [retain - 0.05, retain]}


def test_best_is_the_smallest_clamp_that_cannot_be_told_from_the_lowest_forget_accuracy():
    rows = [_row(10, 0.88, (0.80, 0.93)), _row(50, 0.66, (0.56, 0.75)), _row(500, 0.71, (0.61, 0.79)),
            _row(5000, 0.65, (0.55, 0.74), retain=0.80)]
    # 5000 has the lowest forget accuracy but loses retain (0.80 < 0.95 x 0.99); of the rest the lowest is 0.66
    # (c=50), and c=50 is also the smallest whose interval holds it (c=10's [0.80, 0.93] does not)
    assert clamp_transfer.best(rows, base_retain=0.99, min_retain=0.95)["clamp"] == 50
    # with c=5000 kept, the lowest is 0.65: c=50's interval holds it, so c=50 still wins over the noise
    assert clamp_transfer.best(rows, base_retain=0.80, min_retain=0.95)["clamp"] == 50
    assert clamp_transfer.best(rows, base_retain=1.0, min_retain=1.0) is None


def test_table_applies_each_models_best_clamp_to_the_other():
    small = {"model": "small", "mean_resid_norm": 110.0, "base": {"retain_acc": 1.0},
             "fixed": [_row(50, 0.66, (0.56, 0.75)), _row(500, 0.71, (0.61, 0.79))],
             "relative": [_row(0.1, 0.86, (0.78, 0.91)), _row(0.5, 0.67, (0.57, 0.75))]}
    big = {"model": "big", "mean_resid_norm": 6400.0, "base": {"retain_acc": 1.0},
           "fixed": [_row(50, 0.98, (0.93, 0.99), retain=1.0), _row(500, 0.73, (0.64, 0.81))],
           "relative": [_row(0.1, 0.73, (0.64, 0.81)), _row(0.5, 0.69, (0.59, 0.77))]}
    table = {row["model"]: {e["setting"]: e for e in row["entries"]} for row in clamp_transfer.table([small, big], 0.95)}
    assert table["big"]["small's best fixed c=50"]["forget_acc"] == 0.98  # the small model's clamp fails here
    assert table["small"]["big's best fixed c=500"]["forget_acc"] == 0.71
    assert table["big"]["own best fixed c=500"]["forget_acc"] == 0.73
    assert table["small"]["big's best relative s=0.1"]["forget_acc"] == 0.86
    assert table["big"]["fixed c=500"]["clamp"] == 500
