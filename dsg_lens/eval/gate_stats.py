"""How often a guardrail's gate fires on forget vs retain texts (true / false positive rates) and its scores."""

from __future__ import annotations

from typing import Any

from torch import nn

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
