"""Side-by-side comparison on one model and data: base / static clamping / RMU / DSG (paper gate) / DSG (window
gate). Every method is evaluated by the same code (:func:`dsg_lens.pipeline.evaluate_questions`) and the cost of
its unlearning step is measured (:mod:`dsg_lens.baselines.cost`): DSG = statistics + selection + calibration;
static clamping = statistics + selection; RMU = training. Both DSG variants and static clamping share one pass of
statistics (its cost is added to each).

Result schema (``compare.json``)::

    {"methods": {name: {"forget_acc", "retain_acc", "forget_ci95", "retain_ci95", "forget_n", "retain_n",
                        "cost": {"seconds", "peak_mib", "memory_kind"} | null,
                        "gate": {"tau", "tpr", "fpr", "gate"} (DSG only), "features": [ids] (SAE methods)}},
     "order": [names in table order], "params": {...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sae_lens import SAE
from torch import nn

from dsg_lens.baselines.cost import measure
from dsg_lens.baselines.rmu import RMUConfig, rmu_unlearn
from dsg_lens.baselines.static_clamp import StaticClamp
from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.gate_stats import gate_firing
from dsg_lens.gate import WindowGate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import evaluate_questions, paper_rule_gate, question_texts
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats

METHODS = ("base", "static_clamp", "rmu", "dsg_paper", "dsg_window")


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
    methods: Sequence[str] = METHODS,
    protocol: str = "completion",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every method in ``methods`` (module docstring for the schema). Static clamping uses ``clamp`` as
    its multiplier (so both SAE methods push latents to the same value)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {METHODS}")
    device = model.cfg.device
    fq, rq = list(forget_questions), list(retain_questions)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        return evaluate_questions(m, fq, rq, protocol, batch_size, progress)

    out: dict[str, dict[str, Any]] = {}
    if "base" in methods:
        out["base"] = {**evaluate(model), "cost": None}
    sae_methods = [m for m in methods if m in ("static_clamp", "dsg_paper", "dsg_window")]
    if sae_methods:
        stats = measure(lambda: (
            collect_latent_stats(model, sae, forget_texts, batch_size=batch_size, progress=progress),
            collect_latent_stats(model, sae, retain_texts, batch_size=batch_size, progress=progress),
        ), device)
        forget_stats, retain_stats = stats.value
    if "static_clamp" in methods:
        fitted = measure(lambda: StaticClamp.from_stats(
            sae, forget_stats, retain_stats, n=n, retain_threshold=retain_threshold, multiplier=clamp), device)
        with fitted.value.attached(model):
            metrics = evaluate(model)
        out["static_clamp"] = {**metrics, "cost": _combine(stats.cost(), fitted.cost()),
                               "features": fitted.value.latent_ids}
    gates = (("dsg_paper", paper_rule_gate(protocol, min_tokens)),
             ("dsg_window", WindowGate(window=window, min_tokens=min_tokens)))
    for name, gate in gates:
        if name not in methods:
            continue
        fitted = measure(lambda gate=gate: DynamicSAEGuardrail.fit(
            model, sae, select_features(forget_stats, retain_stats, n=n, p_ratio=p_ratio), retain_texts,
            p_dyn=p_dyn, clamp=clamp, clamp_scale=clamp_scale, gate=gate, batch_size=batch_size, progress=progress,
        ), device)
        guard = fitted.value
        with guard.attached(model):
            metrics = evaluate(model)
        firing = gate_firing(guard, model, question_texts(fq, protocol, model), question_texts(rq, protocol, model),
                             batch_size=batch_size)
        out[name] = {**metrics, "cost": _combine(stats.cost(), fitted.cost()), "features": guard.latent_ids,
                     "gate": {k: firing[k] for k in ("tau", "tpr", "fpr", "gate")}}
    if "rmu" in methods:
        trained = measure(lambda: rmu_unlearn(model, forget_texts, retain_texts, rmu, progress=progress), device)
        metrics = evaluate(trained.value.model)
        out["rmu"] = {**metrics, "cost": trained.cost(), "rmu": trained.value.to_dict()}
        del trained
    params = {"n": n, "p_ratio": p_ratio, "p_dyn": p_dyn, "clamp": clamp, "clamp_scale": clamp_scale,
              "window": window, "min_tokens": min_tokens, "retain_threshold": retain_threshold, "protocol": protocol,
              "rmu": asdict(rmu or RMUConfig()), "n_forget_texts": len(forget_texts),
              "n_retain_texts": len(retain_texts), "device": str(device), "dtype": str(model.cfg.dtype)}
    return {"methods": out, "order": [m for m in METHODS if m in out], "params": params}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: method, forget acc, retain acc, unlearning seconds and peak MiB."""
    lines = ["| method | forget acc | retain acc | unlearning s | peak MiB |", "|---|---|---|---|---|"]
    for name in result["order"]:
        row = result["methods"][name]
        cost = row["cost"] or {"seconds": 0.0, "peak_mib": 0.0}
        lines.append(f"| {name} | {row['forget_acc']:.3f} | {row['retain_acc']:.3f} | {cost['seconds']:.1f} | "
                     f"{cost['peak_mib']:.0f} |")
    return "\n".join(lines)
