"""Study and baseline results (schemas in their modules' docstrings) -> the figure schemas of :mod:`.figures`.

Each adapter returns ``None`` when ``data`` is not its kind of result, so :func:`~.render.render_figures` can try
them all on every JSON file.
"""

from __future__ import annotations

from typing import Any

from dsg_lens.viz.style import color

TOPIC_COLORS = ("#c0392b", "#e67e22", "#8e44ad", "#117a65", "#7d6608")
"""Colours of successive forget topics (sequential unlearning): none of them the retain blue."""


def relearn_curves(data: dict[str, Any]) -> dict[str, Any] | None:
    """``relearn.json`` -> ``{"steps", "methods": {arm: {"forget_acc": [...], ("retain_acc")}}, "title"}``."""
    curve = data.get("curve")
    if not (isinstance(curve, list) and curve and "step" in curve[0]):
        return None
    arms = data.get("arms") or [name for name in ("base", "dsg", "rmu") if f"{name}_forget_acc" in curve[0]]
    metrics = [m for m in ("forget_acc", "retain_acc") if f"{arms[0]}_{m}" in curve[0]]
    methods = {name: {m: [row[f"{name}_{m}"] for row in curve] for m in metrics} for name in arms}
    params = data.get("params", {})
    title = None
    if {"lr", "n_texts"} <= set(params):
        title = (f"relearning: full fine-tuning on {params['n_texts']} forget texts, lr {params['lr']:g}, "
                 f"batch {params.get('batch_size')}; methods stay in place")
    return {"steps": [row["step"] for row in curve], "methods": methods, "title": title}


def sequential_curves(data: dict[str, Any]) -> dict[str, Any] | None:
    """``sequential.json`` -> ``{"stages", "methods": {retain|<topic>: {"accuracy": [...]}}}``."""
    if not ("topics" in data and isinstance(data.get("steps"), list) and data["steps"]):
        return None
    steps = data["steps"]
    methods = {"retain domains": {"accuracy": [s["retain_acc"] for s in steps]}}
    colors = {"retain domains": color("retain")}
    for k, topic in enumerate(data["topics"]):
        name = f"forget: {topic.removeprefix('noun.')}"
        methods[name] = {"accuracy": [s["forget_acc"][topic] for s in steps]}
        colors[name] = TOPIC_COLORS[k % len(TOPIC_COLORS)]
    stages = ["none" if s["added"] is None else f"+{s['added'].removeprefix('noun.')}" for s in steps]
    order = " -> ".join(t.removeprefix("noun.") for t in data["topics"])
    title = f"sequential unlearning ({order}): one DSG guardrail per domain, stacked"
    return {"stages": stages, "methods": methods, "colors": colors, "title": title}


def dilution_curves(data: dict[str, Any]) -> dict[str, Any] | None:
    """``attacks.json`` -> ``{"filler_tokens", "methods": {base|<gate>: {"forget_acc", "firing_rate"}}}``."""
    points = data.get("attacks", {}).get("dilution") if isinstance(data.get("attacks"), dict) else None
    if not points:
        return None
    measured = all(p.get("base_acc") is not None for p in points)  # accuracies are None in a gate-rate-only run
    methods: dict[str, dict[str, list[float]]] = {}
    if measured:
        methods["base"] = {"forget_acc": [p["base_acc"] for p in points]}
    for guard in points[0]["guards"]:
        methods[guard] = {metric: [p["guards"][guard][metric] for p in points]
                          for metric in (("forget_acc", "firing_rate") if measured else ("firing_rate",))}
    return {"filler_tokens": [p["strength"] for p in points], "methods": methods}


def comparison_sweeps(data: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """``compare.json`` -> ``{"<method> (compare)": one-row sweep}`` for the Pareto figure (each method is one
    point, measured on the comparison's questions; named apart from the method's own sweep)."""
    methods = data.get("methods")
    if not (isinstance(methods, dict) and "base" in methods and "order" in data):
        return None
    base = {k: methods["base"][k] for k in ("forget_acc", "retain_acc")}
    return {f"{name} (compare)": {"rows": [{k: result[k] for k in ("forget_acc", "retain_acc")}], "base": base}
            for name, result in methods.items() if name != "base"}
