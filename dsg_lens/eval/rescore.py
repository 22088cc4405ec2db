"""Score many SAE interventions on one question set, re-scoring only the questions each one edits.

An intervention at one HookPoint that edits a position only where some latents fire there (static clamping), or
where a causal gate over those latents is on (a DSG guardrail), leaves a question's scores bit-identical unless it
edits a real position its scores read. Which positions those are follows from one scan of the scored sequences
per ranked latent list (:class:`~dsg_lens.eval.sweep._SequenceScan`: the activations at the hook do not depend on
edits made there), so each intervention costs only the scoring of the questions it touches.

Footgun (as in :func:`~dsg_lens.eval.sweep.run_question_sweep`): the scan and the scoring batch the same tokens
differently; a latent within float rounding of its threshold can fire in one and not the other. The tests compare
with re-scoring everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from sae_lens import SAE
from torch import nn

from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.mcq import MCQResult, question_metrics, score_mcq, scored_sequences
from dsg_lens.eval.sweep import _SequenceScan
from dsg_lens.gate import Gate

Key = tuple[str, int]
"""A question: (side, index in that side's list)."""


@runtime_checkable
class Attachable(Protocol):
    def attached(self, model: nn.Module) -> AbstractContextManager[Any]: ...


class TouchedScorer:
    """Each side's questions scored once without edits (``base``); :meth:`score` with an intervention attached
    re-scores only the questions given as touched."""

    def __init__(self, model: nn.Module, sides: Mapping[str, Sequence[MCQ]], protocol: str = "completion", *,
                 completion_score: str = "pmi", batch_size: int = 8, progress: bool = False):
        self.model, self.protocol, self.batch_size = model, protocol, batch_size
        self.completion_score = completion_score
        self.sides = {side: list(questions) for side, questions in sides.items()}
        self.base = {side: self._score(questions, progress) for side, questions in self.sides.items()}
        self.sequences = [((side, seq.question), seq) for side, questions in self.sides.items()
                          for seq in scored_sequences(model, questions, protocol)]

    def _score(self, questions: list[MCQ], progress: bool = False) -> MCQResult:
        return score_mcq(self.model, questions, self.protocol, completion_score=self.completion_score,
                         batch_size=self.batch_size, progress=progress)

    @property
    def all_questions(self) -> set[Key]:
        return {key for key, _ in self.sequences}

    def scan(self, sae: SAE, ranked_ids: Sequence[int]) -> _SequenceScan:
        """One scan of the scored sequences for ``ranked_ids`` (best first; serves every top-N of them)."""
        return _SequenceScan(self.model, sae, list(ranked_ids), self.sequences, True, self.batch_size)

    @staticmethod
    def fired(scan: _SequenceScan, n: int) -> set[Key]:
        """Questions where any of the top ``n`` scanned latents fires at a real position their scores read (what
        static clamping edits)."""
        fired, real = scan.scan.padded(n)
        hit = ((fired & real)[scan.row_of] & scan.readable).any(-1)
        return {key for key, ks in scan.sequences_of.items() if hit[ks].any()}

    @staticmethod
    def gated(scan: _SequenceScan, gate: Gate, n: int) -> set[Key]:
        """Questions a guardrail over the top ``n`` scanned latents with the causal ``gate`` clamps at a
        position their scores read."""
        if not gate.causal:
            raise ValueError(f"{type(gate).__name__} is not causal: its edits cannot be read off a scan of prefixes")
        return set(scan.clamped(gate, n))

    def score(self, intervention: Attachable, touched: set[Key]) -> dict[str, MCQResult]:
        """Per side, the scores with ``intervention`` attached: re-scored for ``touched`` questions, the base
        scores (bit-identical) for the others."""
        out = {}
        for side, questions in self.sides.items():
            todo = sorted(q for of_side, q in touched if of_side == side)
            records = list(self.base[side].records)
            if todo:
                with intervention.attached(self.model):
                    rescored = self._score([questions[q] for q in todo])
                for q, record in zip(todo, rescored.records):
                    records[q] = record
            out[side] = MCQResult(self.base[side].protocol, tuple(records))
        return out

    def metrics(self, results: Mapping[str, MCQResult] | None = None) -> dict[str, object]:
        """``{side}_acc`` / ``_ci95`` / ``_n`` of ``results`` (default: the base scores)."""
        return question_metrics(results if results is not None else self.base)
