"""The main job on the embedded default (``dsg-lens demo``) and sweeps on it (``dsg-lens sweep``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dsg_lens.eval.sweep import SweepResult, run_question_sweep, run_sweep
from dsg_lens.models import load_model
from dsg_lens.pipeline import (
    PipelineConfig,
    base_correct_questions,
    calibration_texts,
    evaluate_questions,
    load_sae,
    load_texts,
    run_pipeline,
)
from dsg_lens.stats import collect_latent_stats
from dsg_lens.viz.render import render_figures


def run_demo(out_dir: str | Path, cfg: PipelineConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Statistics -> selection -> calibration -> guardrail -> forget/retain evaluation -> report + figures
    (``out_dir/report.json``, ``out_dir/guardrail/``, ``out_dir/figures/``)."""
    cfg = cfg or PipelineConfig()
    model = load_model(cfg.model, kind=cfg.model_kind, device=cfg.device)
    sae = load_sae(cfg.sae, device=model.cfg.device, model=cfg.model)
    report = run_pipeline(model, sae, cfg, out_dir, progress=progress)
    report["figures"] = [str(p) for p in render_figures(out_dir, Path(out_dir) / "figures")]
    return report


def sweep_embedded(
    cfg: PipelineConfig,
    out_dir: str | Path,
    *,
    n_values: Sequence[int],
    clamp_values: Sequence[float],
    p_ratio_values: Sequence[float],
    p_dyn_values: Sequence[float],
    relative: bool = False,
    naive: bool = False,
    progress: bool = True,
) -> SweepResult:
    """A sweep (one statistics pass, one gate scan per p_ratio) on the configured model, SAE and data: the
    questions are scored once without the guardrail and, per configuration, only those its guardrail clamps are
    re-scored (:func:`~dsg_lens.eval.sweep.run_question_sweep`); ``naive=True`` re-scores every question under
    every configuration (:func:`~dsg_lens.eval.sweep.run_sweep`, the reference)."""
    model = load_model(cfg.model, kind=cfg.model_kind, device=cfg.device)
    sae = load_sae(cfg.sae, device=model.cfg.device, model=cfg.model)
    forget_texts, retain_texts = load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus)
    forget = collect_latent_stats(model, sae, forget_texts, batch_size=cfg.batch_size, progress=progress,
                                  desc="statistics: forget corpus")
    retain = collect_latent_stats(model, sae, retain_texts, batch_size=cfg.batch_size, progress=progress,
                                  desc="statistics: retain corpus")
    forget_q, retain_q = base_correct_questions(model, cfg, progress)
    grid = dict(n_values=n_values, clamp_values=clamp_values, p_ratio_values=p_ratio_values,
                p_dyn_values=p_dyn_values, clamp_scale=relative, gate=cfg.make_gate(), batch_size=cfg.batch_size,
                progress=progress)
    calibration = calibration_texts(model, cfg, retain_texts)
    if naive:
        def evaluate(m) -> dict[str, Any]:
            return evaluate_questions(m, forget_q, retain_q, cfg.protocol, cfg.batch_size, progress=False)

        result = run_sweep(model, sae, forget, retain, calibration, evaluate, **grid)
    else:
        result = run_question_sweep(model, sae, forget, retain, calibration, forget_q, retain_q, cfg.protocol, **grid)
    result.params.update(config=asdict(cfg), method="dsg")
    result.save(out_dir)
    return result


