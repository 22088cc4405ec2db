"""Data efficiency: selection and calibration from a fraction of the forget corpus.

For each fraction (largest first), a seeded random subset of the forget texts (at least one text) gives the
forget statistics; retain statistics (computed once), the gate and the texts tau is calibrated on
(``calibration_texts``, default the retain texts) are unchanged. Reported per fraction: forget/retain accuracy
with the guardrail attached (questions scored once without it, then only those each guardrail clamps re-scored:
:class:`~dsg_lens.eval.rescore.TouchedScorer`), tau, the gate's firing rates on the question contexts, the
selected latents and their overlap (Jaccard) with the selection from the largest fraction.

Schema (``efficiency.json``)::

    {"base": {"forget_acc", "retain_acc"},
     "rows": [{"fraction", "n_texts", "forget_acc", "retain_acc", "forget_ci95", "retain_ci95", "forget_n",
               "retain_n", "n_rescored", "tau", "tpr", "fpr", "features", "jaccard_vs_largest"}],
     "params": {EfficiencyConfig fields, "gate", "n_forget_texts", "n_calibration_texts"}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.rescore import TouchedScorer
from dsg_lens.gate import DEFAULT_GATE, Gate, make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import question_texts
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats
from dsg_lens.studies.common import StudyConfig, save_result


def subset(texts: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """A seeded random ``fraction`` of ``texts`` (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    k = max(1, round(fraction * len(texts)))
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    return [texts[i] for i in sorted(order[:k])]


@dataclass
class EfficiencyConfig(StudyConfig):
    """Settings of :func:`efficiency_study`: the ``fractions`` of the forget corpus, the DSG fit (``n``,
    ``p_ratio``, ``p_dyn``, ``clamp``, ``clamp_scale``), the subset ``seed``, and the evaluation (``protocol``,
    ``batch_size``)."""

    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    n: int = 20
    p_ratio: float | int = 95.0
    p_dyn: float | int = 95.0
    clamp: float | int = 500.0
    clamp_scale: float | int | None = None
    seed: int = 0
    protocol: str = "completion"
    batch_size: int = 8

    def __post_init__(self) -> None:
        self.fractions = tuple(self.fractions)
        if not self.fractions:
            raise ValueError("pass at least one fraction")
        for fraction in self.fractions:
            if not 0 < fraction <= 1:
                raise ValueError(f"fraction={fraction} must be in (0, 1]")


def efficiency_study(
    model: nn.Module,
    sae: SAE,
    forget_texts: Sequence[str],
    retain_texts: Sequence[str],
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    config: EfficiencyConfig | None = None,
    *,
    gate: Gate | None = None,
    calibration_texts: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One guardrail per fraction of the forget corpus (module docstring for the schema); ``gate``: every
    guardrail's gate (default :data:`~dsg_lens.gate.DEFAULT_GATE`, tau calibrated per fraction)."""
    cfg = config or EfficiencyConfig()
    batch_size, protocol = cfg.batch_size, cfg.protocol
    gate = gate or make_gate(DEFAULT_GATE)
    calibration = list(retain_texts) if calibration_texts is None else list(calibration_texts)
    retain_stats = collect_latent_stats(model, sae, list(retain_texts), batch_size=batch_size, progress=False)
    scorer = TouchedScorer(model, {"forget": forget_questions, "retain": retain_questions}, protocol,
                           batch_size=batch_size)
    contexts = {side: question_texts(list(qs), protocol, model)
                for side, qs in (("forget", forget_questions), ("retain", retain_questions))}
    rows: list[dict[str, Any]] = []
    reference: set[int] | None = None
    for fraction in tqdm(sorted(cfg.fractions, reverse=True), desc="efficiency", disable=not progress):
        chosen = subset(forget_texts, fraction, cfg.seed)
        stats = collect_latent_stats(model, sae, chosen, batch_size=batch_size, progress=False)
        features = select_features(stats, retain_stats, n=cfg.n, p_ratio=cfg.p_ratio)
        guard = DynamicSAEGuardrail.fit(model, sae, features, calibration, p_dyn=cfg.p_dyn, clamp=cfg.clamp,
                                        clamp_scale=cfg.clamp_scale, gate=gate, batch_size=batch_size,
                                        progress=False)
        touched = scorer.gated(scorer.scan(sae, guard.latent_ids), guard.gate, len(guard.latent_ids))
        metrics = scorer.metrics(scorer.score(guard, touched))
        rates = {rate: float(guard.is_forget(model, contexts[side], batch_size=batch_size).float().mean())
                 for rate, side in (("tpr", "forget"), ("fpr", "retain"))}
        ids = set(guard.latent_ids)
        reference = ids if reference is None else reference
        rows.append({"fraction": fraction, "n_texts": len(chosen), **metrics, "n_rescored": len(touched),
                     "tau": guard.gate.tau, **rates, "features": guard.latent_ids,
                     "jaccard_vs_largest": len(ids & reference) / len(ids | reference)})
    result = {"base": scorer.metrics(), "rows": rows,
              "params": {**cfg.to_dict(), "gate": gate.to_dict(), "n_forget_texts": len(forget_texts),
                         "n_calibration_texts": len(calibration)}}
    return save_result(result, out_dir, "efficiency")
