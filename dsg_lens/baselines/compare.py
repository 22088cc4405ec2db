"""Side-by-side comparison on one model and data: base / static clamping / RMU / DSG (paper gate) / DSG (window
gate). Every method is evaluated by the same code (:func:`dsg_lens.pipeline.evaluate_questions`) and the cost of
its unlearning step is measured (:mod:`dsg_lens.baselines.cost`): DSG = statistics + selection + calibration;
static clamping = statistics + selection; RMU = training. Both DSG variants and static clamping share one pass of
statistics (its cost is added to each).

:func:`compare_at_best` runs each method at its best point from its saved sweep (:mod:`dsg_lens.baselines.best`:
lowest forget accuracy with retain accuracy >= ``min_retain`` on the sweep's questions), on the questions given.

Result schema (``compare.json``)::

    {"methods": {name: {"forget_acc", "retain_acc", "forget_ci95", "retain_ci95", "forget_n", "retain_n",
                        "cost": {"seconds", "peak_mib", "memory_kind"} | null,
                        "gate": {"tau", "tpr", "fpr", "gate"} (DSG only), "features": [ids] (SAE methods)}},
     "order": [names in table order], "params": {...}, "points": {method: best point} (compare_at_best only)}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from sae_lens import SAE
from torch import nn

from dsg_lens.baselines.cost import measure
from dsg_lens.baselines.rmu import RMUConfig, rmu_unlearn
from dsg_lens.baselines.static_clamp import StaticClamp
from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.gate_stats import gate_firing
from dsg_lens.eval.rescore import TouchedScorer
from dsg_lens.gate import WindowGate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import evaluate_questions, paper_rule_gate, question_texts
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats

METHODS = ("base", "static_clamp", "rmu", "dsg_paper", "dsg_window")


@dataclass
class StaticSettings:
    """Static clamping's settings: the Farrell rule's ``n`` and ``retain_threshold``, and the ``multiplier``."""

    n: int = 20
    retain_threshold: float = 0.01
    multiplier: float = 500.0


def static_from_row(row: Mapping[str, Any]) -> StaticSettings:
    """Static clamping's settings of a row of ``static_clamp_sweep.json``."""
    return StaticSettings(n=row["n"], retain_threshold=row["retain_threshold"], multiplier=row["multiplier"])


def rmu_from_row(row: Mapping[str, Any]) -> RMUConfig:
    """The RMUConfig of a row of ``rmu_grid.json`` (every RMUConfig field the row has)."""
    values = {f.name: row[f.name] for f in fields(RMUConfig) if f.name in row}
    if values.get("update_layers") is not None:
        values["update_layers"] = tuple(values["update_layers"])
    return RMUConfig(**values)


def _combine(*costs: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": sum(c["seconds"] for c in costs), "peak_mib": max(c["peak_mib"] for c in costs),
            "memory_kind": costs[0]["memory_kind"]}


def compare_methods(
    model: nn.Module,
    sae: SAE,
    forget_texts: Sequence[str],
    retain_texts: Sequence[str],
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    *,
    n: int = 20,
    p_ratio: float | int = 95.0,
    p_dyn: float | int = 95.0,
    clamp: float | int = 500.0,
    clamp_scale: float | int | None = None,
    window: int = 32,
    min_tokens: int = 8,
    retain_threshold: float | int = 0.01,
    rmu: RMUConfig | None = None,
    static: StaticSettings | None = None,
    calibration_texts: Sequence[str] | None = None,
    methods: Sequence[str] = METHODS,
    protocol: str = "completion",
    batch_size: int = 8,
    rescore: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every method in ``methods`` (module docstring for the schema). With ``rescore`` the questions are
    scored once without any method and, for the SAE methods (static clamping, DSG with a causal gate), only the
    questions each one edits at a read position are re-scored (:class:`~dsg_lens.eval.rescore.TouchedScorer`:
    the others keep scores bit-identical to the base's); RMU changes the weights, so its model is scored in full.
    ``rescore=False`` scores every question under every method. ``static``: static clamping's
    settings (default: ``n``, ``retain_threshold`` and ``clamp`` as its multiplier, so both SAE methods push
    latents to the same value). ``calibration_texts``: what DSG's tau is calibrated on (default: the retain
    texts; :func:`dsg_lens.pipeline.calibration_texts` gives the held-out questions the pipeline uses)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {METHODS}")
    device = model.cfg.device
    fq, rq = list(forget_questions), list(retain_questions)
    static = static or StaticSettings(n=n, retain_threshold=retain_threshold, multiplier=clamp)
    calibration = list(retain_texts) if calibration_texts is None else list(calibration_texts)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        return evaluate_questions(m, fq, rq, protocol, batch_size, progress)

    scored = rescore and any(m in methods for m in ("base", "static_clamp", "dsg_paper", "dsg_window"))
    scorer = TouchedScorer(model, {"forget": fq, "retain": rq}, protocol, batch_size=batch_size,
                           progress=progress) if scored else None

    def evaluate_sae_method(method: Any, touched: Callable[[TouchedScorer], set[tuple[str, int]]]) -> dict[str, Any]:
        """``method`` attached: re-scoring the questions ``touched(scorer)`` names, or everything."""
        if scorer is None:
            with method.attached(model):
                return evaluate(model)
        return scorer.metrics(scorer.score(method, touched(scorer)))

    out: dict[str, dict[str, Any]] = {}
    if "base" in methods:
        out["base"] = {**(scorer.metrics() if scorer is not None else evaluate(model)), "cost": None}
    sae_methods = [m for m in methods if m in ("static_clamp", "dsg_paper", "dsg_window")]
    if sae_methods:
        stats = measure(lambda: (
            collect_latent_stats(model, sae, forget_texts, batch_size=batch_size, progress=progress),
            collect_latent_stats(model, sae, retain_texts, batch_size=batch_size, progress=progress),
        ), device)
        forget_stats, retain_stats = stats.value
    if "static_clamp" in methods:
        fitted = measure(lambda: StaticClamp.from_stats(
            sae, forget_stats, retain_stats, n=static.n, retain_threshold=static.retain_threshold,
            multiplier=static.multiplier), device)
        clamp_ids = fitted.value.latent_ids
        metrics = evaluate_sae_method(fitted.value, lambda sc: sc.fired(sc.scan(sae, clamp_ids), len(clamp_ids)))
        out["static_clamp"] = {**metrics, "cost": _combine(stats.cost(), fitted.cost()), "features": clamp_ids}
    gates = (("dsg_paper", paper_rule_gate(protocol, min_tokens)),
             ("dsg_window", WindowGate(window=window, min_tokens=min_tokens)))
    for name, gate in gates:
        if name not in methods:
            continue
        fitted = measure(lambda gate=gate: DynamicSAEGuardrail.fit(
            model, sae, select_features(forget_stats, retain_stats, n=n, p_ratio=p_ratio), calibration,
            p_dyn=p_dyn, clamp=clamp, clamp_scale=clamp_scale, gate=gate, batch_size=batch_size, progress=progress,
        ), device)
        guard = fitted.value
        if guard.gate.causal:
            metrics = evaluate_sae_method(guard, lambda sc, g=guard: sc.gated(sc.scan(sae, g.latent_ids), g.gate,
                                                                               len(g.latent_ids)))
        else:  # a non-causal gate's edits cannot be read off a scan of prefixes
            with guard.attached(model):
                metrics = evaluate(model)
        firing = gate_firing(guard, model, question_texts(fq, protocol, model), question_texts(rq, protocol, model),
                             batch_size=batch_size)
        out[name] = {**metrics, "cost": _combine(stats.cost(), fitted.cost()), "features": guard.latent_ids,
                     "gate": {k: firing[k] for k in ("tau", "tpr", "fpr", "gate")}}
    if "rmu" in methods:
        trained = measure(lambda: rmu_unlearn(model, forget_texts, retain_texts, rmu, progress=progress), device)
        metrics = evaluate(trained.value.model)
        out["rmu"] = {**metrics, "cost": trained.cost(), "rmu": {k: v for k, v in trained.value.to_dict().items()
                                                                 if k != "log"},
                      "final_losses": trained.value.log[-1]}
        del trained
    params = {"n": n, "p_ratio": p_ratio, "p_dyn": p_dyn, "clamp": clamp, "clamp_scale": clamp_scale,
              "window": window, "min_tokens": min_tokens, "static": asdict(static), "protocol": protocol,
              "rmu": asdict(rmu or RMUConfig()), "n_forget_texts": len(forget_texts),
              "n_calibration_texts": len(calibration), "rescore": rescore,
              "n_retain_texts": len(retain_texts), "device": str(device), "dtype": str(model.cfg.dtype)}
    return {"methods": out, "order": [m for m in METHODS if m in out], "params": params}


def compare_at_best(
    model: nn.Module,
    sae: SAE,
    forget_texts: Sequence[str],
    retain_texts: Sequence[str],
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    points: Mapping[str, Mapping[str, Any]],
    *,
    calibration_texts: Sequence[str] | None = None,
    protocol: str = "completion",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Base and every method of ``points`` (:func:`~dsg_lens.baselines.best.best_points`: ``{"dsg_window" |
    "static_clamp" | "rmu": {"row", "source", "sweep_params"}}``) at its best point, by :func:`compare_methods`."""
    unknown = sorted(set(points) - {"dsg_window", "static_clamp", "rmu"})
    if unknown:
        raise ValueError(f"compare_at_best runs dsg_window, static_clamp and rmu, not {unknown}")
    kwargs: dict[str, Any] = {}
    if "dsg_window" in points:
        row, params = points["dsg_window"]["row"], points["dsg_window"]["sweep_params"]
        gate = params.get("gate", {})
        if gate.get("kind", "window") != "window":
            raise ValueError(f"the DSG sweep used a {gate.get('kind')!r} gate; compare_at_best runs the window gate")
        clamp_key = "clamp_scale" if params.get("clamp_is_relative") else "clamp"
        kwargs.update(n=row["n"], p_ratio=row["p_ratio"], p_dyn=row["p_dyn"], **{clamp_key: row["clamp"]},
                      window=gate.get("window", 32), min_tokens=gate.get("min_tokens", 8))
    if "static_clamp" in points:
        kwargs["static"] = static_from_row(points["static_clamp"]["row"])
    if "rmu" in points:
        kwargs["rmu"] = rmu_from_row(points["rmu"]["row"])
    methods = ["base", *[m for m in ("static_clamp", "rmu", "dsg_window") if m in points]]
    result = compare_methods(model, sae, forget_texts, retain_texts, forget_questions, retain_questions,
                             calibration_texts=calibration_texts, methods=methods, protocol=protocol,
                             batch_size=batch_size, progress=progress, **kwargs)
    result["points"] = {m: {k: p[k] for k in ("row", "source")} for m, p in points.items()}
    return result


def _ci(row: Mapping[str, Any], side: str) -> str:
    low, high = row[f"{side}_ci95"]
    return f"{row[f'{side}_acc']:.3f} [{low:.3f}, {high:.3f}]"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: method, forget and retain accuracy with their 95% (Wilson) intervals, the unlearning
    step's wall time and peak memory (above the start; the kind of memory in the header)."""
    kinds = sorted({row["cost"]["memory_kind"] for row in result["methods"].values() if row["cost"]})
    memory = f"peak MiB ({', '.join(kinds)})" if kinds else "peak MiB"
    lines = [f"| method | forget acc [95% CI] | retain acc [95% CI] | unlearning s | {memory} |",
             "|---|---|---|---|---|"]
    for name in result["order"]:
        row = result["methods"][name]
        cost = row["cost"]
        spent = f"{cost['seconds']:.1f} | {cost['peak_mib']:.0f}" if cost else "- | -"
        lines.append(f"| {name} | {_ci(row, 'forget')} | {_ci(row, 'retain')} | {spent} |")
    return "\n".join(lines)
