"""Study and baseline results (schemas in their modules' docstrings) -> the figure schemas of :mod:`.figures`.

Each adapter returns ``None`` when ``data`` is not its kind of result, so :func:`~.render.render_figures` can try
them all on every JSON file.
"""

from __future__ import annotations

from typing import Any


def relearn_curves(data: dict[str, Any]) -> dict[str, Any] | None:
    """``relearn.json`` -> ``{"steps", "methods": {base|dsg|rmu: {"forget_acc": [...]}}}``."""
    curve = data.get("curve")
    if not (isinstance(curve, list) and curve and "step" in curve[0]):
        return None
    methods = {name: {"forget_acc": [row[f"{name}_forget_acc"] for row in curve]}
               for name in ("base", "dsg", "rmu") if f"{name}_forget_acc" in curve[0]}
    return {"steps": [row["step"] for row in curve], "methods": methods}


def sequential_curves(data: dict[str, Any]) -> dict[str, Any] | None:
    """``sequential.json`` -> ``{"stages", "methods": {retain|<topic>: {"accuracy": [...]}}}``."""
    if not ("topics" in data and isinstance(data.get("steps"), list) and data["steps"]):
        return None
    steps = data["steps"]
    methods = {"retain": {"accuracy": [s["retain_acc"] for s in steps]}}
    for topic in data["topics"]:
        methods[f"forget: {topic}"] = {"accuracy": [s["forget_acc"][topic] for s in steps]}
    stages = ["none" if s["added"] is None else f"+{s['added']}" for s in steps]
    return {"stages": stages, "methods": methods}


def dilution_curves(data: dict[str, Any]) -> dict[str, Any] | None:
    """``attacks.json`` -> ``{"filler_tokens", "methods": {base|<gate>: {"forget_acc", "firing_rate"}}}``."""
    points = data.get("attacks", {}).get("dilution") if isinstance(data.get("attacks"), dict) else None
    if not points:
        return None
    methods: dict[str, dict[str, list[float]]] = {"base": {"forget_acc": [p["base_acc"] for p in points]}}
    for guard in points[0]["guards"]:
        methods[guard] = {metric: [p["guards"][guard][metric] for p in points]
                          for metric in ("forget_acc", "firing_rate")}
    return {"filler_tokens": [p["strength"] for p in points], "methods": methods}


def comparison_sweeps(data: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """``compare.json`` -> ``{method: one-row sweep}`` for the Pareto figure (each method is one point)."""
    methods = data.get("methods")
    if not (isinstance(methods, dict) and "base" in methods and "order" in data):
        return None
    base = {k: methods["base"][k] for k in ("forget_acc", "retain_acc")}
    return {name: {"rows": [{k: result[k] for k in ("forget_acc", "retain_acc")}], "base": base}
            for name, result in methods.items() if name != "base"}
