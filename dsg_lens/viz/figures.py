"""Paper figures (PNG + SVG, :mod:`dsg_lens.viz.style`) drawn from the JSON-able results the other modules write.

Each function takes a result dict and an output ``stem`` (path without suffix) and returns the two files written.
Expected keys (extra keys are ignored):

- :func:`latent_scatter`: ``{"forget_score": [d_sae], "retain_score": [d_sae], "selected": [ids], "rule": str}``
  (a :class:`~dsg_lens.selection.FeatureSet`'s scores; :func:`latent_scores` builds it from a saved one).
- :func:`rho_histogram`: ``{"scores_forget": [...], "scores_retain": [...], "tau": float}``
  (``report.json["gate"]`` of ``dsg-lens demo``, :func:`dsg_lens.eval.gate_stats.gate_firing`).
- :func:`pareto_plot`: ``{method: sweep}`` with each ``sweep`` = ``SweepResult.to_dict()`` (``{"rows": [{"forget_acc",
  "retain_acc", ...}], "base": {"forget_acc", "retain_acc"}}``; baselines write the same keys).
- :func:`clamp_sweep`: one ``SweepResult.to_dict()`` whose rows have ``clamp``, ``n``, ``forget_acc``, ``retain_acc``.
- :func:`curves` (relearning, sequential unlearning, dilution attack): ``{X: [x values], "methods": {method:
  {metric: [one value per x]}}}`` with X = ``"steps"`` (relearning), ``"stages"`` (sequential, labels) or
  ``"filler_tokens"`` (dilution); one panel per metric (e.g. ``forget_acc``, ``retain_acc``, ``blocked``).
- :func:`ablation_bars`: ``{"latents": [ids], "effects": {series: [one value per latent]}, "metric": str}``
  (series e.g. ``forget`` / ``retain``).
- :func:`gate_shape_bars`: ``{"params": {...}, "rows": [{"n", "gate", "calibration", "by_shape": {shape: {"tpr",
  "fpr"}}}]}`` (:mod:`dsg_lens.studies.gate_shapes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsg_lens.selection import FeatureSet
from dsg_lens.viz.style import color, figure_paths, styled_figure

CURVE_AXES = {
    "steps": "fine-tuning steps on forget data (relearning)",
    "stages": "unlearning stage (sequential)",
    "filler_tokens": "benign filler tokens before the question (dilution)",
}
"""The x key of each curve study and its axis label."""

_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v"]


def _need(data: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{what} result is missing keys {missing} (has {sorted(data)[:10]}); see dsg_lens.viz.figures")


def _pretty(name: str) -> str:
    return name.replace("_acc", " accuracy").replace("_", " ")


def latent_scores(folder: str | Path) -> dict[str, Any]:
    """:func:`latent_scatter` input from a saved FeatureSet (a guardrail folder holds one)."""
    features = FeatureSet.load(folder)
    for key in ("forget_score", "retain_score"):
        if key not in features.scores:
            raise ValueError(f"{folder}: the saved FeatureSet has no {key!r} scores (saved without scores?)")
    return {"forget_score": features.scores["forget_score"].tolist(),
            "retain_score": features.scores["retain_score"].tolist(), "selected": features.ids, "rule": features.rule}


def latent_scatter(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Forget vs retain score of every latent (log axes; zeros drawn at the floor), selected latents highlighted."""
    _need(data, ("forget_score", "retain_score", "selected"), "latent scatter")
    forget, retain = np.asarray(data["forget_score"], float), np.asarray(data["retain_score"], float)
    if forget.shape != retain.shape or forget.ndim != 1:
        raise ValueError(f"forget_score {forget.shape} and retain_score {retain.shape} must be 1-D of equal length")
    positive = np.concatenate([forget[forget > 0], retain[retain > 0]])
    floor = positive.min() / 10 if positive.size else 1e-12
    forget, retain = np.maximum(forget, floor), np.maximum(retain, floor)
    selected = np.zeros(forget.size, bool)
    selected[np.asarray(data["selected"], int)] = True
    with styled_figure(stem, width=3.4, height=3.0) as (fig, (ax,)):
        ax.scatter(retain[~selected], forget[~selected], s=3, color=color("other"), alpha=0.5, linewidths=0,
                   label=f"other latents ({int((~selected).sum())})", rasterized=True)
        ax.scatter(retain[selected], forget[selected], s=14, color=color("selected"), edgecolors="black",
                   linewidths=0.4, label=f"selected ({int(selected.sum())})", zorder=3)
        low, high = floor, max(forget.max(), retain.max()) * 2
        ax.plot([low, high], [low, high], color="black", linewidth=0.6, linestyle=":", label="forget = retain")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("retain score")
        ax.set_ylabel("forget score")
        ax.set_title(f"latent selection ({data.get('rule', 'dsg')})")
        ax.legend(loc="upper left")
    return figure_paths(stem)


SCORE_AXES = {
    "paper": "rho (share of tokens where a selected latent fires)",
    "prefix": "gate score (largest share of fired tokens in a prefix)",
    "window": "gate score (largest share of fired tokens in a window)",
}
"""The x label of :func:`rho_histogram` per gate kind (``data["gate"]["kind"]``)."""


def rho_histogram(data: Mapping[str, Any], stem: str | Path, bins: int = 30) -> list[Path]:
    """Histograms of the gate score (rho for the paper's gate) on forget and retain texts, with tau."""
    _need(data, ("scores_forget", "scores_retain", "tau"), "rho histogram")
    forget, retain = np.asarray(data["scores_forget"], float), np.asarray(data["scores_retain"], float)
    tau = float(data["tau"])
    top = max(forget.max(initial=0), retain.max(initial=0), tau) * 1.05 or 1.0
    edges = np.linspace(0, top, bins + 1)
    with styled_figure(stem, width=3.6, height=2.6) as (fig, (ax,)):
        for name, values in (("forget", forget), ("retain", retain)):
            share = float((values > tau).mean()) if values.size else float("nan")
            ax.hist(values, bins=edges, color=color(name), alpha=0.55,
                    label=f"{name} (n={values.size}, {share:.0%} > tau)")
        ax.axvline(tau, color=color("tau"), linestyle="--", linewidth=1.0, label=f"tau = {tau:.3f}")
        ax.set_xlabel(SCORE_AXES.get(str(data.get("gate", {}).get("kind", "paper")), "gate score"))
        ax.set_ylabel("texts")
        ax.legend(loc="upper right")
    return figure_paths(stem)


def pareto_plot(methods: Mapping[str, Mapping[str, Any]], stem: str | Path) -> list[Path]:
    """Forget vs retain accuracy of every configuration of each method, its Pareto front, and the base model."""
    if not methods:
        raise ValueError("no sweeps to plot: pass {method name: SweepResult.to_dict()}")
    from dsg_lens.eval.sweep import pareto_front

    with styled_figure(stem, width=3.6, height=3.0) as (fig, (ax,)):
        base = None
        for i, (name, sweep) in enumerate(methods.items()):
            _need(sweep, ("rows",), f"sweep of {name}")
            rows = sweep["rows"]
            ax.scatter([r["forget_acc"] for r in rows], [r["retain_acc"] for r in rows], s=10, alpha=0.35,
                       color=color(name), linewidths=0, marker=_MARKERS[i % len(_MARKERS)])
            front = sorted(pareto_front(rows), key=lambda r: r["forget_acc"])
            ax.plot([r["forget_acc"] for r in front], [r["retain_acc"] for r in front], color=color(name),
                    marker=_MARKERS[i % len(_MARKERS)], label=f"{name} ({len(rows)} configs)")
            base = base or sweep.get("base")
        if base:
            ax.scatter([base["forget_acc"]], [base["retain_acc"]], marker="*", s=90, color=color("base"),
                       edgecolors="black", linewidths=0.4, label="no guardrail", zorder=4)
        ax.set_xlabel("forget accuracy (lower = more forgotten)")
        ax.set_ylabel("retain accuracy")
        ax.legend(loc="lower right")
    return figure_paths(stem)


def clamp_sweep(sweep: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Forget and retain accuracy against the clamp value, one line per N (at the first p_ratio / p_dyn)."""
    _need(sweep, ("rows",), "clamp sweep")
    first = sweep["rows"][0]
    rows = [r for r in sweep["rows"] if all(r.get(k) == first.get(k) for k in ("p_ratio", "p_dyn"))]
    n_values = sorted({r["n"] for r in rows})
    relative = bool(sweep.get("params", {}).get("clamp_is_relative"))
    with styled_figure(stem, width=3.6, height=2.7) as (fig, (ax,)):
        for i, n in enumerate(n_values):
            chosen = sorted((r for r in rows if r["n"] == n), key=lambda r: r["clamp"])
            clamps = [r["clamp"] for r in chosen]
            for metric in ("forget", "retain"):
                ax.plot(clamps, [r[f"{metric}_acc"] for r in chosen], color=color(metric),
                        linestyle=_LINESTYLES[i % len(_LINESTYLES)], marker=_MARKERS[i % len(_MARKERS)],
                        label=f"{metric}, N={n}")
        base = sweep.get("base")
        for metric in ("forget", "retain"):
            if base and f"{metric}_acc" in base:
                ax.axhline(base[f"{metric}_acc"], color=color(metric), linewidth=0.7, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("clamp (x mean residual norm)" if relative else "clamp value c (latents set to -c)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"p_ratio={first.get('p_ratio')}, p_dyn={first.get('p_dyn')}; thin lines: no guardrail",
                     fontsize=8)
        ax.legend(loc="best", ncols=2)
    return figure_paths(stem)


def curves(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Relearning, sequential-unlearning or dilution curves (module docstring): one panel per metric."""
    x_key = next((k for k in CURVE_AXES if k in data), None)
    if x_key is None:
        raise ValueError(f"curve result needs one of {sorted(CURVE_AXES)} as its x values (has {sorted(data)[:10]})")
    _need(data, ("methods",), "curve")
    x = list(data[x_key])
    categorical = any(isinstance(v, str) for v in x)
    positions = list(range(len(x))) if categorical else x
    metrics = list(dict.fromkeys(m for series in data["methods"].values() for m in series))
    if not metrics:
        raise ValueError("curve result has no metric series under 'methods'")
    with styled_figure(stem, width=3.2, height=2.6, ncols=len(metrics)) as (fig, axes):
        for ax, metric in zip(axes, metrics):
            for i, (name, series) in enumerate(data["methods"].items()):
                if metric not in series:
                    continue
                values = series[metric]
                if len(values) != len(x):
                    raise ValueError(f"{name}.{metric} has {len(values)} values for {len(x)} {x_key}")
                ax.plot(positions, values, color=color(name), marker=_MARKERS[i % len(_MARKERS)], label=name)
            if categorical:
                ax.set_xticks(positions, x, rotation=30)
            ax.set_xlabel(CURVE_AXES[x_key])
            ax.set_ylabel(_pretty(metric))
            if len(metrics) > 1:
                ax.set_title(_pretty(metric))
        axes[0].legend(loc="best")
    return figure_paths(stem)


def ablation_bars(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Effect of ablating each latent, one bar per series (e.g. forget and retain) per latent."""
    _need(data, ("latents", "effects"), "latent ablation")
    latents, effects = list(data["latents"]), dict(data["effects"])
    width = 0.8 / max(len(effects), 1)
    with styled_figure(stem, width=max(3.6, 0.4 * len(latents) + 1.5), height=2.7) as (fig, (ax,)):
        for i, (name, values) in enumerate(effects.items()):
            if len(values) != len(latents):
                raise ValueError(f"effects[{name!r}] has {len(values)} values for {len(latents)} latents")
            offsets = [x + (i - (len(effects) - 1) / 2) * width for x in range(len(latents))]
            ax.bar(offsets, values, width=width, color=color(name), label=name)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(latents)), [str(i) for i in latents], rotation=45)
        ax.set_xlabel("ablated SAE latent")
        ax.set_ylabel(_pretty(str(data.get("metric", "effect"))))
        ax.legend(loc="best")
    return figure_paths(stem)


def gate_shape_bars(data: Mapping[str, Any], stem: str | Path, n: int | None = None,
                    calibration: str = "questions") -> list[Path]:
    """Gate TPR (bars) and FPR (black ticks) per input shape, one bar group per gate, for the rows with ``n``
    features (default: the middle of the study's N values) and tau calibrated on ``calibration``
    (:mod:`dsg_lens.studies.gate_shapes`)."""
    _need(data, ("rows", "params"), "gate shapes")
    n_values = sorted({r["n"] for r in data["rows"]})
    n = n if n is not None else n_values[len(n_values) // 2]
    rows = [r for r in data["rows"] if r["n"] == n and r["calibration"] == calibration]
    if not rows:
        raise ValueError(f"no gate-shape rows with n={n} and calibration={calibration!r}")
    shapes = list(rows[0]["by_shape"])
    width = 0.8 / len(rows)
    with styled_figure(stem, width=max(4.5, 1.3 * len(shapes) + 1.5), height=2.9) as (fig, (ax,)):
        for i, row in enumerate(rows):
            offsets = [x + (i - (len(rows) - 1) / 2) * width for x in range(len(shapes))]
            ax.bar(offsets, [row["by_shape"][s]["tpr"] for s in shapes], width=width, color=color(row["gate"]),
                   label=row["gate"])
            ax.scatter(offsets, [row["by_shape"][s]["fpr"] for s in shapes], marker="_", color="black", s=60,
                       zorder=3, label="FPR (retain)" if i == 0 else None)
        ax.set_xticks(range(len(shapes)), [s.replace("_", " ") for s in shapes])
        ax.set_ylabel("gate on at the last token")
        ax.set_ylim(0, 1)
        ax.set_title(f"TPR on forget questions (bars), FPR on retain (ticks); N={n}, tau from {calibration}")
        ax.legend(loc="upper right", fontsize="small")
    return figure_paths(stem)
