"""The dynamic classifier: is a sequence forget-relevant?

A gate turns per-token "any selected latent fired" flags (real tokens only) into a per-sequence score, compares
it to a threshold ``tau`` and keeps per-row state across the passes of KV-cached generation: the prompt pass
decides per row, and a row may switch on later when its score crosses ``tau`` (it never switches off).

``PaperGate`` is the DSG paper's rule: rho(x) = (#real tokens where any selected latent > 0) / (#real tokens),
forget-relevant iff rho > tau. It can be diluted: benign filler before a forget question lowers rho below tau.
``WindowGate`` resists that: its score is the largest fraction of fired tokens over any ``window`` consecutive
real tokens (rho itself when a sequence has fewer real tokens than ``window``). All gate arithmetic is
tensor-only (no host synchronisation in the hook).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
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

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " n"]:
        """The scores tau is the p_dyn percentile of (``scores`` for the paper gate)."""
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

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " n"]:
        return self.scores(fired, real)

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


@dataclass(frozen=True)
class WindowGate:
    """Max over sliding windows of ``window`` real tokens of the fraction fired > tau (dilution-robust).

    Special tokens and padding are skipped (windows count real tokens only). A sequence with n < ``window`` real
    tokens has one window of n tokens (its score is the paper's rho). During KV-cached generation the state keeps
    the last ``window - 1`` real-token flags per row, so windows span passes.
    """

    tau: float | int = 0.0
    window: int = 32
    kind: ClassVar[str] = "window"

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window={self.window!r} must be a positive int (a number of real tokens)")

    def scores(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
        return _max_window_fraction(fired, real, real.sum(-1).clamp(max=self.window))

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " n"]:
        """Every window of ``window`` real tokens of every retain text (rho of texts shorter than the window):
        the max over a long text's windows would set tau far above what a short forget question reaches, so
        tau bounds the false-positive rate per window, not per long text."""
        width = real.sum(-1).clamp(max=self.window)
        fractions, valid = _window_fractions(fired, real, width)
        return fractions[valid]

    def new_state(self, batch: int, device: torch.device) -> GateState:
        history = torch.zeros(batch, self.window - 1, dtype=torch.bool, device=device)
        return {
            "fired": history,
            "real": history.clone(),
            "seen": torch.zeros(batch, dtype=torch.long, device=device),
            "tripped": torch.zeros(batch, dtype=torch.bool, device=device),
        }

    def update(
        self, state: GateState, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Bool[Tensor, " batch"]:
        all_fired = torch.cat([state["fired"], fired & real], dim=-1)
        all_real = torch.cat([state["real"], real], dim=-1)
        state["seen"] = state["seen"] + real.sum(-1)
        width = state["seen"].clamp(max=self.window)
        state["tripped"] = state["tripped"] | (_max_window_fraction(all_fired, all_real, width) > self.tau)
        keep = all_fired.shape[-1] - (self.window - 1)
        state["fired"] = _compact(all_fired, all_real, right=True)[:, keep:]
        state["real"] = _compact(all_real, all_real, right=True)[:, keep:]
        return state["tripped"]

    def with_tau(self, tau: float | int) -> WindowGate:
        return WindowGate(tau=tau, window=self.window)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


def _compact(values: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], right: bool) -> Bool[Tensor, "batch pos"]:
    """``values`` at real positions moved (in order) to the left (or right) end of each row; False elsewhere."""
    order = torch.argsort((real if right else ~real).to(torch.uint8), dim=-1, stable=True)
    return (values & real).gather(-1, order)


def _max_window_fraction(
    fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], width: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """Per row, the largest fired count over ``width`` consecutive real tokens, divided by ``width`` (0 if the
    row has fewer than ``width`` real tokens or ``width`` is 0)."""
    fractions, _ = _window_fractions(fired, real, width)
    return fractions.amax(-1)


def _window_fractions(
    fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], width: Int[Tensor, " batch"]
) -> tuple[Float[Tensor, "batch ends"], Bool[Tensor, "batch ends"]]:
    """Fired fraction of every window of ``width`` consecutive real tokens (indexed by its end) and which of
    those windows exist (0 where not)."""
    flags = _compact(fired, real, right=False).float()
    counts = torch.nn.functional.pad(flags.cumsum(-1), (1, 0))  # counts[:, e] = fired among the first e
    ends = torch.arange(counts.shape[-1], device=counts.device).expand_as(counts)
    starts = ends - width[:, None]
    n_real = real.sum(-1, keepdim=True)
    valid = (starts >= 0) & (ends <= n_real) & (width[:, None] > 0)
    windowed = (counts - counts.gather(-1, starts.clamp(min=0))).masked_fill(~valid, 0.0)
    return windowed / width.clamp(min=1)[:, None], valid


GATES: dict[str, type] = {"paper": PaperGate, "window": WindowGate}


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
