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
- :func:`efficiency_plot`: ``efficiency.json`` (rows with ``fraction``; :mod:`dsg_lens.studies.efficiency`).
- :func:`attack_panels`: ``attacks.json`` (:mod:`dsg_lens.studies.attacks`).
- :func:`zeroshot_plot`: ``zeroshot.json`` (rows with ``tau``, top-level ``seed_words``;
  :mod:`dsg_lens.studies.zeroshot`).
- :func:`transfer_plot`: ``transfer.json`` of ``scripts/clamp_transfer.py`` (``{"models": [{"model",
  "mean_resid_norm", "base", "fixed": rows, "relative": rows}]}``, rows with ``clamp``, ``forget_acc``,
  ``retain_acc``).

Every figure says in its title what was run, keeps its legend off the data (below the panels) and uses axes a
reader can follow (accuracies 0-1; log axes only over a few decades).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsg_lens.selection import FeatureSet
from dsg_lens.viz.style import ALIASES, COLORS, color, figure_paths, styled_figure

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


LABELS = {"dsg": "DSG", "dsg_window": "DSG (window gate)", "dsg_paper": "DSG (paper gate)",
          "static_clamp": "static clamping", "static": "static clamping", "rmu": "RMU", "base": "no unlearning",
          "rmu_best_300q": "RMU's best point on 300+300 questions"}
"""How a method's name is written in legends."""


def _label(name: str) -> str:
    """A series' legend label: ``LABELS`` of its method, keeping a qualifier such as " (compare)"."""
    method, sep, rest = name.partition(" (")
    return f"{LABELS.get(method, method)}{sep}{rest}"


def _color(name: str) -> str:
    """A series' colour: its method's, so "rmu (compare)" and "rmu_best_300q" are drawn in RMU's colour and
    "dsg_window" in the window gate's."""
    method = name.partition(" (")[0].strip().lower()
    for key in (method, method.replace("_", "-"), method.split("_")[0]):
        if key in COLORS or key in ALIASES:
            return color(key)
    return color(method)


def _legend_below(fig: Any, axes: Sequence[Any], ncols: int = 3) -> None:
    """One legend for all panels, below them (never on the data)."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncols=min(ncols, len(labels)))


def latent_scores(folder: str | Path) -> dict[str, Any]:
    """:func:`latent_scatter` input from a saved FeatureSet (a guardrail folder holds one)."""
    features = FeatureSet.load(folder)
    for key in ("forget_score", "retain_score"):
        if key not in features.scores:
            raise ValueError(f"{folder}: the saved FeatureSet has no {key!r} scores (saved without scores?)")
    return {"forget_score": features.scores["forget_score"].tolist(),
            "retain_score": features.scores["retain_score"].tolist(), "selected": features.ids, "rule": features.rule}


SCORE_NAMES = {"dsg": ("mean activation", "mean activation"),
               "farrell": ("firing frequency", "firing frequency")}
"""Per selection rule: what the axes of :func:`latent_scatter` show (the DSG rule's scores are squared means)."""


def latent_scatter(data: Mapping[str, Any], stem: str | Path, decades: int = 4) -> list[Path]:
    """Forget vs retain statistic of every latent, selected latents highlighted. Log axes over ``decades``
    decades below the largest value; smaller values (and zeros) are drawn on the axis floor."""
    _need(data, ("forget_score", "retain_score", "selected"), "latent scatter")
    forget, retain = np.asarray(data["forget_score"], float), np.asarray(data["retain_score"], float)
    if forget.shape != retain.shape or forget.ndim != 1:
        raise ValueError(f"forget_score {forget.shape} and retain_score {retain.shape} must be 1-D of equal length")
    rule = str(data.get("rule", "dsg"))
    if rule == "dsg":  # scores are squared mean activations: show the means
        forget, retain = np.sqrt(np.maximum(forget, 0)), np.sqrt(np.maximum(retain, 0))
    top = max(forget.max(initial=0), retain.max(initial=0)) or 1.0
    floor = top * 10.0 ** (-decades)
    below = (forget < floor) | (retain < floor)
    forget, retain = np.clip(forget, floor, None), np.clip(retain, floor, None)
    selected = np.zeros(forget.size, bool)
    selected[np.asarray(data["selected"], int)] = True
    what = SCORE_NAMES.get(rule, ("score", "score"))
    with styled_figure(stem, width=3.6, height=3.6) as (fig, (ax,)):
        ax.scatter(retain[~selected], forget[~selected], s=3, color=color("other"), alpha=0.5, linewidths=0,
                   label=f"other latents ({int((~selected).sum())}; {int((below & ~selected).sum())} on the floor)",
                   rasterized=True)
        ax.scatter(retain[selected], forget[selected], s=16, color=color("selected"), edgecolors="black",
                   linewidths=0.4, label=f"selected ({int(selected.sum())})", zorder=3)
        ax.plot([floor, top * 2], [floor, top * 2], color="black", linewidth=0.6, linestyle=":",
                label="forget = retain")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor / 2, top * 2)
        ax.set_ylim(floor / 2, top * 2)
        ax.set_xlabel(f"{what[1]} on retain text")
        ax.set_ylabel(f"{what[0]} on forget text")
        ax.set_title(f"SAE latents, {int(selected.sum())} selected by the {rule} rule", fontsize=9)
        _legend_below(fig, [ax], ncols=1)
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
        kind = str(data.get("gate", {}).get("kind", "paper"))
        ax.set_xlabel(SCORE_AXES.get(kind, "gate score"))
        ax.set_ylabel("question contexts")
        ax.set_title(f"{kind} gate: score per forget / retain question", fontsize=9)
        _legend_below(fig, [ax], ncols=1)
    return figure_paths(stem)


def pareto_plot(methods: Mapping[str, Mapping[str, Any]], stem: str | Path, title: str | None = None) -> list[Path]:
    """Forget vs retain accuracy of every configuration of each method (faint), its Pareto front (line), and the
    base model (star). A one-row "sweep" (a method measured at one point, e.g. by ``dsg-lens compare``) is drawn as
    a single large marker."""
    if not methods:
        raise ValueError("no sweeps to plot: pass {method name: SweepResult.to_dict()}")
    from dsg_lens.eval.sweep import pareto_front

    with styled_figure(stem, width=4.2, height=3.6) as (fig, (ax,)):
        base = None
        for i, (name, sweep) in enumerate(methods.items()):
            _need(sweep, ("rows",), f"sweep of {name}")
            rows, marker = sweep["rows"], _MARKERS[i % len(_MARKERS)]
            if len(rows) == 1:
                ax.scatter([rows[0]["forget_acc"]], [rows[0]["retain_acc"]], s=45, marker=marker, color=_color(name),
                           edgecolors="black", linewidths=0.5, zorder=4, label=_label(name))
            else:
                ax.scatter([r["forget_acc"] for r in rows], [r["retain_acc"] for r in rows], s=10, alpha=0.35,
                           color=_color(name), linewidths=0, marker=marker)
                front = sorted(pareto_front(rows), key=lambda r: r["forget_acc"])
                ax.plot([r["forget_acc"] for r in front], [r["retain_acc"] for r in front], color=_color(name),
                        marker=marker, label=f"{_label(name)}: front of {len(rows)} configs")
            base = base or sweep.get("base")
        if base:
            ax.scatter([base["forget_acc"]], [base["retain_acc"]], marker="*", s=90, color=color("base"),
                       edgecolors="black", linewidths=0.4, label="no guardrail", zorder=4)
        ax.set_xlabel("forget accuracy (lower = more forgotten)")
        ax.set_ylabel("retain accuracy (higher = better kept)")
        ax.set_title(title or "forget vs retain accuracy per configuration", fontsize=9)
        _legend_below(fig, [ax], ncols=2)
    return figure_paths(stem)


def clamp_sweep(sweep: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Forget and retain accuracy against the clamp value, one line per N (at the first p_ratio / p_dyn)."""
    _need(sweep, ("rows",), "clamp sweep")
    first = sweep["rows"][0]
    rows = [r for r in sweep["rows"] if all(r.get(k) == first.get(k) for k in ("p_ratio", "p_dyn"))]
    n_values = sorted({r["n"] for r in rows})
    relative = bool(sweep.get("params", {}).get("clamp_is_relative"))
    with styled_figure(stem, width=4.0, height=3.4) as (fig, (ax,)):
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
        values = sorted({r["clamp"] for r in rows})
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
        ax.set_xlabel("clamp (x mean residual norm)" if relative else "clamp value c (latents set to -c)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"DSG clamp sweep at p_ratio={first.get('p_ratio'):g}, p_dyn={first.get('p_dyn'):g}\n"
                     "(thin lines: no guardrail)", fontsize=8)
        _legend_below(fig, [ax], ncols=3)
    return figure_paths(stem)


CURVE_TITLES = {
    "steps": "relearning: fine-tuning on forget texts with each method in place",
    "stages": "sequential unlearning: one guardrail per domain, stacked",
    "filler_tokens": "dilution attack: benign filler before forget questions",
}


def curves(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Relearning, sequential-unlearning or dilution curves (module docstring): one panel per metric; the title
    is ``data["title"]`` and a series' colour ``data["colors"][name]`` when given."""
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
    colors = dict(data.get("colors") or {})
    with styled_figure(stem, width=3.4, height=2.9, ncols=len(metrics)) as (fig, axes):
        for ax, metric in zip(axes, metrics):
            for i, (name, series) in enumerate(data["methods"].items()):
                if metric not in series:
                    continue
                values = series[metric]
                if len(values) != len(x):
                    raise ValueError(f"{name}.{metric} has {len(values)} values for {len(x)} {x_key}")
                ax.plot(positions, values, color=colors.get(name) or _color(name), marker=_MARKERS[i % len(_MARKERS)],
                        linestyle=_LINESTYLES[i % len(_LINESTYLES)], label=_label(name))
            if categorical:
                ax.set_xticks(positions, x, rotation=20)
            ax.set_xlabel(CURVE_AXES[x_key])
            ax.set_ylabel(_pretty(metric))
            if _pretty(metric).endswith("accuracy"):
                ax.set_ylim(-0.03, 1.03)
            if len(metrics) > 1:
                ax.set_title(_pretty(metric), fontsize=9)
        fig.suptitle(str(data.get("title") or CURVE_TITLES[x_key]), fontsize=9)
        _legend_below(fig, axes, ncols=4)
    return figure_paths(stem)


def ablation_bars(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Effect of ablating each latent, one bar per series (e.g. forget and retain) per latent."""
    _need(data, ("latents", "effects"), "latent ablation")
    latents, effects = list(data["latents"]), dict(data["effects"])
    width = 0.8 / max(len(effects), 1)
    with styled_figure(stem, width=max(3.6, 0.3 * len(latents) + 1.5), height=3.0) as (fig, (ax,)):
        for i, (name, values) in enumerate(effects.items()):
            if len(values) != len(latents):
                raise ValueError(f"effects[{name!r}] has {len(values)} values for {len(latents)} latents")
            offsets = [x + (i - (len(effects) - 1) / 2) * width for x in range(len(latents))]
            ax.bar(offsets, values, width=width, color=color((name.split() or [name])[0]), label=name)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(latents)), [str(i) for i in latents], rotation=45)
        ax.set_xlabel("ablated SAE latent")
        ax.set_ylabel(_pretty(str(data.get("metric", "effect"))))
        ax.set_title(str(data.get("title") or "effect of ablating each selected latent alone"), fontsize=9)
        _legend_below(fig, [ax], ncols=len(effects))
    return figure_paths(stem)


def _accuracy_panel(ax: Any, x: Sequence[float], rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None
                    ) -> None:
    """Forget and retain accuracy against ``x`` with their 95% intervals (when the rows have them), base lines."""
    for side in ("forget", "retain"):
        values = np.asarray([r[f"{side}_acc"] for r in rows], float)
        if all(f"{side}_ci95" in r for r in rows):
            ci = np.asarray([r[f"{side}_ci95"] for r in rows], float)
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=color(side), alpha=0.15, linewidth=0)
        ax.plot(x, values, color=color(side), marker="o", label=f"{side} accuracy (95% CI)")
        if base and f"{side}_acc" in base:
            ax.axhline(base[f"{side}_acc"], color=color(side), linewidth=0.7, linestyle=":", alpha=0.7,
                       label=f"{side}, no guardrail")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("accuracy")


def efficiency_plot(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Data efficiency (:mod:`dsg_lens.studies.efficiency`): accuracy with the guardrail against the share of
    the forget corpus its latents were selected from; gate rates and the overlap with the full selection."""
    _need(data, ("rows",), "efficiency")
    rows = sorted(data["rows"], key=lambda r: r["fraction"])
    x = [100 * r["fraction"] for r in rows]
    with styled_figure(stem, width=3.4, height=2.9, ncols=2) as (fig, (ax, right)):
        _accuracy_panel(ax, x, rows, data.get("base"))
        ax.set_xlabel("forget corpus used for selection (%)")
        ax.set_title("accuracy with the guardrail", fontsize=9)
        right.plot(x, [r["jaccard_vs_largest"] for r in rows], color="black", marker="s",
                   label="latents shared with the largest fraction (Jaccard)")
        for key, side in (("tpr", "forget"), ("fpr", "retain")):
            if all(key in r for r in rows):
                right.plot(x, [r[key] for r in rows], color=color(side), marker="^", linestyle="--",
                           label=f"gate on: {side} questions ({key.upper()})")
        right.set_ylim(-0.03, 1.03)
        right.set_xlabel("forget corpus used for selection (%)")
        right.set_ylabel("share")
        right.set_title("selection overlap and gate rates", fontsize=9)
        n_texts = data.get("params", {}).get("n_forget_texts")
        fig.suptitle("data efficiency: DSG fitted on part of the forget corpus"
                     + (f" ({n_texts} texts = 100%)" if n_texts else ""), fontsize=9)
        _legend_below(fig, [ax, right], ncols=3)
    return figure_paths(stem)


def zeroshot_plot(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """Zero-shot DSG (:mod:`dsg_lens.studies.zeroshot`): accuracy and gate rates against the fixed tau."""
    _need(data, ("rows",), "zero-shot")
    rows = sorted(data["rows"], key=lambda r: r["tau"])
    x = [r["tau"] for r in rows]
    with styled_figure(stem, width=3.4, height=2.9, ncols=2) as (fig, (ax, right)):
        _accuracy_panel(ax, x, rows, data.get("base"))
        ax.set_xlabel("tau (fixed, not calibrated)")
        ax.set_title("accuracy with the guardrail", fontsize=9)
        for key, side in (("tpr", "forget"), ("fpr", "retain")):
            right.plot(x, [r[key] for r in rows], color=color(side), marker="^", linestyle="--",
                       label=f"gate on: {side} questions ({key.upper()})")
        right.set_ylim(-0.03, 1.03)
        right.set_xlabel("tau (fixed, not calibrated)")
        right.set_ylabel("share of questions")
        right.set_title("gate rates", fontsize=9)
        seeds = data.get("seed_words") or []
        shown = ", ".join(seeds[:6]) + (", ..." if len(seeds) > 6 else "")
        fig.suptitle(f"zero-shot DSG: {len(data.get('features', []))} latents from seed words ({shown})", fontsize=9)
        _legend_below(fig, [ax, right], ncols=3)
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


ATTACK_AXES = {"dilution": "filler tokens before the question", "dilution_after": "filler tokens after the question",
               "split": "user turns the question is split over", "paraphrase": "paraphrase template (0 = none)",
               "system_prompt": "filler tokens in the system prompt"}


def _distinct_colors(names: Sequence[str]) -> dict[str, str]:
    """:func:`color` of each name, names whose colour an earlier name took get the next unused one."""
    from dsg_lens.viz.style import _FALLBACK

    out: dict[str, str] = {}
    for name in names:
        chosen = color(name)
        if chosen in out.values():
            chosen = next((c for c in _FALLBACK if c not in out.values()), chosen)
        out[name] = chosen
    return out


def attack_panels(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """``attacks.json`` (:mod:`dsg_lens.studies.attacks`): per attack, the share of forget questions each gate
    still blocks (solid) and of retain questions rewritten the same way it blocks (dashed, false positives);
    then the benign-neighbour false-fire rate and the error-term steering's blocked share, when measured."""
    _need(data, ("attacks", "retain"), "attack study")
    attacks = {k: rows for k, rows in data["attacks"].items() if rows}
    guards = list(data["retain"])
    palette = _distinct_colors(guards)
    extra = [k for k in ("neighbours", "error_term") if data.get(k)]
    with styled_figure(stem, width=2.8, height=2.7, ncols=len(attacks) + len(extra)) as (fig, axes):
        for ax, (attack, rows) in zip(axes, attacks.items()):
            x = [r["strength"] for r in rows]
            for i, guard in enumerate(guards):
                ax.plot(x, [r["guards"][guard]["firing_rate"] for r in rows], color=palette[guard],
                        marker=_MARKERS[i % len(_MARKERS)], label=guard)
                fpr = [r["guards"][guard].get("retain_fpr") for r in rows]
                if all(v is not None for v in fpr):
                    ax.plot(x, fpr, color=palette[guard], linestyle="--", linewidth=0.8)
            ax.set_xlabel(ATTACK_AXES.get(attack, attack))
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(_pretty(attack), fontsize=9)
        axes[0].set_ylabel("blocked (solid: forget, dashed: retain)")
        panels = iter(axes[len(attacks):])
        if "neighbours" in extra:
            ax = next(panels)
            neighbours = data["neighbours"]
            values = [neighbours["guards"][g]["fpr"] for g in guards]
            ax.bar(range(len(guards)), values, color=[palette[g] for g in guards])
            ax.set_xticks(range(len(guards)), guards, rotation=45, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(f"benign neighbours (n={neighbours['n']}):\nfalse-fire rate", fontsize=9)
        if "error_term" in extra:
            ax = next(panels)
            width = 0.4
            for k, variant in enumerate(("latents", "adaptive")):
                values = [data["error_term"][g].get(variant, {}).get("firing_rate", np.nan) for g in guards]
                ax.bar(np.arange(len(guards)) + (k - 0.5) * width, values, width, color=[palette[g] for g in guards],
                       alpha=1.0 if variant == "latents" else 0.5, edgecolor="black", linewidth=0.4)
            ax.set_xticks(range(len(guards)), guards, rotation=45, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title("error-term steering: still blocked\n(left: latents kept off, right: + probe)", fontsize=8)
        n = data.get("params", {}).get("n_forget")
        fig.suptitle(f"attacks on the gate{f' ({n} forget questions)' if n else ''}", fontsize=10)
        _legend_below(fig, axes, ncols=len(guards))
    return figure_paths(stem)



def transfer_plot(data: Mapping[str, Any], stem: str | Path) -> list[Path]:
    """The clamp-transfer experiment (``scripts/clamp_transfer.py``): forget and retain accuracy of each model
    against the clamp's size relative to its mean residual norm, fixed clamps (c / norm, solid) and relative
    clamps (``clamp_scale`` s, dashed: with unit-norm decoder rows the clamp is s x norm)."""
    _need(data, ("models",), "clamp transfer")
    models = data["models"]
    palette = _distinct_colors([m["model"] for m in models])
    with styled_figure(stem, width=3.2, height=2.9, ncols=2) as (fig, axes):
        for ax, side in zip(axes, ("forget", "retain")):
            for m in models:
                for kind, style, scale in (("fixed", "-", 1.0 / m["mean_resid_norm"]), ("relative", "--", 1.0)):
                    rows = sorted(m[kind], key=lambda r: r["clamp"])
                    ax.plot([r["clamp"] * scale for r in rows], [r[f"{side}_acc"] for r in rows],
                            color=palette[m["model"]], linestyle=style, marker="o" if kind == "fixed" else "s",
                            label=f"{m['model']}, {kind} clamp (norm {m['mean_resid_norm']:.0f})")
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("clamp / mean residual norm")
            ax.set_ylabel(f"{side} accuracy")
            ax.set_title(f"{side} questions", fontsize=9)
        n = models[0].get("n_forget")
        fig.suptitle(f"does the clamp transfer? DSG on each model{f' ({n} questions per side)' if n else ''}",
                     fontsize=9)
        _legend_below(fig, axes, ncols=2)
    return figure_paths(stem)
