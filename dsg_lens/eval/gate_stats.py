"""How often a guardrail's gate fires on forget vs retain texts (true / false positive rates) and its scores, and
per question shape (cloze context, bare question, chat turn with or without the system prompt)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from torch import nn

from dsg_lens.data.loaders import MCQ
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.tokens import TextsOrTokens


def gate_firing(
    guard: DynamicSAEGuardrail,
    model: nn.Module,
    forget_texts: TextsOrTokens,
    retain_texts: TextsOrTokens,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """``tpr``: share of forget texts the gate calls forget-relevant; ``fpr``: the same on retain texts; the
    per-text scores (``scores_forget``, ``scores_retain``, for rho histograms) and ``tau``."""
    forget_scores = guard.gate_scores(model, forget_texts, batch_size=batch_size, progress=progress)
    retain_scores = guard.gate_scores(model, retain_texts, batch_size=batch_size, progress=progress)
    tau = guard.gate.tau
    return {
        "tau": tau,
        "gate": guard.gate.to_dict(),
        "tpr": float((forget_scores > tau).float().mean()),
        "fpr": float((retain_scores > tau).float().mean()),
        "scores_forget": forget_scores.tolist(),
        "scores_retain": retain_scores.tolist(),
    }


QUESTION_SHAPES = ("cloze", "plain", "chat", "chat_no_system")
"""What the gate can see of a question before its answer (:func:`question_inputs`)."""

_SYSTEM_PROBE = "QQSYSTEMPROBEQQ"


def _chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def question_inputs(model: nn.Module, questions: Sequence[MCQ], shape: str) -> list[str]:
    """The text the gate sees for each question (everything before the answer) in ``shape``:

    - ``"cloze"``: the completion protocol's context (``q.cloze()[0]``);
    - ``"plain"``: the bare question (``q.question``);
    - ``"chat"``: the tokenizer's chat template around the question as one user turn, with the template's
      default system prompt (if it has one) and the generation prompt that opens the assistant turn;
    - ``"chat_no_system"``: the same with an explicit empty system turn (replacing a default system prompt);
      ValueError if the template has no system turn (e.g. Gemma's refuses one).
    """
    if shape not in QUESTION_SHAPES:
        raise ValueError(f"unknown question shape {shape!r}: use one of {QUESTION_SHAPES}")
    if shape == "cloze":
        return [q.cloze()[0] for q in questions]
    if shape == "plain":
        return [q.question for q in questions]
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"question shape {shape!r} needs a tokenizer with a chat template; this model's has none "
                         "(a base model?): use shape 'cloze' or 'plain'")
    if shape == "chat":
        return [_chat(tokenizer, [{"role": "user", "content": q.question}]) for q in questions]
    try:
        probe = _chat(tokenizer, [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "x"}])
    except TemplateError as err:  # the template's raise_exception (Gemma: "System role not supported")
        raise ValueError(f"question shape 'chat_no_system': this chat template refuses a system turn ({err})") from err
    if _SYSTEM_PROBE not in probe:
        raise ValueError("question shape 'chat_no_system': this chat template drops system turns, so an empty one "
                         "cannot be written")
    return [_chat(tokenizer, [{"role": "system", "content": ""}, {"role": "user", "content": q.question}])
            for q in questions]


def gate_rates_by_shape(
    guard: DynamicSAEGuardrail,
    model: nn.Module,
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    shapes: Sequence[str] = QUESTION_SHAPES,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, dict[str, float | int]]:
    """Per question shape (:func:`question_inputs`): ``tpr``, the share of forget questions whose input switches
    the gate on at its last token (``guard.is_forget``), and ``fpr``, the same on retain questions, with
    ``n_forget`` / ``n_retain``. A shape the tokenizer cannot render raises ValueError (ask only for those it can)."""
    if not forget_questions or not retain_questions:
        raise ValueError("gate_rates_by_shape needs at least one forget and one retain question")
    if isinstance(shapes, str):
        raise ValueError(f"shapes must be a sequence of shape names, not the string {shapes!r}: use [{shapes!r}]")
    out: dict[str, dict[str, float | int]] = {}
    for shape in shapes:
        rates: dict[str, float | int] = {}
        for name, questions in (("tpr", forget_questions), ("fpr", retain_questions)):
            texts = question_inputs(model, questions, shape)
            flags = guard.is_forget(model, texts, batch_size=batch_size, progress=progress)
            rates[name] = float(flags.float().mean())
        rates["n_forget"], rates["n_retain"] = len(forget_questions), len(retain_questions)
        out[shape] = rates
    return out
