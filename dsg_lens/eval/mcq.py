"""Multiple-choice scoring in three protocols, accuracy with a Wilson 95% interval, base-correct filtering.

Protocols (``protocol=``):

- ``"chat"``: the model's chat template around "{question}\\nA. ..\\nB. .." with the assistant turn opened by
  "Answer: ("; each letter scores max(log p("X"), log p(" X")) (DSG paper / SAEBench).
- ``"lm_eval"``: "{question}\\nA. ..\\nD. ..\\nAnswer:" and log p(" X") (lm-eval-harness zero-shot).
- ``"completion"``: each candidate scored as a continuation of a context (:meth:`MCQ.cloze`), with
  ``completion_score`` ``"pmi"`` (log p(cont | context) - log p(cont | neutral context)), ``"sum"`` (summed
  log-prob) or ``"norm"`` (summed log-prob per UTF-8 byte of the continuation, lm-eval's ``acc_norm``).

Scoring runs the plain ``model`` (so it can be wrapped in ``with guard.attached(model):``) on the model's device.
Letter protocols run one right-padded pass per prompt and read only its last (answer) position. The completion
protocol is leak-free (issue 13):

- each distinct context runs once and its candidates are scored as continuations of it
  (:func:`continuation_log_probs`: a frozen KV cache on HookedTransformer, one full pass per pair elsewhere,
  e.g. TransformerBridge). With a causal gate a candidate's own tokens cannot switch the guardrail on for the
  positions that predict it; the non-causal :class:`~dsg_lens.gate.PaperGate` can, so do not score
  continuations under it.
- the PMI reference (log p(candidate | neutral context)) is a property of the evaluation, not of the guardrail:
  it runs with dsg-lens hooks suspended and is cached in memory per model and weights
  (:func:`reference_log_probs`), so a sweep of guardrail configurations computes it once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens import distributed
from dsg_lens.config import PROTOCOLS
from dsg_lens.data.loaders import EMBEDDED_DIR, MCQ, fingerprint
from dsg_lens.eval.batching import continuation_logits, frozen_prefix_cache, padded_logits, supports_kv_cache
from dsg_lens.hooks import attached_hooks, attached_owners, suspended
from dsg_lens.models import cache_root
from dsg_lens.real_tokens import RealTokenRule, pad_token_id, special_token_ids
from dsg_lens.tokens import iter_batches, n_batches

__all__ = [
    "DEFAULT_MARGIN",
    "MCQResult",
    "PROTOCOLS",
    "QuestionResult",
    "ContinuationScore",
    "ScoredSequence",
    "base_correct_ids",
    "chat_prompt",
    "clear_reference_cache",
    "continuation_log_probs",
    "continuation_scores",
    "filter_base_correct",
    "lm_eval_prompt",
    "reference_log_probs",
    "score_mcq",
    "scored_sequences",
    "wilson_interval",
]

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


def question_metrics(results: Mapping[str, MCQResult]) -> dict[str, object]:
    """``{side}_acc``, ``{side}_ci95`` and ``{side}_n`` for each side's scoring (e.g. ``forget``, ``retain``): the
    metrics of :func:`dsg_lens.pipeline.evaluate_questions`."""
    out: dict[str, object] = {}
    for side, result in results.items():
        out[f"{side}_acc"] = result.accuracy
        out[f"{side}_ci95"] = list(result.ci95)
        out[f"{side}_n"] = result.n
    return out


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


def chat_prompt(model: nn.Module, q: MCQ) -> str:
    """The ``"chat"`` protocol's prompt text: the chat template around the listing, the answer turn opened."""
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the 'chat' protocol needs a tokenizer with a chat template; this one has none: use "
                         "protocol='lm_eval' (base models) or 'completion'")
    turn = tokenizer.apply_chat_template([{"role": "user", "content": _listing(q)}], tokenize=False,
                                         add_generation_prompt=True)
    return turn + "Answer: ("


def lm_eval_prompt(q: MCQ) -> str:
    """The ``"lm_eval"`` protocol's prompt text: the listing followed by "Answer:"."""
    return f"{_listing(q)}\nAnswer:"


def _letter_prompts(model: nn.Module, questions: Sequence[MCQ], protocol: str) -> list[list[int]]:
    """Token ids of each question's prompt under a letter protocol (what the scoring pass runs)."""
    if protocol == "chat":
        return [_ids(model, chat_prompt(model, q), prepend_bos=False) for q in questions]
    default_bos = bool(model.cfg.default_prepend_bos)
    return [_ids(model, lm_eval_prompt(q), prepend_bos=default_bos) for q in questions]


Done = Callable[[Sequence[int]], None]
"""Told the indices of the sequences (or pairs) a batch has just finished (progress bars)."""

T = TypeVar("T")


def _forward_log_probs(model: nn.Module, sequences: list[list[int]], spans: list[tuple[int, int]],
                       batch_size: int, reduce: Callable[[int, Float[Tensor, "span vocab"]], T], done: Done
                       ) -> list[T]:
    """``reduce(k, log-softmax of the logits at positions spans[k] = (start, stop))`` for each sequence ``k``.

    Right-padded batches; the attention mask covers exactly each sequence's tokens. Inside
    :func:`dsg_lens.distributed.sharded` the batches are split over the ranks and the results gathered.
    """
    tensors = [(k, torch.tensor(seq, dtype=torch.long)) for k, seq in enumerate(sequences)]
    out: list[T | None] = [None] * len(sequences)
    with torch.inference_mode():
        for j, batch in enumerate(iter_batches(model, tensors, batch_size)):
            if not distributed.owns(j):
                continue
            logits = padded_logits(model, batch, [len(sequences[k]) for k in batch.seq_index])
            for row, k in enumerate(batch.seq_index):
                start, stop = spans[k]
                out[k] = reduce(k, torch.log_softmax(logits[row, start:stop].float(), dim=-1))
            done(batch.seq_index)
    return distributed.merge_owned(out)


def _letter_scores(model: nn.Module, questions: Sequence[MCQ], protocol: str, batch_size: int,
                   bar: _QuestionBar) -> list[list[float]]:
    n_choices = len(questions[0].choices)
    if any(len(q.choices) != n_choices for q in questions):
        raise ValueError("letter protocols need the same number of choices in every question")
    prompts = _letter_prompts(model, questions, protocol)
    if protocol == "chat":
        candidates = [_letter_ids(model, n_choices, spaced=False), _letter_ids(model, n_choices, spaced=True)]
    else:
        candidates = [_letter_ids(model, n_choices, spaced=True)]
    spans = [(len(p) - 1, len(p)) for p in prompts]

    def best_letter(k: int, lp: Tensor) -> list[float]:
        per_variant = torch.stack([lp[0, ids] for ids in candidates])  # [variant, choice]
        return per_variant.max(dim=0).values.tolist()

    return _forward_log_probs(model, prompts, spans, batch_size, best_letter, bar.done)


_MAX_SLOTS = 8
"""Most continuations run after one cached context row (a context with more is split over several rows)."""

Pair = tuple[tuple[int, ...], tuple[int, ...]]  # token ids of a context and of a continuation
Row = tuple[tuple[int, ...], list[int]]  # a context's token ids and the indices of the pairs continuing it


class ContinuationScore(NamedTuple):
    """A continuation's per-token ``log_probs`` [cont] (CPU) and whether greedy decoding from the context would
    produce exactly it (``greedy``: every token is the argmax; lm-eval's ``is_greedy``)."""

    log_probs: Float[Tensor, " cont"]
    greedy: bool


def _continuation_score(log_probs: Float[Tensor, "cont vocab"], cont: Sequence[int]) -> ContinuationScore:
    target = torch.tensor(cont, dtype=torch.long, device=log_probs.device)
    picked = log_probs.gather(1, target[:, None])[:, 0].cpu()
    return ContinuationScore(picked, bool((log_probs.argmax(-1) == target).all()))


def _continuation_log_probs_full(model: nn.Module, pairs: Sequence[Pair], batch_size: int, done: Done
                                 ) -> list[ContinuationScore]:
    """Each continuation's score, one right-padded forward pass per context + continuation."""
    sequences = [list(ctx) + list(cont) for ctx, cont in pairs]
    spans = [(len(ctx) - 1, len(ctx) + len(cont) - 1) for ctx, cont in pairs]
    return _forward_log_probs(model, sequences, spans, batch_size,
                              lambda k, lp: _continuation_score(lp, pairs[k][1]), done)


def _continuation_log_probs_cached(model: nn.Module, pairs: Sequence[Pair], batch_size: int, done: Done
                                   ) -> list[ContinuationScore]:
    """Each continuation's score: each distinct context runs once (all but its last token, into a frozen KV
    cache; up to ``batch_size`` contexts per pass, similar lengths together), then its continuations run as
    suffixes "last context token + continuation", one per row and pass (up to :data:`_MAX_SLOTS` passes per
    cache; a context with more continuations fills several rows). Inside :func:`dsg_lens.distributed.sharded`
    the passes are split over the ranks and the results gathered."""
    n_batches(len(pairs), batch_size)  # validates batch_size
    by_context: dict[tuple[int, ...], list[int]] = {}
    for k, (ctx, _) in enumerate(pairs):
        by_context.setdefault(ctx, []).append(k)
    slots = min(max(len(ks) for ks in by_context.values()), _MAX_SLOTS)
    rows = [(ctx, ks[i : i + slots]) for ctx, ks in by_context.items() for i in range(0, len(ks), slots)]
    rows.sort(key=lambda row: (-len(row[0]), -len(row[1])))
    out: list[ContinuationScore | None] = [None] * len(pairs)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            if not distributed.owns(start // batch_size):
                continue
            chunk = rows[start : start + batch_size]
            filler = _hole_filler(model, chunk, pairs)
            if filler is None:  # no safe filler: contexts of one length per pass (nothing to fill)
                groups = [list(g) for _, g in itertools.groupby(chunk, key=lambda row: len(row[0]))]
            else:
                groups = [chunk]
            for group in groups:
                _run_rows(model, group, pairs, pad_token_id(model) if filler is None else filler, out)
                done([k for _, ks in group for k in ks])
    return distributed.merge_owned(out)


def _run_rows(model: nn.Module, rows: list[Row], pairs: Sequence[Pair], filler: int,
              out: list[ContinuationScore | None]) -> None:
    """One frozen cache for ``rows``' contexts (but their last tokens; shorter ones followed by ``filler``, masked
    out of attention), then one pass per slot; fills ``out[k]`` for every pair index k of the rows."""
    device = torch.device(model.cfg.device)
    pad_id = pad_token_id(model)
    width = max(len(ctx) for ctx, _ in rows) - 1
    prefix = torch.full((len(rows), width), filler, dtype=torch.long)
    for row, (ctx, _) in enumerate(rows):
        prefix[row, : len(ctx) - 1] = torch.tensor(ctx[:-1], dtype=torch.long)
    cache = frozen_prefix_cache(model, prefix.to(device), [len(ctx) - 1 for ctx, _ in rows])
    for slot in range(max(len(ks) for _, ks in rows)):
        chosen = [ks[slot] if slot < len(ks) else None for _, ks in rows]  # None: a row without this slot
        suffixes = [(ctx[-1], *(pairs[k][1] if k is not None else ())) for (ctx, _), k in zip(rows, chosen)]
        lengths = [len(suffix) for suffix in suffixes]
        tokens = torch.full((len(rows), max(lengths)), pad_id, dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            tokens[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        logits = continuation_logits(model, cache, tokens.to(device), lengths)
        for row, k in enumerate(chosen):
            if k is not None:
                cont = pairs[k][1]
                out[k] = _continuation_score(torch.log_softmax(logits[row, : len(cont)].float(), dim=-1), cont)


def _hole_filler(model: nn.Module, rows: list[Row], pairs: Sequence[Pair]) -> int | None:
    """A token id to fill the hole after each shorter context of ``rows`` (before its continuation) that the
    real-token rule (what dsg-lens hooks see) ignores without changing its verdict on any token of any of the
    rows' sequences; the pad id when there is no hole; None when no special token qualifies (e.g. the pad
    token is a chat turn end and no other special may precede a sequence's first token)."""
    pad_id = pad_token_id(model)
    width = max(len(ctx) for ctx, _ in rows) - 1
    if all(len(ctx) - 1 == width for ctx, _ in rows):
        return pad_id
    rule = RealTokenRule.for_model(model)
    sequences = [(ctx, pairs[k][1]) for ctx, ks in rows for k in ks]

    def masks(seqs: list[list[int]]) -> Tensor:
        tokens = torch.full((len(seqs), max(len(seq) for seq in seqs)), pad_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return rule.mask(tokens)

    plain = masks([list(ctx + cont) for ctx, cont in sequences])
    for filler in dict.fromkeys([pad_id, *special_token_ids(model)]):
        holey = masks([[*ctx[:-1], *[filler] * (width - len(ctx) + 1), ctx[-1], *cont] for ctx, cont in sequences])
        if all(torch.equal(plain[row, : len(ctx) - 1], holey[row, : len(ctx) - 1])
               and torch.equal(plain[row, len(ctx) - 1 : len(ctx) + len(cont)],
                               holey[row, width : width + 1 + len(cont)])
               and not holey[row, len(ctx) - 1 : width].any()
               for row, (ctx, cont) in enumerate(sequences)):
            return filler
    return None


def _pair_ids(model: nn.Module, context: str, cont: str) -> Pair:
    """Token ids of a (context, continuation) pair: the context with the model's default BOS, the continuation
    without."""
    ctx_ids = _ids(model, context, bool(model.cfg.default_prepend_bos))
    cont_ids = _ids(model, cont, prepend_bos=False)
    if not ctx_ids or not cont_ids:
        raise ValueError(f"empty context or continuation after tokenization: {context!r} + {cont!r}")
    return tuple(ctx_ids), tuple(cont_ids)


def continuation_log_probs(
    model: nn.Module,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "continuations",
    use_kv_cache: bool | None = None,
) -> list[Float[Tensor, " cont"]]:
    """log p of every token of each ``(context, continuation)`` pair's continuation, given the context and the
    continuation's tokens before it (1-D float tensors on the CPU, one per pair).

    The context is tokenized with the model's default BOS, the continuation without. ``use_kv_cache=None``
    takes the KV path where the model has one (:func:`~dsg_lens.eval.batching.supports_kv_cache`): each distinct
    context runs once and its continuations continue its frozen cache. ``False``: one full forward pass per pair.
    Under hooks that are causal (a causal guardrail gate, or none) both give the same values.

    Footgun: with a NON-causal gate attached (:class:`~dsg_lens.gate.PaperGate`) the two paths differ, and both
    let the continuation's own tokens switch the guardrail on for the positions that predict it.
    """
    tokenized = [_pair_ids(model, context, cont) for context, cont in pairs]
    scores = continuation_scores(model, tokenized, batch_size=batch_size, progress=progress, desc=desc,
                                 use_kv_cache=use_kv_cache)
    return [score.log_probs for score in scores]


def continuation_scores(
    model: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "continuations",
    use_kv_cache: bool | None = None,
) -> list[ContinuationScore]:
    """:func:`continuation_log_probs` for ``(context ids, continuation ids)`` pairs already tokenized (the
    context as the model should see it, BOS included), with each continuation's greedy flag: what
    lm-eval's ``loglikelihood`` returns. Same passes, same values (KV path or one full pass per pair)."""
    tokenized = [(tuple(int(t) for t in ctx), tuple(int(t) for t in cont)) for ctx, cont in pairs]
    if any(not ctx or not cont for ctx, cont in tokenized):
        raise ValueError("every pair needs at least one context token (e.g. BOS) and one continuation token")
    if not tokenized:
        return []
    if use_kv_cache is None:
        use_kv_cache = supports_kv_cache(model)
    run = _continuation_log_probs_cached if use_kv_cache else _continuation_log_probs_full
    with tqdm(total=len(tokenized), desc=desc, unit="continuation", disable=not progress) as bar:
        return run(model, tokenized, batch_size, lambda done: bar.update(len(done)))


# ------------------------------------------------------------------------------ the PMI reference (cached)
_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict[tuple[str, str], float]]]" = (
    weakref.WeakKeyDictionary()
)


def _reference_key(model: nn.Module) -> tuple:
    """What the reference log-probs of ``model`` depend on besides the texts: its weights (a cheap content
    signature plus the parameters' in-place version counters, so an in-place edit anywhere invalidates it),
    dtype, device and BOS convention."""
    params = list(model.parameters())
    try:
        versions = tuple(p._version for p in params)
    except RuntimeError:  # inference tensors carry no version counter
        versions = None
    return (_weights_signature(model), versions, tuple(id(p) for p in params), str(model.cfg.dtype),
            str(model.cfg.device), bool(model.cfg.default_prepend_bos))


def _foreign_hooks(model: nn.Module) -> int:
    """Forward hooks on the model's HookPoints that dsg-lens did not add (``suspended`` cannot switch them off)."""
    points = {id(point): point for point in model.hook_dict.values()}
    return sum(len(point.fwd_hooks) for point in points.values()) - len(attached_hooks(model))


def reference_log_probs(
    model: nn.Module, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16, progress: bool = False
) -> list[float]:
    """Summed log p(continuation | neutral context) per ``(neutral context, continuation)`` pair: the PMI
    reference, a property of the evaluation, not of the guardrail under test. It runs with every dsg-lens hook
    suspended (:func:`~dsg_lens.hooks.suspended`) and is cached in memory per model object and weight signature,
    so a sweep over many guardrails computes it once. Hooks dsg-lens did not add stay on (and then nothing is
    cached)."""
    if not pairs:
        return []
    foreign = _foreign_hooks(model) > 0
    key = _reference_key(model)
    known_key, memo = _REFERENCES.get(model, (None, {}))
    if foreign:
        memo = {}
    elif known_key != key:
        memo = {}
        _REFERENCES[model] = (key, memo)
    missing = list(dict.fromkeys(pair for pair in pairs if pair not in memo))
    if missing:
        with suspended(model):
            values = continuation_log_probs(model, missing, batch_size=batch_size, progress=progress,
                                            desc="PMI reference (no guardrail)")
        memo.update({pair: float(lp.sum()) for pair, lp in zip(missing, values)})
    return [memo[pair] for pair in pairs]


def clear_reference_cache(model: nn.Module | None = None) -> None:
    """Forget the cached PMI references of ``model`` (of every model when None)."""
    if model is None:
        _REFERENCES.clear()
    else:
        _REFERENCES.pop(model, None)


class _QuestionBar:
    """A progress bar that counts questions, fed with the indices of the scored items (sequences, pairs) each
    batch finishes: a question counts once all its items are done."""

    def __init__(self, items: Sequence[Sequence[int]], n_items: int, desc: str, enabled: bool):
        self._left = [len(set(own)) for own in items]
        self._questions: list[list[int]] = [[] for _ in range(n_items)]
        for question, own in enumerate(items):
            for k in set(own):
                self._questions[k].append(question)
        self._bar = tqdm(total=len(items), desc=desc, unit="question", disable=not enabled)

    def done(self, finished: Sequence[int]) -> None:
        completed = 0
        for k in finished:
            for question in self._questions[k]:
                self._left[question] -= 1
                completed += self._left[question] == 0
        self._bar.update(completed)

    def __enter__(self) -> _QuestionBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:  # sharded: the other ranks scored the rest
            self._bar.update(self._bar.total - self._bar.n)
        self._bar.close()


def _completion_scores(model: nn.Module, questions: Sequence[MCQ], score: str, batch_size: int, progress: bool,
                       desc: str) -> list[list[float]]:
    """Per-choice completion scores; each distinct (context, continuation) pair is scored once, each distinct
    context runs once (KV path), the PMI reference comes from :func:`reference_log_probs`."""
    pairs: dict[tuple[str, str], int] = {}
    neutral_pairs: dict[tuple[str, str], int] = {}
    items = []  # per question: its pairs' indices
    for q in questions:
        context, candidates, neutral = q.cloze()
        items.append([pairs.setdefault((context, cand), len(pairs)) for cand in candidates])
        if score == "pmi":
            for cand in candidates:
                neutral_pairs.setdefault((neutral, cand), len(neutral_pairs))
    tokenized = [_pair_ids(model, context, cand) for context, cand in pairs]
    run = _continuation_log_probs_cached if supports_kv_cache(model) else _continuation_log_probs_full
    with _QuestionBar(items, len(pairs), desc, progress) as bar:
        totals = [float(result.log_probs.sum()) for result in run(model, tokenized, batch_size, bar.done)]
    references = reference_log_probs(model, list(neutral_pairs), batch_size=batch_size, progress=progress)
    scores = []
    for q in questions:
        context, candidates, neutral = q.cloze()
        row = []
        for cand in candidates:
            value = totals[pairs[(context, cand)]]
            if score == "pmi":
                value -= references[neutral_pairs[(neutral, cand)]]
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
    desc: str = "questions",
) -> MCQResult:
    """Score ``questions`` with ``model`` under ``protocol`` (see the module docstring). The progress bar,
    "scoring <desc> (guarded)" or "(base)", counts questions.

    Inside :func:`dsg_lens.distributed.sharded` (``torchrun``), the forward passes are split over the ranks and
    every rank returns the scores of all questions."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {PROTOCOLS}")
    if completion_score not in COMPLETION_SCORES:
        raise ValueError(f"unknown completion_score {completion_score!r}: use one of {COMPLETION_SCORES}")
    if len(questions) == 0:
        raise ValueError("no questions to score: pass at least one MCQ")
    bar_label = f"scoring {desc} ({'guarded' if attached_owners(model) else 'base'})"
    if protocol == "completion":
        refuse_non_causal_gates(model)
        scores = _completion_scores(model, questions, completion_score, batch_size, progress, bar_label)
    else:
        with _QuestionBar([[k] for k in range(len(questions))], len(questions), bar_label, progress) as bar:
            scores = _letter_scores(model, questions, protocol, batch_size, bar)
    records = tuple(
        QuestionResult(q.id, q.subject, q.answer, max(range(len(s)), key=s.__getitem__), tuple(s))
        for q, s in zip(questions, scores)
    )
    label = f"completion-{completion_score}" if protocol == "completion" else protocol
    return MCQResult(label, records)


def refuse_non_causal_gates(model: nn.Module) -> None:
    """A non-causal gate (the paper's per-sequence rho) lets each candidate answer switch the guardrail on for the
    positions that predict it: completion scores under it are leaky, so they are refused, not returned."""
    leaky = [owner for owner in attached_owners(model) if getattr(getattr(owner, "gate", None), "causal", True) is False]
    if leaky:
        raise ValueError(
            f"{type(leaky[0]).__name__} with the non-causal {type(leaky[0].gate).__name__} is attached: completion "
            "scoring under it leaks each candidate answer into the gate's decision. Use a causal gate "
            "(WindowGate / PrefixGate, the default) or a letter protocol ('chat', 'lm_eval'), which reads one position"
        )


class ScoredSequence(NamedTuple):
    """A token sequence :func:`score_mcq` runs for question ``question`` (an index), and ``last_read``: the last
    position whose logits it reads (a position after it cannot change the question's scores)."""

    question: int
    tokens: tuple[int, ...]
    last_read: int


def scored_sequences(model: nn.Module, questions: Sequence[MCQ], protocol: str = "completion") -> list[ScoredSequence]:
    """The sequences :func:`score_mcq` scores each question on under ``protocol``, tokenized as it does.

    Letter protocols: the prompt, read at its last position. Completion: context + candidate per choice, read at
    the positions that predict the candidate's tokens (up to the one before its last token), whether it runs as
    one pass or continues the context's KV cache. The PMI reference's neutral sequences are not listed: they run
    with dsg-lens hooks suspended, so no guardrail ever sees them.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {PROTOCOLS}")
    if protocol != "completion":
        prompts = _letter_prompts(model, questions, protocol)
        return [ScoredSequence(i, tuple(ids), len(ids) - 1) for i, ids in enumerate(prompts)]
    out = []
    for i, q in enumerate(questions):
        context, candidates, _ = q.cloze()
        for cand in candidates:
            ctx_ids, cont_ids = _pair_ids(model, context, cand)
            out.append(ScoredSequence(i, ctx_ids + cont_ids, len(ctx_ids) + len(cont_ids) - 2))
    return out


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
    desc: str = "questions",
) -> list[str]:
    """Ids of the questions the (unhooked) base model gets right, cached on disk.

    Letter protocols: right under every ordering of the choices (24 for 4 choices), each by more than
    ``margin``. Completion: the answer's score beats every other by more than ``margin`` (order plays no role).
    ``margin=None`` takes :data:`DEFAULT_MARGIN`. The ids are cached as JSON under ``cache_dir`` (default
    ``$DSG_LENS_CACHE`` or ``~/.cache/dsg_lens``) per model (name + weight signature), data set fingerprint and
    protocol settings; ids shipped for the embedded model (:data:`SHIPPED_CACHE`) are used when the key matches.
    ``desc`` names the questions in the progress bar.
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
    orders = "" if protocol == "completion" or not questions else f" in all {len(expanded) // len(questions)} orders"
    result = score_mcq(model, expanded, protocol, completion_score=completion_score, batch_size=batch_size,
                       progress=progress, desc=f"{desc}{orders} to keep the base-correct ones")
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
