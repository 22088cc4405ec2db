"""Gate true/false positive rates by input shape: which gate, calibrated on what, fires on forget questions and
not on retain questions, as cloze contexts, plain questions and inside the chat template.

For every number of features N, gate and calibration source, tau is the ``p_dyn`` percentile of the gate's
calibration scores on the calibration texts (the retain corpus, or held-out retain questions in every shape), and
the rates are the shares of forget (TPR) and retain (FPR) questions whose input has the gate on at its last token,
per shape; AUROC (forget vs retain gate scores, ties counted half) shows the separability tau does not change.
One scan per text set serves every N and gate (:mod:`dsg_lens.scan`).

Result schema: ``{"params": {...}, "rows": [{"n", "gate", "gate_params", "calibration", "tau",
"by_shape": {shape: {"tpr", "fpr", "auroc"}}}]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.gate_stats import QUESTION_SHAPES, question_inputs
from dsg_lens.gate import calibrate_tau, gate_from_dict
from dsg_lens.scan import RankScan, gate_scores_from_scan, scan_first_rank
from dsg_lens.selection import select_features
from dsg_lens.stats import LatentStats
from dsg_lens.studies.common import StudyConfig

DEFAULT_GATES: dict[str, dict[str, Any]] = {
    "paper": {"kind": "paper"},
    "prefix (min 4)": {"kind": "prefix", "min_tokens": 4},
    "prefix (min 8)": {"kind": "prefix", "min_tokens": 8},
    "window 8 (min 4)": {"kind": "window", "window": 8, "min_tokens": 4},
    "window 32 (min 8)": {"kind": "window", "window": 32, "min_tokens": 8},
}


@dataclass
class GateShapesConfig(StudyConfig):
    """Settings of :func:`gate_shapes_study`."""

    n_values: tuple[int, ...] = (10, 20, 40)
    p_ratio: float = 95.0
    p_dyn: float = 95.0
    calibrations: tuple[str, ...] = ("corpus", "questions")
    gates: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_GATES))
    batch_size: int = 16

    def __post_init__(self) -> None:
        bad = sorted(set(self.calibrations) - {"corpus", "questions"})
        if bad or not self.calibrations:
            raise ValueError(f"calibrations {list(self.calibrations)}: use 'corpus' and/or 'questions'")
        if not self.n_values or min(self.n_values) < 1:
            raise ValueError(f"n_values={self.n_values} must be positive numbers of features")
        for name, spec in self.gates.items():
            gate_from_dict({"tau": 0.0, **spec})  # raises on an unknown kind or parameter


def shapes_for(model: nn.Module) -> list[str]:
    """The question shapes ``model``'s tokenizer can render (the chat shapes need a chat template)."""
    has_template = getattr(getattr(model, "tokenizer", None), "chat_template", None) is not None
    return [s for s in QUESTION_SHAPES if has_template or not s.startswith("chat")]


def auroc(positive: Float[Tensor, " p"], negative: Float[Tensor, " q"]) -> float:
    """P(score of a forget input > score of a retain input), ties counted half."""
    greater = (positive[:, None] > negative[None]).double().mean()
    ties = (positive[:, None] == negative[None]).double().mean()
    return float(greater + 0.5 * ties)


def gate_shapes_study(
    model: nn.Module,
    sae: SAE,
    forget_stats: LatentStats,
    retain_stats: LatentStats,
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    calibration_questions: Sequence[MCQ],
    retain_corpus: Sequence[str],
    config: GateShapesConfig | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """The table of the module docstring. ``calibration_questions`` must be disjoint from the evaluated ones."""
    config = config or GateShapesConfig()
    overlap = {q.id for q in calibration_questions} & {q.id for q in [*forget_questions, *retain_questions]}
    if overlap:
        raise ValueError(f"{len(overlap)} calibration questions are also evaluated (e.g. {sorted(overlap)[:3]})")
    ranked = select_features(forget_stats, retain_stats, n=max(config.n_values), p_ratio=config.p_ratio)
    shapes = shapes_for(model)

    def scan(texts: Sequence[str]) -> RankScan:
        return scan_first_rank(model, sae, ranked.ids, list(texts), batch_size=config.batch_size, progress=progress)

    evaluated = {(side, shape): scan(question_inputs(model, questions, shape))
                 for side, questions in (("forget", forget_questions), ("retain", retain_questions))
                 for shape in shapes}
    calibration: dict[str, list[RankScan]] = {}
    if "corpus" in config.calibrations:
        calibration["corpus"] = [scan(retain_corpus)]
    if "questions" in config.calibrations:
        calibration["questions"] = [scan(question_inputs(model, calibration_questions, s))
                                    for s in shapes if s != "chat_no_system"]
    rows = []
    for n in config.n_values:
        for name, spec in config.gates.items():
            gate = gate_from_dict({"tau": 0.0, **spec})
            for source, scans in calibration.items():
                scores = torch.cat([gate_scores_from_scan(s, gate, n, calibration=True) for s in scans])
                tau = calibrate_tau(scores, config.p_dyn)
                by_shape = {}
                for shape in shapes:
                    forget = gate_scores_from_scan(evaluated[("forget", shape)], gate, n)
                    retain = gate_scores_from_scan(evaluated[("retain", shape)], gate, n)
                    by_shape[shape] = {"tpr": float((forget > tau).float().mean()),
                                       "fpr": float((retain > tau).float().mean()), "auroc": auroc(forget, retain)}
                rows.append({"n": n, "gate": name, "gate_params": spec, "calibration": source, "tau": tau,
                             "by_shape": by_shape})
    params = {**config.to_dict(), "shapes": shapes, "n_forget": len(forget_questions),
              "n_retain": len(retain_questions), "n_calibration_questions": len(calibration_questions),
              "features": ranked.ids}
    return {"params": params, "rows": rows}


def best_rows(result: Mapping[str, Any], max_fpr: float = 0.05) -> list[dict[str, Any]]:
    """Rows whose FPR stays <= ``max_fpr`` on every shape, by mean TPR over shapes (best first)."""
    kept = [r for r in result["rows"] if all(v["fpr"] <= max_fpr for v in r["by_shape"].values())]
    return sorted(kept, key=lambda r: -sum(v["tpr"] for v in r["by_shape"].values()) / len(r["by_shape"]))
