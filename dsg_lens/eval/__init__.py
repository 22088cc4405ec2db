"""Evaluation: multiple-choice accuracy (three protocols, base-correct filtering) and corpus loss."""

from dsg_lens.eval.corpus import CorpusLoss, corpus_loss, token_losses
from dsg_lens.eval.mcq import (
    DEFAULT_MARGIN,
    PROTOCOLS,
    MCQResult,
    QuestionResult,
    base_correct_ids,
    filter_base_correct,
    score_mcq,
    wilson_interval,
)

__all__ = [
    "DEFAULT_MARGIN",
    "PROTOCOLS",
    "CorpusLoss",
    "MCQResult",
    "QuestionResult",
    "base_correct_ids",
    "corpus_loss",
    "filter_base_correct",
    "score_mcq",
    "token_losses",
    "wilson_interval",
]
