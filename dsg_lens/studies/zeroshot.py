"""Zero-shot selection: no forget corpus, only a few seed words that name the topic.

Latents are chosen without forget-corpus statistics (:func:`zero_shot_features`): their activations on the seed
words (top-activating tokens; the words as comma-separated lists in a few seeded orders, :func:`seed_texts`) are
ranked by the DSG rule (ratio filter at ``p_ratio``, top ``n`` by activation) against lists of the same format
made of generic words (:func:`generic_word_lists`, drawn from retain text: comparing short word lists with long
paragraphs would pick latents of short inputs, which fire on every question), and
tau is not calibrated but taken from a grid (the DSG paper's zero-shot variant: features from descriptions, tau
0.1-0.9). For each tau: forget/retain accuracy with the guardrail attached (questions scored once without it, then
only those the guardrail clamps re-scored: :class:`~dsg_lens.eval.rescore.TouchedScorer`) and the gate's firing
rates on the question contexts. ``best``: the lowest forget accuracy with retain accuracy >= ``min_retain``
(:func:`~dsg_lens.baselines.best.best_point`; null if no tau keeps it).

Schema (``zeroshot.json``)::

    {"features": [ids], "seed_words": [...], "base": {"forget_acc", "retain_acc", ...},
     "rows": [{"tau", "forget_acc", "retain_acc", "forget_ci95", "retain_ci95", "forget_n", "retain_n",
               "n_rescored", "tpr", "fpr"}], "best": row | null,
     "params": {ZeroShotConfig fields, "gate", "n_seed_texts", "n_generic_texts" (the texts words are drawn from)}}
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

from dsg_lens.baselines.best import best_point
from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.rescore import TouchedScorer
from dsg_lens.gate import DEFAULT_GATE, Gate, make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import question_texts
from dsg_lens.selection import FeatureSet, select_features
from dsg_lens.stats import collect_latent_stats
from dsg_lens.studies.common import StudyConfig, save_result

ANIMAL_SEEDS = ("animal", "mammal", "bird", "fish", "insect", "reptile", "amphibian", "creature", "wildlife",
                "beast")
"""Seed words for the embedded benchmark's forget domain (noun.animal): category words, not question answers."""


def seed_texts(words: Sequence[str], n_orders: int = 8, seed: int = 0) -> list[str]:
    """The seed ``words`` as comma-separated lists, in ``n_orders`` seeded shuffles (so every word is read in
    several contexts and none is only ever the first token)."""
    if not words or any(not w.strip() for w in words):
        raise ValueError("pass at least one non-empty seed word")
    if n_orders < 1:
        raise ValueError(f"n_orders={n_orders} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    return [", ".join(words[i] for i in torch.randperm(len(words), generator=gen).tolist()) for _ in range(n_orders)]


def generic_word_lists(texts: Sequence[str], exclude: Sequence[str], n_words: int, n_lists: int,
                       seed: int = 0) -> list[str]:
    """Comma-separated lists of ``n_words`` words drawn (seeded) from ``texts`` (words: whitespace-split,
    punctuation stripped, at least two characters with a letter, none of ``exclude``): the seed words' format
    with generic words, so the comparison picks latents of the words, not of the list format or of short inputs."""
    skip = {w.lower() for w in exclude}
    words = sorted({w for text in texts for raw in text.split() if len(w := raw.strip(_PUNCTUATION).lower()) >= 2
                    and any(c.isalpha() for c in w) and w not in skip})
    if len(words) < n_words:
        raise ValueError(f"the generic texts hold {len(words)} distinct words, fewer than the {n_words} a list needs")
    gen = torch.Generator().manual_seed(seed)
    return [", ".join(words[i] for i in torch.randperm(len(words), generator=gen)[:n_words].tolist())
            for _ in range(n_lists)]


_PUNCTUATION = ".,;:!?()[]{}\"'`"


def zero_shot_features(model: nn.Module, sae: SAE, seed_words: Sequence[str], generic_texts: Sequence[str], *,
                       n: int = 20, p_ratio: float | int = 95.0, n_orders: int = 8, batch_size: int = 8) -> FeatureSet:
    """Rank latents by the DSG rule on the seed words (:func:`seed_texts`) against lists of the same length of
    words from ``generic_texts`` (:func:`generic_word_lists`, four times as many lists); keep the top ``n``. No
    forget-corpus statistics are used."""
    topic = collect_latent_stats(model, sae, seed_texts(seed_words, n_orders), batch_size=batch_size, progress=False)
    lists = generic_word_lists(generic_texts, seed_words, len(seed_words), 4 * n_orders)
    generic = collect_latent_stats(model, sae, lists, batch_size=batch_size, progress=False)
    return select_features(topic, generic, n=n, p_ratio=p_ratio)


@dataclass
class ZeroShotConfig(StudyConfig):
    """Settings of :func:`zeroshot_study`: the ``taus`` grid, the selection (``n``, ``p_ratio``, ``n_orders`` of
    the seed words), the ``clamp``, the ``min_retain`` of ``best`` and the evaluation (``protocol``,
    ``batch_size``). The gate (an object) is an argument."""

    taus: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
    n: int = 20
    p_ratio: float | int = 95.0
    n_orders: int = 8
    clamp: float | int = 500.0
    min_retain: float = 0.95
    protocol: str = "completion"
    batch_size: int = 8

    def __post_init__(self) -> None:
        self.taus = tuple(self.taus)
        if not self.taus or any(not 0 <= t <= 1 for t in self.taus):
            raise ValueError(f"taus {list(self.taus)} must be a non-empty list of fractions in [0, 1]")


def zeroshot_study(
    model: nn.Module,
    sae: SAE,
    seed_words: Sequence[str],
    generic_texts: Sequence[str],
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    config: ZeroShotConfig | None = None,
    *,
    gate: Gate | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot guardrails over a tau grid (module docstring for the schema); ``gate``: the gate kind and its
    settings (its tau is replaced by each grid value; default :data:`~dsg_lens.gate.DEFAULT_GATE`)."""
    cfg = config or ZeroShotConfig()
    gate = gate or make_gate(DEFAULT_GATE)
    batch_size, protocol = cfg.batch_size, cfg.protocol
    features = zero_shot_features(model, sae, seed_words, generic_texts, n=cfg.n, p_ratio=cfg.p_ratio,
                                  n_orders=cfg.n_orders, batch_size=batch_size)
    scorer = TouchedScorer(model, {"forget": forget_questions, "retain": retain_questions}, protocol,
                           batch_size=batch_size)
    scan = scorer.scan(sae, features.ids)
    contexts = {side: question_texts(list(qs), protocol, model)
                for side, qs in (("forget", forget_questions), ("retain", retain_questions))}
    rows = []
    for tau in tqdm(sorted(cfg.taus), desc="zero-shot", disable=not progress):
        guard = DynamicSAEGuardrail(sae, features, gate.with_tau(tau), clamp=cfg.clamp)
        touched = scorer.gated(scan, guard.gate, len(features))
        rates = {rate: float(guard.is_forget(model, contexts[side], batch_size=batch_size).float().mean())
                 for rate, side in (("tpr", "forget"), ("fpr", "retain"))}
        rows.append({"tau": tau, **scorer.metrics(scorer.score(guard, touched)), "n_rescored": len(touched), **rates})
    result = {"features": features.ids, "seed_words": list(seed_words), "base": scorer.metrics(), "rows": rows,
              "best": best_point(rows, cfg.min_retain),
              "params": {**cfg.to_dict(), "gate": gate.to_dict(), "n_seed_texts": cfg.n_orders,
                         "n_generic_texts": len(generic_texts)}}
    return save_result(result, out_dir, "zeroshot")
