"""Multiple-choice scoring in three protocols, accuracy with a Wilson 95% interval, base-correct filtering.

Protocols (``protocol=``):

- ``"chat"``: the model's chat template around "{question}\\nA. ..\\nB. .." with the assistant turn opened by
  "Answer: ("; each letter scores max(log p("X"), log p(" X")) (DSG paper / SAEBench).
- ``"lm_eval"``: "{question}\\nA. ..\\nD. ..\\nAnswer:" and log p(" X") (lm-eval-harness zero-shot).
- ``"completion"``: each candidate scored as a continuation of a context (:meth:`MCQ.cloze`), with
  ``completion_score`` ``"pmi"`` (log p(cont | context) - log p(cont | neutral context)), ``"sum"`` (summed
  log-prob) or ``"norm"`` (summed log-prob per UTF-8 byte of the continuation, lm-eval's ``acc_norm``).

Scoring runs the plain ``model`` (so it can be wrapped in ``with guard.attached(model):``), in right-padded
batches on the model's device; a padded row scores exactly as it would alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import EMBEDDED_DIR, MCQ, fingerprint
from dsg_lens.eval.batching import padded_logits
from dsg_lens.models import cache_root
from dsg_lens.tokens import iter_batches

__all__ = [
    "DEFAULT_MARGIN",
    "MCQResult",
    "PROTOCOLS",
    "QuestionResult",
    "base_correct_ids",
    "filter_base_correct",
    "score_mcq",
    "wilson_interval",
]

PROTOCOLS = ("chat", "lm_eval", "completion")
COMPLETION_SCORES = ("pmi", "sum", "norm")

DEFAULT_MARGIN = {"chat": 0.0, "lm_eval": 0.0, "completion": 0.5}
"""Base-correct margin (nats) by which the answer must beat every other choice."""

LETTERS = "ABCDEFGHIJ"


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% for the default ``z``)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class QuestionResult:
    """One scored question: per-choice ``scores`` (higher = preferred), ``prediction`` = their argmax."""

    id: str
    subject: str
    answer: int
    prediction: int
    scores: tuple[float, ...]

    @property
    def correct(self) -> bool:
        return self.prediction == self.answer

    @property
    def margin(self) -> float:
        """Score of the answer minus the best other score (> 0 iff correct without a tie)."""
        return self.scores[self.answer] - max(s for i, s in enumerate(self.scores) if i != self.answer)


@dataclass(frozen=True)
class MCQResult:
    """Per-question records of one scoring run, with accuracy and its Wilson 95% interval."""

    protocol: str
    records: tuple[QuestionResult, ...]

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def n_correct(self) -> int:
        return sum(r.correct for r in self.records)

    @property
    def accuracy(self) -> float:
        if not self.records:
            raise ValueError("no questions were scored: accuracy is undefined")
        return self.n_correct / self.n

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.n_correct, self.n)

    def by_subject(self) -> dict[str, MCQResult]:
        """The records split by subject (domain)."""
        subjects = sorted({r.subject for r in self.records})
        return {s: MCQResult(self.protocol, tuple(r for r in self.records if r.subject == s)) for s in subjects}

    def to_dict(self) -> dict:
        """JSON-ready summary (accuracy, interval, per subject) and per-question records."""
        return {
            "protocol": self.protocol,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci95": list(self.ci95),
            "by_subject": {s: {"n": r.n, "accuracy": r.accuracy} for s, r in self.by_subject().items()},
            "records": [{**asdict(r), "scores": list(r.scores), "correct": r.correct} for r in self.records],
        }


def _ids(model: nn.Module, text: str, prepend_bos: bool) -> list[int]:
    return model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].tolist()


def _letter_ids(model: nn.Module, n_choices: int, spaced: bool) -> list[int]:
    """Token ids of "A", "B", .. (or " A", " B", ..); each must be one token."""
    if n_choices > len(LETTERS):
        raise ValueError(f"letter protocols support at most {len(LETTERS)} choices, got {n_choices}")
    ids = []
    for letter in LETTERS[:n_choices]:
        text = f" {letter}" if spaced else letter
        tokens = _ids(model, text, prepend_bos=False)
        if len(tokens) != 1:
            raise ValueError(f"{text!r} is {len(tokens)} tokens for this tokenizer: letter protocols need single-"
                             "token letters; use protocol='completion'")
        ids.append(tokens[0])
    return ids


def _listing(q: MCQ) -> str:
    return q.question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))


def _chat_prompt(model: nn.Module, q: MCQ) -> str:
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the 'chat' protocol needs a tokenizer with a chat template; this one has none: use "
                         "protocol='lm_eval' (base models) or 'completion'")
    turn = tokenizer.apply_chat_template([{"role": "user", "content": _listing(q)}], tokenize=False,
                                         add_generation_prompt=True)
    return turn + "Answer: ("


def _forward_log_probs(model: nn.Module, sequences: list[list[int]], spans: list[tuple[int, int]],
                       batch_size: int, progress: bool, desc: str) -> list[Float[Tensor, "span vocab"]]:
    """Log-softmax of the logits at positions ``spans[k] = (start, stop)`` of each sequence, on the CPU.

    Right-padded batches; the attention mask covers exactly each sequence's tokens.
    """
    tensors = [(k, torch.tensor(seq, dtype=torch.long)) for k, seq in enumerate(sequences)]
    out: list[Tensor | None] = [None] * len(sequences)
    with torch.inference_mode(), tqdm(total=len(sequences), desc=desc, disable=not progress) as bar:
        for batch in iter_batches(model, tensors, batch_size):
            logits = padded_logits(model, batch, [len(sequences[k]) for k in batch.seq_index])
            for row, k in enumerate(batch.seq_index):
                start, stop = spans[k]
                out[k] = torch.log_softmax(logits[row, start:stop].float(), dim=-1).cpu()
            bar.update(len(batch.seq_index))
    return out  # type: ignore[return-value]


def _letter_scores(model: nn.Module, questions: Sequence[MCQ], protocol: str, batch_size: int,
                   progress: bool) -> list[list[float]]:
    n_choices = len(questions[0].choices)
    if any(len(q.choices) != n_choices for q in questions):
        raise ValueError("letter protocols need the same number of choices in every question")
    if protocol == "chat":
        prompts = [_ids(model, _chat_prompt(model, q), prepend_bos=False) for q in questions]
        candidates = [_letter_ids(model, n_choices, spaced=False), _letter_ids(model, n_choices, spaced=True)]
    else:
        default_bos = bool(model.cfg.default_prepend_bos)
        prompts = [_ids(model, f"{_listing(q)}\nAnswer:", prepend_bos=default_bos) for q in questions]
        candidates = [_letter_ids(model, n_choices, spaced=True)]
    spans = [(len(p) - 1, len(p)) for p in prompts]
    log_probs = _forward_log_probs(model, prompts, spans, batch_size, progress, f"MCQ ({protocol})")
    scores = []
    for lp in log_probs:
        per_variant = torch.stack([lp[0, ids] for ids in candidates])  # [variant, choice]
        scores.append(per_variant.max(dim=0).values.tolist())
    return scores


def _completion_scores(model: nn.Module, questions: Sequence[MCQ], score: str, batch_size: int,
                       progress: bool) -> list[list[float]]:
    """Per-choice completion scores; each distinct (context, continuation) pair is run once."""
    default_bos = bool(model.cfg.default_prepend_bos)
    pairs: dict[tuple[str, str], int] = {}
    for q in questions:
        context, candidates, neutral = q.cloze()
        for cand in candidates:
            pairs.setdefault((context, cand), len(pairs))
            if score == "pmi":
                pairs.setdefault((neutral, cand), len(pairs))
    sequences, spans = [], []
    for context, cand in pairs:
        ctx_ids, cont_ids = _ids(model, context, default_bos), _ids(model, cand, prepend_bos=False)
        if not ctx_ids or not cont_ids:
            raise ValueError(f"empty context or continuation after tokenization: {context!r} + {cand!r}")
        sequences.append(ctx_ids + cont_ids)
        spans.append((len(ctx_ids) - 1, len(ctx_ids) + len(cont_ids) - 1))
    log_probs = _forward_log_probs(model, sequences, spans, batch_size, progress, f"MCQ (completion, {score})")
    totals = []
    for seq, (start, _), lp in zip(sequences, spans, log_probs):
        targets = torch.tensor(seq[start + 1 :], dtype=torch.long)
        totals.append(float(lp.gather(1, targets[:, None]).sum()))
    scores = []
    for q in questions:
        context, candidates, neutral = q.cloze()
        row = []
        for cand in candidates:
            value = totals[pairs[(context, cand)]]
            if score == "pmi":
                value -= totals[pairs[(neutral, cand)]]
            elif score == "norm":
                value /= len(cand.encode("utf-8"))
            row.append(value)
        scores.append(row)
    return scores


def score_mcq(
    model: nn.Module,
    questions: Sequence[MCQ],
    protocol: str = "completion",
    *,
    completion_score: str = "pmi",
    batch_size: int = 16,
    progress: bool = True,
) -> MCQResult:
    """Score ``questions`` with ``model`` under ``protocol`` (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {PROTOCOLS}")
    if completion_score not in COMPLETION_SCORES:
        raise ValueError(f"unknown completion_score {completion_score!r}: use one of {COMPLETION_SCORES}")
    if len(questions) == 0:
        raise ValueError("no questions to score: pass at least one MCQ")
    if protocol == "completion":
        scores = _completion_scores(model, questions, completion_score, batch_size, progress)
    else:
        scores = _letter_scores(model, questions, protocol, batch_size, progress)
    records = tuple(
        QuestionResult(q.id, q.subject, q.answer, max(range(len(s)), key=s.__getitem__), tuple(s))
        for q, s in zip(questions, scores)
    )
    label = f"completion-{completion_score}" if protocol == "completion" else protocol
    return MCQResult(label, records)


def _has_hooks(model: nn.Module) -> bool:
    return any(point.fwd_hooks for point in model.hook_dict.values())


def _weights_signature(model: nn.Module) -> str:
    """A cheap fingerprint of the weights (the first values of every parameter), to key the cache."""
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


SHIPPED_CACHE = EMBEDDED_DIR / "base_correct"
"""Kept ids shipped with the package (computed once for the embedded model; used when the key matches exactly)."""


def _cache_file(model: nn.Module, questions: Sequence[MCQ], key: str, root: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(model.cfg.model_name))
    return root / f"{name}-{_weights_signature(model)}" / f"{key}-{fingerprint(questions)[:16]}.json"


def base_correct_ids(
    model: nn.Module,
    questions: Sequence[MCQ],
    protocol: str = "completion",
    *,
    completion_score: str = "pmi",
    margin: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> list[str]:
    """Ids of the questions the (unhooked) base model gets right, cached on disk.

    Letter protocols: right under every ordering of the choices (24 for 4 choices), each by more than
    ``margin``. Completion: the answer's score beats every other by more than ``margin`` (order plays no role).
    ``margin=None`` takes :data:`DEFAULT_MARGIN`. The ids are cached as JSON under ``cache_dir`` (default
    ``$DSG_LENS_CACHE`` or ``~/.cache/dsg_lens``) per model (name + weight signature), data set fingerprint and
    protocol settings; ids shipped for the embedded model (:data:`SHIPPED_CACHE`) are used when the key matches.
    """
    if _has_hooks(model):
        raise ValueError("base-correct filtering must run on the base model, but hooks are attached: run it "
                         "outside `guard.attached(model)` / after model.reset_hooks()")
    if len({q.id for q in questions}) != len(questions):
        raise ValueError("question ids are not unique: base-correct filtering keys questions by id")
    margin = DEFAULT_MARGIN[protocol] if margin is None else margin
    variant = f"completion-{completion_score}" if protocol == "completion" else protocol
    key = f"{variant}-m{margin:g}-{str(model.cfg.dtype).removeprefix('torch.')}"
    path = _cache_file(model, questions, key, cache_root(cache_dir) / "base_correct")
    shipped = _cache_file(model, questions, key, SHIPPED_CACHE)
    for cached in (path, shipped) if use_cache else ():
        if cached.is_file():
            return json.loads(cached.read_text())["kept_ids"]
    if protocol == "completion":
        expanded = list(questions)
    else:
        expanded = [q.permuted(order) for q in questions for order in itertools.permutations(range(len(q.choices)))]
    result = score_mcq(model, expanded, protocol, completion_score=completion_score, batch_size=batch_size,
                       progress=progress)
    worst: dict[str, float] = {}
    for record in result.records:
        worst[record.id] = min(worst.get(record.id, math.inf), record.margin)
    kept = [q.id for q in questions if worst[q.id] > margin]
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": str(model.cfg.model_name), "key": key, "fingerprint": fingerprint(questions),
                   "n_questions": len(questions), "kept_ids": kept}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(path)
    return kept


def filter_base_correct(model: nn.Module, questions: Sequence[MCQ], protocol: str = "completion",
                        **kwargs) -> list[MCQ]:
    """The questions of :func:`base_correct_ids` (same keyword arguments), in their original order."""
    kept = set(base_correct_ids(model, questions, protocol, **kwargs))
    return [q for q in questions if q.id in kept]
