"""The dynamic classifier: is a sequence forget-relevant?

A gate turns per-token "any selected latent fired" flags (real tokens only) into a per-sequence score, compares
it to a threshold ``tau`` and keeps per-row state across the passes of KV-cached generation: the prompt pass
decides per row, and a row may switch on later when its score crosses ``tau`` (it never switches off).

``PaperGate`` is the DSG paper's rule: rho(x) = (#real tokens where any selected latent > 0) / (#real tokens),
forget-relevant iff rho > tau. All gate arithmetic is tensor-only (no host synchronisation in the hook).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

GateState = dict[str, Tensor]


@runtime_checkable
class Gate(Protocol):
    """What the guardrail needs of a gate."""

    kind: ClassVar[str]
    tau: float | int

    def scores(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
        """Score of whole sequences (what ``tau`` is compared to)."""
        ...

    def new_state(self, batch: int, device: torch.device) -> GateState: ...

    def update(
        self, state: GateState, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Bool[Tensor, " batch"]:
        """Fold a pass into ``state``; return which rows are tripped (forget-relevant)."""
        ...

    def with_tau(self, tau: float | int) -> Gate: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PaperGate:
    """rho over all real tokens so far > tau (the DSG paper's classifier)."""

    tau: float | int = 0.0
    kind: ClassVar[str] = "paper"

    def scores(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
        return (fired & real).sum(-1) / real.sum(-1).clamp(min=1)

    def new_state(self, batch: int, device: torch.device) -> GateState:
        zeros = torch.zeros(batch, device=device)
        return {"fired": zeros, "real": zeros.clone(), "tripped": torch.zeros(batch, dtype=torch.bool, device=device)}

    def update(
        self, state: GateState, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Bool[Tensor, " batch"]:
        state["fired"] = state["fired"] + (fired & real).sum(-1)
        state["real"] = state["real"] + real.sum(-1)
        rho = state["fired"] / state["real"].clamp(min=1)
        state["tripped"] = state["tripped"] | (rho > self.tau)
        return state["tripped"]

    def with_tau(self, tau: float | int) -> PaperGate:
        return PaperGate(tau=tau)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


GATES: dict[str, type] = {"paper": PaperGate}


def gate_from_dict(data: dict[str, Any]) -> Gate:
    """Rebuild a gate saved with ``gate.to_dict()``; rejects unknown kinds and non-finite thresholds."""
    kind = data.get("kind")
    if kind not in GATES:
        raise ValueError(f"unknown gate kind {kind!r}; known: {sorted(GATES)}")
    params = {k: v for k, v in data.items() if k != "kind"}
    tau = params.get("tau")
    if not isinstance(tau, (int, float)) or not torch.isfinite(torch.tensor(float(tau))):
        raise ValueError(f"gate threshold tau must be a finite number, got {tau!r}")
    return GATES[kind](**params)


def calibrate_tau(scores: Float[Tensor, " n"], p_dyn: float | int) -> float:
    """The ``p_dyn`` percentile (linear interpolation, as numpy) of gate scores on retain sequences."""
    if not 0 <= p_dyn <= 100:
        raise ValueError(f"p_dyn={p_dyn} is outside 0-100 (it is a percentile)")
    if scores.numel() == 0:
        raise ValueError("cannot calibrate tau on zero retain sequences")
    if not torch.isfinite(scores).all():
        raise ValueError("retain gate scores contain NaN/inf")
    return float(torch.quantile(scores.double(), p_dyn / 100.0))
