"""Zero-shot selection: no forget corpus, only a short topic description or a handful of example sentences.

Latents are ranked by the DSG rule on statistics of the ``topic_texts`` against a generic retain set
(:func:`zero_shot_features`); tau is not calibrated but taken from a grid (the DSG paper's zero-shot variant used
0.1-0.9). For each tau: forget/retain accuracy with the guardrail attached and the gate's firing rates on the
questions. ``best`` is the tau with the lowest forget accuracy among those keeping retain accuracy >= 99% of the
base model's (the paper's selection rule; null if none does).

Schema (``zeroshot.json``)::

    {"features": [ids], "base": {"forget_acc", "retain_acc"},
     "rows": [{"tau", "forget_acc", "retain_acc", "tpr", "fpr"}], "best": row | null,
     "params": {ZeroShotConfig fields, "n_topic_texts", "n_generic_texts"}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens import SAE
from torch import nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.gate_stats import gate_firing
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import paper_rule_gate, question_texts
from dsg_lens.selection import FeatureSet, select_features
from dsg_lens.stats import collect_latent_stats
from dsg_lens.studies.common import StudyConfig, accuracy, save_result

ANIMAL_TOPIC = (
    "Animals: mammals, birds, fish, reptiles, amphibians, insects and other living creatures.",
    "The wolf is a wild carnivorous mammal that hunts in packs.",
    "Sparrows and finches are small songbirds with short beaks.",
    "A salmon swims upstream to lay its eggs.",
    "The frog is an amphibian that lives near ponds.",
    "Beetles, ants and butterflies are insects with six legs.",
    "The snake is a legless reptile covered in scales.",
)
"""A topic description and example sentences for the embedded benchmark's forget domain (noun.animal)."""


def zero_shot_features(model: nn.Module, sae: SAE, topic_texts: Sequence[str], generic_texts: Sequence[str], *,
                       n: int = 20, p_ratio: float | int = 95.0, batch_size: int = 8) -> FeatureSet:
    """Rank latents by the DSG rule on ``topic_texts`` vs ``generic_texts`` and keep the top ``n``."""
    topic = collect_latent_stats(model, sae, list(topic_texts), batch_size=batch_size, progress=False)
    generic = collect_latent_stats(model, sae, list(generic_texts), batch_size=batch_size, progress=False)
    return select_features(topic, generic, n=n, p_ratio=p_ratio)


@dataclass
class ZeroShotConfig(StudyConfig):
    """Settings of :func:`zeroshot_study`: the ``taus`` grid, the selection (``n``, ``p_ratio``), the ``clamp``,
    the gate (the paper's rho, :func:`~dsg_lens.pipeline.paper_rule_gate`, deciding from ``min_tokens`` real tokens
    on under completion scoring) and the evaluation (``protocol``, ``batch_size``)."""

    taus: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    n: int = 20
    p_ratio: float | int = 95.0
    clamp: float | int = 500.0
    min_tokens: int = 8
    protocol: str = "completion"
    batch_size: int = 8

    def __post_init__(self) -> None:
        self.taus = tuple(self.taus)
        if not self.taus or any(not 0 <= t <= 1 for t in self.taus):
            raise ValueError(f"taus {list(self.taus)} must be a non-empty list of fractions in [0, 1]")


def zeroshot_study(
    model: nn.Module,
    sae: SAE,
    topic_texts: Sequence[str],
    generic_texts: Sequence[str],
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    config: ZeroShotConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot guardrails over a tau grid (module docstring for the schema)."""
    cfg = config or ZeroShotConfig()
    batch_size, protocol = cfg.batch_size, cfg.protocol
    features = zero_shot_features(model, sae, topic_texts, generic_texts, n=cfg.n, p_ratio=cfg.p_ratio,
                                  batch_size=batch_size)
    base = {"forget_acc": accuracy(model, forget_questions, protocol, batch_size),
            "retain_acc": accuracy(model, retain_questions, protocol, batch_size)}
    f_texts = question_texts(list(forget_questions), protocol, model)
    r_texts = question_texts(list(retain_questions), protocol, model)
    rows = []
    for tau in tqdm(sorted(cfg.taus), desc="zero-shot", disable=not progress):
        guard = DynamicSAEGuardrail(sae, features, paper_rule_gate(protocol, cfg.min_tokens).with_tau(tau), clamp=cfg.clamp)
        with guard.attached(model):
            metrics = {"forget_acc": accuracy(model, forget_questions, protocol, batch_size),
                       "retain_acc": accuracy(model, retain_questions, protocol, batch_size)}
        firing = gate_firing(guard, model, f_texts, r_texts, batch_size=batch_size)
        rows.append({"tau": tau, **metrics, "tpr": firing["tpr"], "fpr": firing["fpr"]})
    kept = [r for r in rows if r["retain_acc"] >= 0.99 * base["retain_acc"]]
    best = min(kept, key=lambda r: (r["forget_acc"], -r["retain_acc"])) if kept else None
    result = {"features": features.ids, "base": base, "rows": rows, "best": best,
              "params": {**cfg.to_dict(), "n_topic_texts": len(topic_texts), "n_generic_texts": len(generic_texts)}}
    return save_result(result, out_dir, "zeroshot")
