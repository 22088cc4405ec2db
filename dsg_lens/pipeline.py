"""The end-to-end DSG pipeline behind ``dsg-lens fit / eval / demo``: sources by name -> statistics -> selection ->
calibration -> guardrail -> forget/retain evaluation -> JSON report.

Source names (strings, so the CLI can pass them):
- model: ``"smollm2-135m-instruct"`` (embedded, offline) or any TransformerLens hub name;
- SAE: ``"embedded"``, a local SAELens folder (cfg.json + sae_weights.safetensors) or ``"release:sae_id"``
  (``SAE.from_pretrained``, needs the network);
- corpora: ``"embedded:forget"`` / ``"embedded:retain"``, ``"wikitext"``, ``"wmdp-corpora:cyber-forget"``, a local
  JSONL/parquet/arrow path or a hub id;
- questions: ``"embedded:forget"`` / ``"embedded:retain"`` / ``"embedded:<wordnet domain>"``, ``"wmdp:bio"``,
  ``"mmlu:<subject>"``, a local file or a hub id.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import nn

from dsg_lens.config import CALIBRATION_SOURCES, PipelineConfig
from dsg_lens.data.loaders import (
    sample_questions,
    MCQ,
    load_corpus,
    load_embedded_benchmark,
    load_embedded_corpus,
    load_mcq,
    load_mmlu,
    load_wikitext,
    load_wmdp,
    load_wmdp_corpus,
)
from dsg_lens.eval.gate_stats import QUESTION_SHAPES, gate_firing, gate_rates_by_shape, question_inputs
from dsg_lens.gate import Gate, make_gate
from dsg_lens.eval import mcq
from dsg_lens.eval.mcq import filter_base_correct, score_mcq
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.models import EMBEDDED_MODEL, load_embedded_sae
from dsg_lens.selection import FeatureSet, select_features
from dsg_lens.stats import LatentStats, collect_latent_stats


def load_sae(spec: str, device: str | torch.device | None = None, model: str = EMBEDDED_MODEL) -> SAE:
    """An SAE from ``"embedded"`` (the one shipped for the offline ``model``), a local SAELens folder, or
    ``"release:sae_id"`` (module docstring)."""
    if spec == "embedded":
        return load_embedded_sae(device=device, model=model)
    if Path(spec).is_dir():
        return SAE.load_from_disk(spec, device=str(device or "cpu"))
    if ":" not in spec:
        raise ValueError(f"SAE {spec!r} is neither 'embedded', a local folder, nor 'release:sae_id'")
    release, sae_id = spec.split(":", 1)
    return SAE.from_pretrained(release, sae_id, device=str(device or "cpu"))


def load_texts(spec: str) -> list[str]:
    """Corpus texts from a source name (module docstring)."""
    if spec.startswith("embedded:"):
        return load_embedded_corpus(spec.split(":", 1)[1])
    if spec == "wikitext":
        return load_wikitext(min_chars=51)
    if spec.startswith("wmdp-corpora:"):
        return load_wmdp_corpus(spec.split(":", 1)[1], min_chars=51)
    return load_corpus(spec)


def load_questions(spec: str) -> list[MCQ]:
    """Multiple-choice questions from a source name (module docstring)."""
    if spec.startswith("embedded:"):
        return load_embedded_benchmark(spec.split(":", 1)[1])
    if spec.startswith("wmdp:"):
        return load_wmdp(spec.split(":", 1)[1])
    if spec.startswith("mmlu:"):
        return load_mmlu(spec.split(":", 1)[1])
    return load_mcq(spec)


def paper_rule_gate(protocol: str, min_tokens: int = 8) -> Gate:
    """The paper's rho for ``protocol``: its own per-sequence :class:`~dsg_lens.gate.PaperGate` where one pass is
    read at one position (letter protocols), its causal form :class:`~dsg_lens.gate.PrefixGate` (rho over the
    tokens so far) for completion scoring, where the paper's gate would let a candidate answer switch the
    guardrail on for the positions that predict it."""
    if protocol == "completion":
        return make_gate("prefix", min_tokens=min_tokens)
    return make_gate("paper")


def is_calibration_question(question: MCQ) -> bool:
    """Whether a retain question belongs to the calibration split (a third of the questions, by a hash of the
    id): tau is calibrated on it and it is never evaluated."""
    return int(hashlib.sha256(question.id.encode()).hexdigest(), 16) % 3 == 0


@dataclass
class FitResult:
    guard: DynamicSAEGuardrail
    forget: LatentStats
    retain: LatentStats
    features: FeatureSet
    seconds: float


def fit_guardrail(
    model: nn.Module, sae: SAE, forget_texts: list[str], retain_texts: list[str], cfg: PipelineConfig,
    progress: bool = True,
) -> FitResult:
    """Statistics on both corpora, selection, and tau calibrated on the retain corpus (timed)."""
    start = time.perf_counter()
    forget = collect_latent_stats(model, sae, forget_texts, batch_size=cfg.batch_size, progress=progress,
                                  desc="statistics: forget corpus")
    retain = collect_latent_stats(model, sae, retain_texts, batch_size=cfg.batch_size, progress=progress,
                                  desc="statistics: retain corpus")
    features = select_features(forget, retain, n=cfg.n, p_ratio=cfg.p_ratio)
    guard = DynamicSAEGuardrail.fit(
        model, sae, features, calibration_texts(model, cfg, retain_texts), p_dyn=cfg.p_dyn, clamp=cfg.clamp,
        clamp_scale=cfg.clamp_scale, gate=cfg.make_gate(), batch_size=cfg.batch_size, progress=progress,
    )
    return FitResult(guard, forget, retain, features, time.perf_counter() - start)


def calibration_texts(model: nn.Module, cfg: PipelineConfig, retain_texts: list[str]) -> list[str]:
    """What tau is calibrated on: the retain corpus, or the calibration split of the retain questions (never
    evaluated: :func:`is_calibration_question`) in the shapes a guardrail meets questions in: as ``cfg.protocol``
    shows them to the model, as plain text, and in the chat template (instruct models)."""
    if cfg.calibration not in CALIBRATION_SOURCES:
        raise ValueError(f"calibration={cfg.calibration!r}: use one of {CALIBRATION_SOURCES}")
    if cfg.calibration == "corpus":
        return retain_texts
    held_out = [q for q in load_questions(cfg.retain_questions) if is_calibration_question(q)]
    if not held_out:
        raise ValueError(f"no calibration questions in {cfg.retain_questions}: use calibration='corpus'")
    return question_calibration_texts(model, held_out, cfg.protocol)


def question_calibration_texts(model: nn.Module, held_out: list[MCQ], protocol: str) -> list[str]:
    """Held-out retain questions in the shapes a guardrail meets questions in: as ``protocol`` shows them to the
    model, as plain text, and in the chat template (instruct models)."""
    shapes = [question_texts(held_out, protocol, model), question_inputs(model, held_out, "plain")]
    if getattr(model.tokenizer, "chat_template", None) is not None and protocol != "chat":
        shapes.append(question_inputs(model, held_out, "chat"))
    return [text for shape in shapes for text in shape]


def question_texts(questions: list[MCQ], protocol: str, model: nn.Module | None = None) -> list[str]:
    """What the gate sees of each question before the answer under ``protocol``: the cloze context, the chat
    prompt (needs ``model`` for its chat template) or the lm-eval prompt."""
    if protocol == "completion":
        return [q.cloze()[0] for q in questions]
    if protocol == "chat":
        if model is None:
            raise ValueError("question_texts(protocol='chat') needs the model (its chat template)")
        return [mcq.chat_prompt(model, q) for q in questions]
    return [mcq.lm_eval_prompt(q) for q in questions]


def evaluate_questions(
    model: nn.Module, forget_q: list[MCQ], retain_q: list[MCQ], protocol: str, batch_size: int, progress: bool
) -> dict[str, Any]:
    """Forget and retain accuracy (with 95% CIs) of ``model`` as it is now (guardrail attached or not)."""
    return mcq.question_metrics({name: score_mcq(model, qs, protocol, batch_size=batch_size, progress=progress,
                                                 desc=f"{name} questions")
                                 for name, qs in (("forget", forget_q), ("retain", retain_q))})


def base_correct_questions(model: nn.Module, cfg: PipelineConfig, progress: bool) -> tuple[list[MCQ], list[MCQ]]:
    """Forget and retain questions the base model answers correctly (cached on disk), capped at max_questions
    (a seeded sample stratified by subject, :func:`~dsg_lens.data.loaders.sample_questions`)."""
    kept = []
    for side, spec in enumerate((cfg.forget_questions, cfg.retain_questions)):
        questions = filter_base_correct(model, load_questions(spec), cfg.protocol, progress=progress,
                                        desc=("forget", "retain")[side] + " questions")
        if side == 1 and cfg.calibration == "questions":
            questions = [q for q in questions if not is_calibration_question(q)]
        if not questions:
            raise ValueError(f"the base model answers none of {spec} correctly: nothing to evaluate")
        kept.append(sample_questions(questions, cfg.max_questions) if cfg.max_questions else questions)
    return kept[0], kept[1]


def run_pipeline(model: nn.Module, sae: SAE, cfg: PipelineConfig, out_dir: str | Path, progress: bool = True
                 ) -> dict[str, Any]:
    """Fit a guardrail, evaluate base vs DSG, save the guardrail, statistics and ``report.json`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    fitted = fit_guardrail(model, sae, load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus), cfg, progress)
    fitted.guard.save(out / "guardrail")
    fitted.forget.save(out / "stats_forget")
    fitted.retain.save(out / "stats_retain")
    forget_q, retain_q = base_correct_questions(model, cfg, progress)
    base = evaluate_questions(model, forget_q, retain_q, cfg.protocol, cfg.batch_size, progress)
    with fitted.guard.attached(model):
        guarded = evaluate_questions(model, forget_q, retain_q, cfg.protocol, cfg.batch_size, progress)
    gate = gate_firing(fitted.guard, model, question_texts(forget_q, cfg.protocol, model),
                       question_texts(retain_q, cfg.protocol, model), batch_size=cfg.batch_size)
    shapes = [s for s in QUESTION_SHAPES if s in ("cloze", "plain") or getattr(model.tokenizer, "chat_template", None)]
    gate["by_shape"] = gate_rates_by_shape(fitted.guard, model, forget_q, retain_q, shapes, batch_size=cfg.batch_size)
    report = {
        "config": asdict(cfg),
        "model": {"name": cfg.model, "dtype": str(model.cfg.dtype), "device": str(model.cfg.device)},
        "sae": {"hook_name": fitted.guard.hook_name, "d_sae": int(sae.cfg.d_sae)},
        "features": {"ids": fitted.features.ids, "tau": fitted.guard.gate.tau,
                     "clamp_values": fitted.guard.clamp_values.tolist(),
                     "mean_resid_norm": fitted.guard.resid_norm},
        "base": base,
        "dsg": guarded,
        "gate": gate,
        "timing_s": {"fit": fitted.seconds, "total": time.perf_counter() - wall},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
