"""Each study on a :class:`~dsg_lens.studies.common.Setup` with sensible defaults (what the CLI calls).

The DSG guardrail of a setup is fitted with :func:`dsg_lens.pipeline.fit_guardrail` (the setup's config:
N, p_ratio, p_dyn, clamp, gate, calibration); RMU's layer defaults to the SAE's layer. :func:`best_settings`
reads each method's best point from the sweeps under a results folder (:mod:`dsg_lens.baselines.best`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dsg_lens.baselines.best import SWEEP_FILES, best_points
from dsg_lens.baselines.compare import (
    StaticSettings,
    compare_at_best,
    compare_methods,
    rmu_from_row,
    static_from_row,
)
from dsg_lens.baselines.rmu import RMUConfig, rmu_unlearn
from dsg_lens.baselines.rmu_grid import rmu_grid
from dsg_lens.baselines.static_clamp import StaticClamp
from dsg_lens.baselines.static_sweep import static_clamp_sweep
from dsg_lens.data.loaders import sample_questions
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import (
    PipelineConfig,
    calibration_texts,
    fit_guardrail,
    is_calibration_question,
    load_questions,
    question_calibration_texts,
)
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats
from dsg_lens.sae_view import hook_layer, sae_hook_name
from dsg_lens.probe import train_probe
from dsg_lens.studies.attacks import (
    DEFAULT_STUDY_GATES,
    FILLER_TOKENS,
    PARAPHRASES,
    SYSTEM_TOKENS,
    TURNS,
    attack_study,
    benign_neighbours,
    default_attacks,
    forget_vocabulary,
    study_gate,
)
from dsg_lens.studies.common import Setup, save_result
from dsg_lens.studies.efficiency import EfficiencyConfig, efficiency_study
from dsg_lens.studies.gate_shapes import GateShapesConfig, gate_shapes_study
from dsg_lens.studies.latent_ablation import LatentAblationConfig, latent_ablation_study
from dsg_lens.studies.relearn import RelearnConfig, relearn_study
from dsg_lens.studies.sequential import SEQUENTIAL_TOPICS, SequentialConfig, embedded_topics, sequential_study
from dsg_lens.studies.zeroshot import ANIMAL_SEEDS, ZeroShotConfig, zeroshot_study


def default_rmu(setup: Setup, **overrides: Any) -> RMUConfig:
    """RMU settings for ``setup``: layer = the SAE's layer (else the middle block), then ``overrides``."""
    layer = hook_layer(sae_hook_name(setup.sae))
    cfg = RMUConfig(layer=layer if layer is not None else int(setup.model.cfg.n_layers) // 2)
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def setup_calibration(setup: Setup) -> list[str]:
    """What the setup's DSG calibrates tau on (:func:`~dsg_lens.pipeline.calibration_texts`)."""
    return calibration_texts(setup.model, setup.config, setup.retain_texts)


@dataclass
class BestSettings:
    """Each method's settings at its best sweep point (:func:`best_settings`): DSG's pipeline settings, static
    clamping's, RMU's, and the points they came from."""

    dsg: PipelineConfig
    static: StaticSettings
    rmu: RMUConfig
    points: dict[str, Any]


def best_settings(setup: Setup, results_dir: str | Path | None, min_retain: float = 0.95) -> BestSettings:
    """Settings of DSG, static clamping and RMU at their best points in the sweeps under ``results_dir``
    (:func:`~dsg_lens.baselines.best.best_points`); a method whose sweep is missing keeps its defaults (the
    setup's config, :class:`StaticSettings`, :func:`default_rmu`)."""
    dsg, static, rmu = setup.config, StaticSettings(), default_rmu(setup)
    found: dict[str, Any] = {}
    if results_dir is not None:
        for method, path in SWEEP_FILES.items():
            if (Path(results_dir) / path).is_file():
                found.update(best_points(results_dir, min_retain, [method]))
    if "dsg_window" in found:
        row = found["dsg_window"]["row"]
        dsg = replace(dsg, n=row["n"], p_ratio=row["p_ratio"], p_dyn=row["p_dyn"], clamp=row["clamp"])
    if "static_clamp" in found:
        static = static_from_row(found["static_clamp"]["row"])
    if "rmu" in found:
        rmu = rmu_from_row(found["rmu"]["row"])
    return BestSettings(dsg, static, rmu, {m: {k: p[k] for k in ("row", "source")} for m, p in found.items()})


def run_compare(setup: Setup, out_dir: str | Path, *, window: int = 32, rmu: RMUConfig | None = None,
                progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """:func:`~dsg_lens.baselines.compare.compare_methods` with the setup's settings (tau calibrated as the setup
    says); writes ``compare.json``."""
    cfg = setup.config
    result = compare_methods(
        setup.model, setup.sae, setup.forget_texts, setup.retain_texts, setup.forget_questions,
        setup.retain_questions, n=cfg.n, p_ratio=cfg.p_ratio, p_dyn=cfg.p_dyn, clamp=cfg.clamp,
        clamp_scale=cfg.clamp_scale, window=window, min_tokens=cfg.min_tokens, rmu=rmu or default_rmu(setup),
        calibration_texts=setup_calibration(setup), protocol=cfg.protocol, batch_size=cfg.batch_size,
        progress=progress, **kwargs,
    )
    return save_result(result, out_dir, "compare")


def run_compare_best(setup: Setup, results_dir: str | Path, out_dir: str | Path, *, min_retain: float = 0.95,
                     methods: tuple[str, ...] = ("dsg_window", "static_clamp", "rmu"), progress: bool = True
                     ) -> dict[str, Any]:
    """Every method at its best point of its sweep under ``results_dir`` (:func:`~dsg_lens.baselines.compare.
    compare_at_best`), on the setup's questions; writes ``compare.json``."""
    points = best_points(results_dir, min_retain, methods)
    cfg = setup.config
    result = compare_at_best(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, setup.forget_questions,
                             setup.retain_questions, points, calibration_texts=setup_calibration(setup),
                             protocol=cfg.protocol, batch_size=cfg.batch_size, progress=progress)
    result["params"]["min_retain"] = min_retain
    return save_result(result, out_dir, "compare")


def run_static_sweep(setup: Setup, out_dir: str | Path, *, progress: bool = True, **grid: Any) -> dict[str, Any]:
    """Static clamping over a grid (:func:`~dsg_lens.baselines.static_sweep.static_clamp_sweep`; default the
    SAEBench grid) on the setup's questions; writes ``static_clamp_sweep.json``."""
    cfg = setup.config
    forget = collect_latent_stats(setup.model, setup.sae, setup.forget_texts, batch_size=cfg.batch_size,
                                  progress=progress)
    retain = collect_latent_stats(setup.model, setup.sae, setup.retain_texts, batch_size=cfg.batch_size,
                                  progress=progress)
    result = static_clamp_sweep(setup.model, setup.sae, forget, retain, setup.forget_questions,
                                setup.retain_questions, protocol=cfg.protocol, batch_size=cfg.batch_size,
                                progress=progress, **grid)
    result["params"]["config"] = asdict(cfg)
    return save_result(result, out_dir, "static_clamp_sweep")


def run_rmu_grid(setup: Setup, out_dir: str | Path, configs: list[RMUConfig], *, min_retain: float = 0.95,
                 resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """:func:`~dsg_lens.baselines.rmu_grid.rmu_grid` on the setup's corpora and questions (``rmu_grid.json``)."""
    cfg = setup.config
    return rmu_grid(setup.model, setup.forget_texts, setup.retain_texts, setup.forget_questions,
                    setup.retain_questions, configs, min_retain=min_retain, protocol=cfg.protocol,
                    batch_size=cfg.batch_size, out_dir=out_dir, resume=resume, progress=progress)


RELEARN_ARMS = ("static_clamp", "dsg", "rmu")
"""The unlearning methods a relearning run attacks (the base model is always an arm)."""


def run_relearn(setup: Setup, out_dir: str | Path, config: RelearnConfig | None = None, *,
                arms: tuple[str, ...] = RELEARN_ARMS, best_from: str | Path | None = None, min_retain: float = 0.95,
                rmu: RMUConfig | None = None, with_retain: bool = False, progress: bool = True) -> dict[str, Any]:
    """Relearning (:func:`~dsg_lens.studies.relearn.relearn_study`) of the base model and each of ``arms``: DSG
    and static clamping stay attached while the model is fine-tuned, RMU's weights are fine-tuned. Each method
    at its best point (retain accuracy >= ``min_retain``) in the sweeps under ``best_from`` (:func:`best_settings`;
    else its defaults), ``rmu`` overriding RMU's settings."""
    unknown = sorted(set(arms) - set(RELEARN_ARMS))
    if unknown:
        raise ValueError(f"unknown relearning arms {unknown}: choose from {RELEARN_ARMS}")
    best = best_settings(setup, best_from, min_retain)
    rmu_cfg = rmu or best.rmu
    attached: dict[str, Any] = {}
    if "static_clamp" in arms or "dsg" in arms:
        fitted = fit_guardrail(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, best.dsg, progress)
    if "static_clamp" in arms:
        attached["static_clamp"] = StaticClamp.from_stats(
            setup.sae, fitted.forget, fitted.retain, n=best.static.n, retain_threshold=best.static.retain_threshold,
            multiplier=best.static.multiplier)
    if "dsg" in arms:
        attached["dsg"] = fitted.guard
    unlearned = {}
    if "rmu" in arms:
        unlearned["rmu"] = rmu_unlearn(setup.model, setup.forget_texts, setup.retain_texts, rmu_cfg,
                                       progress=progress).model
    config = config or RelearnConfig()
    config = replace(config, protocol=setup.config.protocol, eval_batch_size=setup.config.batch_size)
    result = relearn_study(setup.model, setup.forget_texts, setup.forget_questions, config, attached=attached,
                           unlearned=unlearned, retain_questions=setup.retain_questions if with_retain else None,
                           out_dir=None, progress=progress)
    settings = {"rmu": asdict(rmu_cfg), "static_clamp": asdict(best.static),
                "dsg": {k: getattr(best.dsg, k) for k in ("n", "p_ratio", "p_dyn", "clamp", "gate")}}
    sweep_of = {"rmu": "rmu", "static_clamp": "static_clamp", "dsg": "dsg_window"}
    result["params"].update(settings={arm: settings[arm] for arm in arms},
                            points={arm: best.points[sweep_of[arm]] for arm in arms if sweep_of[arm] in best.points})
    return save_result(result, out_dir, "relearn")


def run_sequential(setup: Setup, out_dir: str | Path, *, topics: tuple[str, ...] = SEQUENTIAL_TOPICS,
                   max_questions: int | None = 60, progress: bool = True) -> dict[str, Any]:
    """Sequential unlearning of WordNet domains (embedded benchmark), base-correct questions only, tau from the
    held-out retain-domain questions in the setup's shapes."""
    keep = [q.id for q in setup.forget_questions + setup.retain_questions]
    split = embedded_topics(topics, max_questions=max_questions, keep=keep)
    cfg = setup.config
    calibration = question_calibration_texts(setup.model, split.calibration_questions, cfg.protocol)
    return sequential_study(setup.model, setup.sae, split.topics, split.retain_texts, split.retain_questions,
                            SequentialConfig.from_pipeline(cfg), gate=cfg.make_gate(), calibration_texts=calibration,
                            out_dir=out_dir, progress=progress)


def run_efficiency(setup: Setup, out_dir: str | Path, *, fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0),
                   progress: bool = True) -> dict[str, Any]:
    """Selection from growing fractions of the forget corpus (the setup's fit, gate, calibration and evaluation
    settings)."""
    return efficiency_study(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, setup.forget_questions,
                            setup.retain_questions, EfficiencyConfig.from_pipeline(setup.config, fractions=fractions),
                            gate=setup.config.make_gate(), calibration_texts=setup_calibration(setup),
                            out_dir=out_dir, progress=progress)


def run_zeroshot(setup: Setup, out_dir: str | Path, *, seed_words: tuple[str, ...] = ANIMAL_SEEDS,
                 n_generic: int = 100, taus: tuple[float, ...] = ZeroShotConfig.taus,
                 progress: bool = True) -> dict[str, Any]:
    """Zero-shot selection from ``seed_words`` vs the first ``n_generic`` retain-corpus texts, the setup's gate
    with tau from the grid ``taus``."""
    return zeroshot_study(setup.model, setup.sae, seed_words, setup.retain_texts[:n_generic],
                          setup.forget_questions, setup.retain_questions,
                          ZeroShotConfig.from_pipeline(setup.config, taus=taus), gate=setup.config.make_gate(),
                          out_dir=out_dir, progress=progress)


def run_latent_ablation(setup: Setup, out_dir: str | Path, config: LatentAblationConfig | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Each latent DSG selects with the setup's settings (N, p_ratio), zero-ablated on forget and retain text."""
    cfg = setup.config
    forget = collect_latent_stats(setup.model, setup.sae, setup.forget_texts, batch_size=cfg.batch_size,
                                  progress=progress)
    retain = collect_latent_stats(setup.model, setup.sae, setup.retain_texts, batch_size=cfg.batch_size,
                                  progress=progress)
    features = select_features(forget, retain, n=cfg.n, p_ratio=cfg.p_ratio)
    config = config or LatentAblationConfig(batch_size=cfg.batch_size)
    result = latent_ablation_study(setup.model, setup.sae, features.ids, setup.forget_texts, setup.retain_texts,
                                   config, progress=progress)
    result["params"].update(n=cfg.n, p_ratio=cfg.p_ratio, rule="dsg")
    return save_result(result, out_dir, "latent_ablation")


def run_attacks(setup: Setup, out_dir: str | Path, *, gates: tuple[str, ...] = DEFAULT_STUDY_GATES,
                filler_tokens: tuple[int, ...] = FILLER_TOKENS, filler_after: tuple[int, ...] | None = None,
                turns: tuple[int, ...] = TURNS, system_tokens: tuple[int, ...] = SYSTEM_TOKENS,
                paraphrases: tuple[str, ...] = PARAPHRASES, neighbours: bool = True, error_term: bool = True,
                measure_accuracy: bool = True, max_retain_attacked: int | None = None,
                filler_texts: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """The attack suite against the study gates ``gates`` (:func:`~dsg_lens.studies.attacks.study_gate`), all
    on the setup's selected features, each calibrated on the setup's calibration texts; a probe trained on the
    setup's corpora at the SAE's hook when a gate needs one; filler from ``filler_texts`` (default: the retain
    corpus)."""
    cfg = setup.config
    fitted = fit_guardrail(setup.model, setup.sae, setup.forget_texts, setup.retain_texts, cfg, progress)
    probe = None
    if any("probe" in name for name in gates):
        probe = train_probe(setup.model, setup.forget_texts, setup.retain_texts, sae_hook_name(setup.sae),
                            batch_size=cfg.batch_size, progress=progress)
    calibration = setup_calibration(setup)
    guards = {name: DynamicSAEGuardrail.fit(
        setup.model, setup.sae, fitted.features, calibration, p_dyn=cfg.p_dyn, clamp=cfg.clamp,
        clamp_scale=cfg.clamp_scale, batch_size=cfg.batch_size, progress=progress,
        gate=study_gate(name, protocol=cfg.protocol, window=cfg.window, min_tokens=cfg.min_tokens, probe=probe))
        for name in gates}
    attacks = default_attacks(setup.model, filler_texts or setup.retain_texts, filler_tokens=filler_tokens,
                              filler_after=filler_after, turns=turns, paraphrases=paraphrases,
                              system_tokens=system_tokens)
    words = forget_vocabulary(setup.forget_texts, setup.retain_texts) if neighbours else []
    result = attack_study(setup.model, guards, setup.forget_questions, setup.retain_questions, attacks,
                          neighbours=benign_neighbours(setup.retain_questions, words) if neighbours else None,
                          neighbour_words=words, error_term=error_term,
                          retain_attacked=sample_questions(setup.retain_questions, max_retain_attacked)
                          if max_retain_attacked is not None else None,
                          measure_accuracy=measure_accuracy, protocol=cfg.protocol, batch_size=cfg.batch_size,
                          out_dir=None, progress=progress)
    result["params"].update(gates=list(gates), features=fitted.features.ids, sae_hook=sae_hook_name(setup.sae),
                            probe=None if probe is None else probe.to_dict())
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
