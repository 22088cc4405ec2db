"""Sequential unlearning: several forget topics removed one after another by composing guardrails.

Step 0 is the base model. At step k the guardrail of topic k is fitted on the unguarded model (statistics of its
corpus vs the retain corpus, selection, tau on the retain corpus: fitting behind earlier guardrails at the same
hook would see their clamped activations and select other latents) and attached on top of the earlier ones; then
retain accuracy and every topic's forget accuracy are measured. Everything attached is removed at the end,
exceptions included.

:func:`embedded_topics` builds topics from the shipped WordNet benchmark: each topic domain's questions are split
in two halves, the first rendered as corpus sentences ("<context> <answer>."), the second kept for evaluation;
the remaining domains form the retain corpus and retain questions the same way.

Schema (``sequential.json``)::

    {"topics": [names], "steps": [{"step", "added" (topic name or null), "retain_acc",
                                   "forget_acc": {topic: acc}, "features": [ids] | null, "tau": float | null}],
     "params": {SequentialConfig fields, "gate", "n_retain_questions", "n_questions"}}
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import MCQ, load_embedded_benchmark
from dsg_lens.gate import DEFAULT_GATE, Gate, make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats
from dsg_lens.studies.common import StudyConfig, accuracy, save_result


@dataclass
class Topic:
    """A forget topic: its ``name``, a corpus of ``texts`` and evaluation ``questions``."""

    name: str
    texts: list[str]
    questions: list[MCQ]


def _as_sentences(questions: Sequence[MCQ]) -> list[str]:
    out = []
    for q in questions:
        context, candidates, _ = q.cloze()
        out.append(f"{context}{candidates[q.answer]}.")
    return out


def _halves(questions: Sequence[MCQ], seed: int) -> tuple[list[MCQ], list[MCQ]]:
    order = torch.randperm(len(questions), generator=torch.Generator().manual_seed(seed)).tolist()
    half = len(order) // 2
    return [questions[i] for i in order[:half]], [questions[i] for i in order[half:]]


def embedded_topics(
    topics: Sequence[str] = ("noun.animal", "noun.food", "noun.plant"), *, max_questions: int | None = 60,
    keep: Sequence[str] | None = None, seed: int = 0,
) -> tuple[list[Topic], list[str], list[MCQ]]:
    """(topics, retain texts, retain questions) from the WordNet benchmark (module docstring). ``keep``
    (optional) restricts evaluation questions to these ids (e.g. the base-correct ones)."""
    everything = load_embedded_benchmark("all")
    domains = sorted({q.subject for q in everything})
    unknown = sorted(set(topics) - set(domains))
    if unknown or not topics:
        raise ValueError(f"unknown or no topic domains {unknown}: choose from {domains}")
    allowed = set(keep) if keep is not None else None

    def split(domain_questions: list[MCQ]) -> tuple[list[str], list[MCQ]]:
        corpus, held_out = _halves(domain_questions, seed)
        if allowed is not None:
            held_out = [q for q in held_out if q.id in allowed]
        return _as_sentences(corpus), held_out[:max_questions] if max_questions else held_out

    out = []
    for name in topics:
        texts, questions = split([q for q in everything if q.subject == name])
        out.append(Topic(name, texts, questions))
    retain_texts, retain_questions = [], []
    for name in domains:
        if name not in topics:
            texts, questions = split([q for q in everything if q.subject == name])
            retain_texts += texts
            retain_questions += questions
    return out, retain_texts, retain_questions[: max_questions * 2] if max_questions else retain_questions


@dataclass
class SequentialConfig(StudyConfig):
    """Settings of :func:`sequential_study`: each topic's DSG fit (``n``, ``p_ratio``, ``p_dyn``, ``clamp``,
    ``clamp_scale``) and the evaluation (``protocol``, ``batch_size``). The gate (an object) is an argument."""

    n: int = 20
    p_ratio: float | int = 95.0
    p_dyn: float | int = 95.0
    clamp: float | int = 500.0
    clamp_scale: float | int | None = None
    protocol: str = "completion"
    batch_size: int = 8


def sequential_study(
    model: nn.Module,
    sae: SAE,
    topics: Sequence[Topic],
    retain_texts: Sequence[str],
    retain_questions: Sequence[MCQ],
    config: SequentialConfig | None = None,
    *,
    gate: Gate | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Add one guardrail per topic, in order (module docstring for the schema); ``gate``: the gate of every
    guardrail (default: the paper's)."""
    if not topics:
        raise ValueError("pass at least one topic")
    cfg = config or SequentialConfig()
    batch_size, protocol = cfg.batch_size, cfg.protocol
    retain_stats = collect_latent_stats(model, sae, list(retain_texts), batch_size=batch_size, progress=False)

    def measure(step: int, added: str | None, guard: DynamicSAEGuardrail | None) -> dict[str, Any]:
        return {"step": step, "added": added, "retain_acc": accuracy(model, retain_questions, protocol, batch_size),
                "forget_acc": {t.name: accuracy(model, t.questions, protocol, batch_size) for t in topics},
                "features": None if guard is None else guard.latent_ids,
                "tau": None if guard is None else guard.gate.tau}

    guards = []
    for topic in topics:
        stats = collect_latent_stats(model, sae, topic.texts, batch_size=batch_size, progress=False)
        features = select_features(stats, retain_stats, n=cfg.n, p_ratio=cfg.p_ratio)
        guard = DynamicSAEGuardrail.fit(model, sae, features, list(retain_texts), p_dyn=cfg.p_dyn, clamp=cfg.clamp,
                                        clamp_scale=cfg.clamp_scale, gate=gate, batch_size=batch_size, progress=False)
        guard.label = f"dsg-{topic.name}"
        guards.append(guard)
    steps = [measure(0, None, None)]
    with ExitStack() as stack:
        for k, (topic, guard) in enumerate(tqdm(list(zip(topics, guards)), desc="sequential", disable=not progress), 1):
            stack.callback(guard.attach(model).remove)
            steps.append(measure(k, topic.name, guard))
    result = {"topics": [t.name for t in topics], "steps": steps,
              "params": {**cfg.to_dict(), "gate": (gate or make_gate(DEFAULT_GATE)).to_dict(),
                         "n_retain_questions": len(retain_questions),
                         "n_questions": {t.name: len(t.questions) for t in topics}}}
    return save_result(result, out_dir, "sequential")
