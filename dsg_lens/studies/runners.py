"""Each study on a :class:`~dsg_lens.studies.common.Setup` with sensible defaults (what the CLI calls).

The DSG guardrail of a setup is fitted with :func:`dsg_lens.pipeline.fit_guardrail` (the setup's config:
N, p_ratio, p_dyn, clamp); RMU's layer defaults to the SAE's layer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dsg_lens.baselines.compare import compare_methods
from dsg_lens.baselines.rmu import RMUConfig, rmu_unlearn
from dsg_lens.gate import WindowGate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import fit_guardrail, is_calibration_question, load_questions
from dsg_lens.stats import collect_latent_stats
from dsg_lens.sae_view import hook_layer, sae_hook_name
from dsg_lens.studies.attacks import PARAPHRASES, attack_study, default_attacks
from dsg_lens.studies.common import Setup, save_result
from dsg_lens.studies.efficiency import EfficiencyConfig, efficiency_study
from dsg_lens.studies.gate_shapes import GateShapesConfig, gate_shapes_study
from dsg_lens.studies.relearn import RelearnConfig, relearn_study
from dsg_lens.studies.sequential import SequentialConfig, embedded_topics, sequential_study
from dsg_lens.studies.zeroshot import ANIMAL_TOPIC, ZeroShotConfig, zeroshot_study


def default_rmu(setup: Setup, **overrides: Any) -> RMUConfig:
    """RMU settings for ``setup``: layer = the SAE's layer (else the middle block), then ``overrides``."""
    layer = hook_layer(sae_hook_name(setup.sae))
    cfg = RMUConfig(layer=layer if layer is not None else int(setup.model.cfg.n_layers) // 2)
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def _guard(setup: Setup, progress: bool) -> DynamicSAEGuardrail:
    return fit_guardrail(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, setup.config, progress).guard


def run_compare(setup: Setup, out_dir: str | Path, *, window: int = 32, rmu: RMUConfig | None = None,
                progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """:func:`~dsg_lens.baselines.compare.compare_methods` with the setup's settings; writes ``compare.json``."""
    cfg = setup.config
    result = compare_methods(
        setup.model, setup.sae, setup.forget_texts, setup.retain_texts, setup.forget_questions,
        setup.retain_questions, n=cfg.n, p_ratio=cfg.p_ratio, p_dyn=cfg.p_dyn, clamp=cfg.clamp,
        clamp_scale=cfg.clamp_scale, window=window, min_tokens=cfg.min_tokens, rmu=rmu or default_rmu(setup),
        protocol=cfg.protocol,
        batch_size=cfg.batch_size, progress=progress, **kwargs,
    )
    return save_result(result, out_dir, "compare")


def run_relearn(setup: Setup, out_dir: str | Path, *, n_examples: int = 8, steps: int = 8, lr: float = 1e-5,
                with_rmu: bool = True, rmu: RMUConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Relearning on the first ``n_examples`` forget-corpus texts: DSG vs RMU (trained here)."""
    guard = _guard(setup, progress)
    rmu_model = None
    if with_rmu:
        rmu_model = rmu_unlearn(setup.model, setup.forget_texts, setup.retain_texts, rmu or default_rmu(setup),
                                progress=progress).model
    config = RelearnConfig(steps=steps, lr=lr, protocol=setup.config.protocol,
                           eval_batch_size=setup.config.batch_size)
    return relearn_study(setup.model, guard, setup.forget_texts[:n_examples], setup.forget_questions, config,
                         rmu_model=rmu_model, out_dir=out_dir, progress=progress)


def run_sequential(setup: Setup, out_dir: str | Path, *,
                   topics: tuple[str, ...] = ("noun.animal", "noun.food", "noun.plant"),
                   max_questions: int | None = 60, progress: bool = True) -> dict[str, Any]:
    """Sequential unlearning of WordNet domains (embedded benchmark), base-correct questions only."""
    keep = [q.id for q in setup.forget_questions + setup.retain_questions]
    topic_list, retain_texts, retain_q = embedded_topics(topics, max_questions=max_questions, keep=keep)
    return sequential_study(setup.model, setup.sae, topic_list, retain_texts, retain_q,
                            SequentialConfig.from_pipeline(setup.config), out_dir=out_dir, progress=progress)


def run_efficiency(setup: Setup, out_dir: str | Path, *, fractions: tuple[float, ...] = (0.01, 0.05, 0.2, 1.0),
                   progress: bool = True) -> dict[str, Any]:
    """Selection from growing fractions of the forget corpus (the setup's fit and evaluation settings)."""
    return efficiency_study(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, setup.forget_questions,
                            setup.retain_questions, EfficiencyConfig.from_pipeline(setup.config, fractions=fractions),
                            out_dir=out_dir, progress=progress)


def run_zeroshot(setup: Setup, out_dir: str | Path, *, topic_texts: tuple[str, ...] = ANIMAL_TOPIC,
                 n_generic: int = 100, taus: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8),
                 progress: bool = True) -> dict[str, Any]:
    """Zero-shot selection from ``topic_texts`` vs the first ``n_generic`` retain-corpus texts."""
    return zeroshot_study(setup.model, setup.sae, topic_texts, setup.retain_texts[:n_generic],
                          setup.forget_questions, setup.retain_questions,
                          ZeroShotConfig.from_pipeline(setup.config, taus=taus), out_dir=out_dir, progress=progress)


def run_attacks(setup: Setup, out_dir: str | Path, *, window: int = 32,
                filler_tokens: tuple[int, ...] = (0, 32, 128, 512), turns: tuple[int, ...] = (1, 2, 3, 4),
                paraphrases: tuple[str, ...] = PARAPHRASES, progress: bool = True) -> dict[str, Any]:
    """Attacks against the paper's rho (:func:`~dsg_lens.pipeline.paper_rule_gate`: causal under completion
    scoring) and the window gate (same features), filler from the retain corpus."""
    paper_cfg = replace(setup.config, gate="prefix" if setup.config.protocol == "completion" else "paper")
    paper = fit_guardrail(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, paper_cfg, progress).guard
    robust = DynamicSAEGuardrail.fit(setup.model, setup.sae, paper.features or paper.latent_ids,
                                     setup.retain_texts, p_dyn=setup.config.p_dyn, clamp=setup.config.clamp,
                                     clamp_scale=setup.config.clamp_scale,
                                     gate=WindowGate(window=window, min_tokens=setup.config.min_tokens),
                                     batch_size=setup.config.batch_size, progress=progress)
    attacks = default_attacks(setup.model, setup.retain_texts, filler_tokens=filler_tokens, turns=turns,
                              paraphrases=paraphrases)
    result = attack_study(setup.model, {"paper": paper, f"window{window}": robust}, setup.forget_questions,
                          setup.retain_questions, attacks, protocol=setup.config.protocol,
                          batch_size=setup.config.batch_size, out_dir=None, progress=progress)
    result["params"]["window"] = window
    return save_result(result, out_dir, "attacks")


def run_gate_shapes(setup: Setup, out_dir: str | Path, config: GateShapesConfig | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Gate TPR/FPR by input shape on the setup's questions; tau from the retain corpus or from the held-out
    calibration split of the retain questions (:func:`~dsg_lens.pipeline.is_calibration_question`)."""
    cfg = setup.config
    config = config or GateShapesConfig(p_ratio=cfg.p_ratio, p_dyn=cfg.p_dyn)
    forget = collect_latent_stats(setup.model, setup.sae, setup.forget_texts, batch_size=cfg.batch_size,
                                  progress=progress)
    retain = collect_latent_stats(setup.model, setup.sae, setup.retain_texts, batch_size=cfg.batch_size,
                                  progress=progress)
    held_out = [q for q in load_questions(cfg.retain_questions) if is_calibration_question(q)]
    result = gate_shapes_study(setup.model, setup.sae, forget, retain, setup.forget_questions,
                               setup.retain_questions, held_out, setup.retain_texts, config, progress=progress)
    return save_result(result, out_dir, "gate_shapes")
