"""Sweeps over N features, clamp c, p_ratio and p_dyn; the Pareto front; the unlearning score.

Cost model: latent statistics are passed in (computed once); per p_ratio, one scan of the calibration texts
records each token's first-firing rank (:mod:`dsg_lens.scan`), from which tau for every (N, p_dyn) follows without
running the model again. :func:`run_sweep` runs a black-box evaluation per configuration; for multiple-choice
questions :func:`run_question_sweep` scores every question once without the guardrail and, per configuration,
re-scores only the questions its guardrail clamps (known from one scan of the scored sequences per p_ratio).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.mcq import MCQResult, QuestionResult, ScoredSequence, question_metrics, score_mcq, scored_sequences
from dsg_lens.gate import DEFAULT_GATE, Gate, calibrate_tau, clamp_positions, make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.real_tokens import pad_token_id
from dsg_lens.scan import RankScan, gate_scores_from_scan, scan_first_rank
from dsg_lens.selection import FeatureSet, select_features
from dsg_lens.stats import LatentStats
from dsg_lens.tokens import TextsOrTokens

Metrics = dict[str, float]
Evaluator = Callable[[nn.Module], Metrics]
"""Called with the model (guardrail attached or not); returns at least ``forget_acc`` and ``retain_acc``."""


def pareto_front(rows: Sequence[dict[str, Any]], forget_key: str = "forget_acc", retain_key: str = "retain_acc"
                 ) -> list[dict[str, Any]]:
    """Rows not dominated by another row (lower forget and higher retain accuracy are better), by retain desc."""
    front = [
        row for row in rows
        if not any(
            other[forget_key] <= row[forget_key] and other[retain_key] >= row[retain_key]
            and (other[forget_key] < row[forget_key] or other[retain_key] > row[retain_key])
            for other in rows
        )
    ]
    return sorted(front, key=lambda r: (-r[retain_key], r[forget_key]))


def unlearning_score(rows: Sequence[dict[str, Any]], base_retain: float, threshold: float = 0.99,
                     forget_key: str = "forget_acc", retain_key: str = "retain_acc") -> float:
    """1 - min forget accuracy among rows whose retain accuracy is >= ``threshold`` x ``base_retain``
    (DSG paper / SAEBench); NaN when no configuration keeps retain accuracy high enough."""
    kept = [row[forget_key] for row in rows if row[retain_key] >= threshold * base_retain]
    return 1.0 - min(kept) if kept else math.nan


@dataclass
class SweepResult:
    """``rows``: one dict per configuration (parameters, tau, metrics); ``base``: metrics without guardrail."""

    rows: list[dict[str, Any]]
    base: Metrics
    params: dict[str, Any] = field(default_factory=dict)
    question_results: list[dict[str, MCQResult]] = field(default_factory=list)
    """Per row, each side's per-question scores (:func:`run_question_sweep` only; not saved)."""

    def pareto(self) -> list[dict[str, Any]]:
        return pareto_front(self.rows)

    def score(self, threshold: float = 0.99) -> float:
        return unlearning_score(self.rows, self.base["retain_acc"], threshold)

    def to_dict(self) -> dict[str, Any]:
        score = self.score()
        return {"base": self.base, "rows": self.rows, "pareto": self.pareto(),
                "score": None if math.isnan(score) else score, "params": self.params}

    def save(self, folder: str | Path) -> None:
        """Write ``sweep.json`` and ``sweep.csv`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(self.to_dict(), indent=2))
        with open(out / "sweep.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)


def _values(name: str, values: Sequence[Any]) -> list[Any]:
    values = list(values)
    if not values:
        raise ValueError(f"{name} must list at least one value")
    return values


@dataclass(frozen=True)
class _SweepPoint:
    """One configuration of a sweep: its parameters, tau calibrated for it, and its guardrail. ``features`` is
    the p_ratio's whole ranked selection (the guardrail uses its top ``n``)."""

    p_ratio: float
    n: int
    p_dyn: float
    clamp: float
    tau: float
    features: FeatureSet
    guard: DynamicSAEGuardrail

    def row(self, metrics: Metrics) -> dict[str, Any]:
        return {"n": self.n, "clamp": self.clamp, "p_ratio": self.p_ratio, "p_dyn": self.p_dyn, "tau": self.tau,
                **metrics}


@dataclass(frozen=True)
class _Grid:
    """The values a sweep combines (validated on construction), and the guardrail of every combination."""

    n_values: Sequence[int]
    clamp_values: Sequence[float]
    p_ratio_values: Sequence[float]
    p_dyn_values: Sequence[float]
    clamp_scale: bool
    gate: Gate

    def __post_init__(self) -> None:
        for name in ("n_values", "clamp_values", "p_ratio_values", "p_dyn_values"):
            object.__setattr__(self, name, _values(name, getattr(self, name)))

    @property
    def size(self) -> int:
        return len(self.n_values) * len(self.clamp_values) * len(self.p_ratio_values) * len(self.p_dyn_values)

    def points(self, model: nn.Module, sae: SAE, forget: LatentStats, retain: LatentStats,
               calibration_texts: TextsOrTokens, batch_size: int, progress: bool) -> Iterator[_SweepPoint]:
        """Every configuration in the order p_ratio, N, p_dyn, clamp; per p_ratio one selection and one scan of
        the calibration texts, from which tau follows for every (N, p_dyn) (module docstring)."""
        bar = tqdm(total=self.size, desc="sweep", disable=not progress)
        for p_ratio in self.p_ratio_values:
            features = select_features(forget, retain, n=max(self.n_values), p_ratio=p_ratio)
            scan = scan_first_rank(model, sae, features.ids, calibration_texts, batch_size=batch_size)
            relative = {"resid_norm": scan.mean_resid_norm} if self.clamp_scale else {}
            for n in self.n_values:
                scores = gate_scores_from_scan(scan, self.gate, n, calibration=True)
                for p_dyn in self.p_dyn_values:
                    tau = calibrate_tau(scores, p_dyn)
                    for clamp in self.clamp_values:
                        scale = {"clamp_scale": clamp, **relative} if self.clamp_scale else {}
                        guard = DynamicSAEGuardrail(sae, features.top(n), self.gate.with_tau(tau),
                                                    clamp=0.0 if self.clamp_scale else clamp, **scale)
                        yield _SweepPoint(p_ratio, n, p_dyn, clamp, tau, features, guard)
                        bar.update()
        bar.close()

    def params(self, calibration_texts: TextsOrTokens) -> dict[str, Any]:
        return {"clamp_is_relative": self.clamp_scale, "n_calibration_texts": len(calibration_texts),
                "gate": self.gate.to_dict()}


def run_sweep(
    model: nn.Module,
    sae: SAE,
    forget: LatentStats,
    retain: LatentStats,
    calibration_texts: TextsOrTokens,
    evaluate: Evaluator,
    *,
    n_values: Sequence[int] = (10, 20, 40),
    clamp_values: Sequence[float] = (100.0, 500.0),
    p_ratio_values: Sequence[float] = (95.0,),
    p_dyn_values: Sequence[float] = (95.0,),
    clamp_scale: bool = False,
    gate: Gate | None = None,
    base: Metrics | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> SweepResult:
    """Evaluate the DSG guardrail for every combination of the given values (module docstring for the cost):
    ``evaluate(model)`` runs once per configuration with its guardrail attached. For multiple-choice questions,
    :func:`run_question_sweep` gives the same rows at a fraction of the cost.

    With ``clamp_scale=True`` the ``clamp_values`` are relative clamps (multiples of the residual norm).
    ``gate``: the gate kind and its settings (its tau is calibrated per configuration on ``calibration_texts``);
    default :data:`~dsg_lens.gate.DEFAULT_GATE`.
    """
    grid = _Grid(n_values, clamp_values, p_ratio_values, p_dyn_values, clamp_scale, gate or make_gate(DEFAULT_GATE))
    base = dict(base) if base is not None else evaluate(model)
    rows: list[dict[str, Any]] = []
    for point in grid.points(model, sae, forget, retain, calibration_texts, batch_size, progress):
        with point.guard.attached(model):
            rows.append(point.row(evaluate(model)))
    return SweepResult(rows, base, grid.params(calibration_texts))


class _SequenceScan:
    """The scored sequences of some questions, scanned once for a ranked selection: which questions a
    configuration's guardrail clamps at a position their scores read, and where, without running the model again.

    With a causal gate only each sequence's read positions are scanned (a position's decision does not depend on
    later tokens), and sequences whose read positions hold the same tokens (candidates sharing their first tokens)
    share one scanned row; a non-causal gate sees every whole sequence."""

    def __init__(self, model: nn.Module, sae: SAE, ranked_ids: Sequence[int],
                 sequences: Sequence[tuple[Hashable, ScoredSequence]], causal: bool, batch_size: int):
        scanned: dict[tuple[int, ...], int] = {}
        row_of = [scanned.setdefault(seq.tokens[: seq.last_read + 1] if causal else seq.tokens, len(scanned))
                  for _, seq in sequences]
        rows = list(scanned)
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
        first_rank: list[Tensor] = [torch.empty(0)] * len(rows)
        real: list[Tensor] = [torch.empty(0)] * len(rows)
        pad_id = pad_token_id(model)
        n_ranked = len(ranked_ids)
        for start in range(0, len(order), batch_size):  # similar lengths together, as the scan's own batches
            chunk = order[start : start + batch_size]
            tokens = torch.full((len(chunk), len(rows[chunk[0]])), pad_id, dtype=torch.long)
            for i, r in enumerate(chunk):
                tokens[i, : len(rows[r])] = torch.tensor(rows[r], dtype=torch.long)
            scan = scan_first_rank(model, sae, ranked_ids, tokens, batch_size=len(chunk))
            n_ranked = scan.n_ranked
            for i, r in enumerate(chunk):
                first_rank[r], real[r] = scan.first_rank[i][: len(rows[r])], scan.real[i][: len(rows[r])]
        self.scan = RankScan(first_rank, real, n_ranked, math.nan)
        self.row_of = torch.tensor(row_of)
        width = max(len(row) for row in rows)
        last_read = torch.tensor([seq.last_read for _, seq in sequences])
        self.readable = torch.arange(width)[None, :] <= last_read[:, None]
        self.sequences_of: dict[Hashable, list[int]] = {}
        for k, (question, _) in enumerate(sequences):
            self.sequences_of.setdefault(question, []).append(k)

    def clamped(self, gate: Gate, n: int) -> dict[Hashable, bytes]:
        """Per question that the guardrail (top ``n`` latents, ``gate``) clamps at a position its scores read: the
        clamp positions of its sequences (equal bytes: equal guarded scores for the same latents and clamp)."""
        fired, real = self.scan.padded(n)
        clamps = (clamp_positions(gate, fired, real)[self.row_of] & self.readable).numpy()
        hit = clamps.any(-1)
        return {question: clamps[ks].tobytes() for question, ks in self.sequences_of.items() if hit[ks].any()}


def run_question_sweep(
    model: nn.Module,
    sae: SAE,
    forget: LatentStats,
    retain: LatentStats,
    calibration_texts: TextsOrTokens,
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    protocol: str = "completion",
    *,
    completion_score: str = "pmi",
    n_values: Sequence[int] = (10, 20, 40),
    clamp_values: Sequence[float] = (100.0, 500.0),
    p_ratio_values: Sequence[float] = (95.0,),
    p_dyn_values: Sequence[float] = (95.0,),
    clamp_scale: bool = False,
    gate: Gate | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> SweepResult:
    """:func:`run_sweep` with forget/retain multiple-choice accuracy (:func:`~dsg_lens.eval.mcq.score_mcq`) as the
    evaluation, re-scoring per configuration only the questions its guardrail touches: the same rows (and
    ``base``), plus ``n_tripped`` (questions clamped at a position their scores read) and ``n_rescored``
    (questions scored with the guardrail attached) per row; ``result.question_results[i]`` holds row i's
    per-question scores.

    Where the guardrail clamps nowhere, the guarded pass is bit-identical to the base pass, so a question whose
    scored sequences (:func:`~dsg_lens.eval.mcq.scored_sequences`) have no clamp at any position up to the last
    one whose logits are read gets exactly the base scores. Which questions those are comes, for every (N,
    p_dyn), from one scan of the scored sequences per p_ratio (the ranked latents of the calibration scan;
    :func:`~dsg_lens.gate.clamp_positions`). A clamped question's guarded scores depend only on the latents, the
    clamp and the clamp positions, so configurations that clamp it alike (e.g. p_dyn values whose tau trips it at
    the same position) share one re-scoring. Computed once: base scores, PMI references (cached by
    :func:`~dsg_lens.eval.mcq.reference_log_probs`), per p_ratio the selection and both scans.

    Gates: a causal gate decides each position from the tokens up to it, so a scan of the scored sequences up to
    their last read positions gives the clamps of the scoring's own passes, KV-cached continuations included
    (identical read prefixes, e.g. candidates sharing a first token, are scanned once). The non-causal
    :class:`~dsg_lens.gate.PaperGate` decides from the whole sequence: under letter protocols (one full pass per
    prompt) its clamp positions over the whole prompt are exact and it takes the same path; completion scoring
    under it would be leaky and is refused (as :func:`~dsg_lens.eval.mcq.score_mcq` refuses it).

    Footgun: the scan and the scoring run the same tokens in different batches; a latent within float rounding
    of its threshold can fire in one and not in the other (then a question the scan finds untouched keeps its
    base scores while the guarded pass would clamp it). :func:`run_sweep` with ``evaluate_questions`` is the
    reference.
    """
    grid = _Grid(n_values, clamp_values, p_ratio_values, p_dyn_values, clamp_scale, gate or make_gate(DEFAULT_GATE))
    if not grid.gate.causal and protocol == "completion":
        raise ValueError(f"the non-causal {type(grid.gate).__name__} would let each candidate answer switch the "
                         "guardrail on for the positions that predict it: use a causal gate (WindowGate / "
                         "PrefixGate) for completion scoring, or a letter protocol")
    sides = {"forget": list(forget_questions), "retain": list(retain_questions)}

    def score(questions: list[MCQ], show: bool = False) -> MCQResult:
        return score_mcq(model, questions, protocol, completion_score=completion_score, batch_size=batch_size,
                         progress=show)

    base = {side: score(questions, progress) for side, questions in sides.items()}
    sequences = [((side, seq.question), seq) for side, questions in sides.items()
                 for seq in scored_sequences(model, questions, protocol)]
    scans: dict[float, _SequenceScan] = {}  # per p_ratio
    shared: dict[tuple[Any, ...], QuestionResult] = {}  # (p_ratio, n, clamp, side, question, clamp positions)
    rows: list[dict[str, Any]] = []
    question_results: list[dict[str, MCQResult]] = []
    points = grid.points(model, sae, forget, retain, calibration_texts, batch_size, progress)
    for point in points:
        results: dict[str, MCQResult] = {}
        n_tripped = n_rescored = 0
        if point.p_ratio not in scans:
            scans[point.p_ratio] = _SequenceScan(model, sae, point.features.ids, sequences, grid.gate.causal,
                                                 batch_size)
        clamped = scans[point.p_ratio].clamped(point.guard.gate, point.n)
        for side, questions in sides.items():
            tripped = {q: (point.p_ratio, point.n, point.clamp, side, q, where)
                       for (of_side, q), where in clamped.items() if of_side == side}
            todo = [q for q, key in tripped.items() if key not in shared]
            if todo:
                with point.guard.attached(model):
                    rescored = score([questions[q] for q in todo])
                shared.update((tripped[q], record) for q, record in zip(todo, rescored.records))
            records = [shared[tripped[q]] if q in tripped else record for q, record in enumerate(base[side].records)]
            results[side] = MCQResult(base[side].protocol, tuple(records))
            n_tripped, n_rescored = n_tripped + len(tripped), n_rescored + len(todo)
        rows.append(point.row({**question_metrics(results), "n_tripped": n_tripped, "n_rescored": n_rescored}))
        question_results.append(results)
    params = {**grid.params(calibration_texts), "protocol": protocol, "completion_score": completion_score}
    return SweepResult(rows, question_metrics(base), params, question_results)
