"""Sequential unlearning: several forget topics removed one after another by composing guardrails.

Step 0 is the base model. At step k the guardrail of topic k is fitted on the unguarded model (statistics of its
corpus vs the retain corpus, selection, tau on ``calibration_texts``: fitting behind earlier guardrails at the
same hook would see their clamped activations and select other latents) and attached on top of the earlier ones;
then retain accuracy and every topic's forget accuracy are measured. Everything attached is removed at the end,
exceptions included.

:func:`embedded_topics` builds topics from the shipped WordNet benchmark (default noun.animal -> noun.food ->
noun.artifact; the retain domains are the rest: body, location, plant, substance): the calibration split of the
retain domains' questions (:func:`~dsg_lens.pipeline.is_calibration_question`) is held out for tau and never
evaluated; every domain's other questions are split in two halves, the first rendered as corpus sentences
("<context> <answer>."), the second kept for evaluation.

Schema (``sequential.json``)::

    {"topics": [names], "steps": [{"step", "added" (topic name or null), "retain_acc",
                                   "forget_acc": {topic: acc}, "features": [ids] | null, "tau": float | null}],
     "params": {SequentialConfig fields, "gate", "n_retain_questions", "n_questions", "n_calibration_texts"}}
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens import SAE
from torch import nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import MCQ, load_embedded_benchmark, sample_questions
from dsg_lens.gate import DEFAULT_GATE, Gate, make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import is_calibration_question
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


SEQUENTIAL_TOPICS = ("noun.animal", "noun.food", "noun.artifact")
"""The default forget domains, removed in this order."""


class TopicSplit(NamedTuple):
    """What :func:`embedded_topics` returns: the forget ``topics``, the retain corpus and evaluation questions,
    and the held-out retain questions tau is calibrated on (never evaluated)."""

    topics: list[Topic]
    retain_texts: list[str]
    retain_questions: list[MCQ]
    calibration_questions: list[MCQ]


def embedded_topics(
    topics: Sequence[str] = SEQUENTIAL_TOPICS, *, max_questions: int | None = 60,
    keep: Sequence[str] | None = None, seed: int = 0,
) -> TopicSplit:
    """Topics, retain data and calibration questions from the WordNet benchmark (module docstring). ``keep``
    (optional) restricts evaluation questions to these ids (e.g. the base-correct ones); ``max_questions`` caps
    each topic's evaluation questions and the retain questions at twice that."""
    everything = load_embedded_benchmark("all")
    domains = sorted({q.subject for q in everything})
    unknown = sorted(set(topics) - set(domains))
    if unknown or not topics:
        raise ValueError(f"unknown or no topic domains {unknown}: choose from {domains}")
    if len(set(topics)) != len(topics):
        raise ValueError(f"topic domains repeat: {list(topics)}")
    allowed = set(keep) if keep is not None else None
    retain_domains = [name for name in domains if name not in topics]
    if not retain_domains:
        raise ValueError("every domain is a topic: leave at least one domain to retain")
    calibration = [q for q in everything if q.subject in retain_domains and is_calibration_question(q)]

    def split(domain: str) -> tuple[list[str], list[MCQ]]:
        corpus, held_out = _halves([q for q in everything if q.subject == domain and not is_calibration_question(q)],
                                   seed)
        if allowed is not None:
            held_out = [q for q in held_out if q.id in allowed]
        return _as_sentences(corpus), held_out[:max_questions] if max_questions else held_out

    out = [Topic(name, *split(name)) for name in topics]
    retain_texts, retain_questions = [], []
    for name in retain_domains:
        texts, questions = split(name)
        retain_texts += texts
        retain_questions += questions
    if max_questions:  # a seeded sample over all retain domains
        retain_questions = sample_questions(retain_questions, max_questions * 2, seed)
    return TopicSplit(out, retain_texts, retain_questions, calibration)


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
    calibration_texts: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Add one guardrail per topic, in order (module docstring for the schema); ``gate``: the gate of every
    guardrail (default: :data:`~dsg_lens.gate.DEFAULT_GATE`); ``calibration_texts``: what tau is calibrated on
    (default: the retain texts; :func:`~dsg_lens.pipeline.question_calibration_texts` of held-out retain
    questions is what the pipeline uses)."""
    if not topics:
        raise ValueError("pass at least one topic")
    cfg = config or SequentialConfig()
    batch_size, protocol = cfg.batch_size, cfg.protocol
    retain_stats = collect_latent_stats(model, sae, list(retain_texts), batch_size=batch_size, progress=False)
    calibration = list(retain_texts) if calibration_texts is None else list(calibration_texts)

    def measure(step: int, added: str | None, guard: DynamicSAEGuardrail | None) -> dict[str, Any]:
        return {"step": step, "added": added, "retain_acc": accuracy(model, retain_questions, protocol, batch_size),
                "forget_acc": {t.name: accuracy(model, t.questions, protocol, batch_size) for t in topics},
                "features": None if guard is None else guard.latent_ids,
                "tau": None if guard is None else guard.gate.tau}

    guards = []
    for topic in topics:
        stats = collect_latent_stats(model, sae, topic.texts, batch_size=batch_size, progress=False)
        features = select_features(stats, retain_stats, n=cfg.n, p_ratio=cfg.p_ratio)
        guard = DynamicSAEGuardrail.fit(model, sae, features, calibration, p_dyn=cfg.p_dyn, clamp=cfg.clamp,
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
                         "n_questions": {t.name: len(t.questions) for t in topics},
                         "n_calibration_texts": len(calibration)}}
    return save_result(result, out_dir, "sequential")
