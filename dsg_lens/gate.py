"""The dynamic classifier: at which positions of a sequence is the guardrail switched on?

A gate reads per-token flags, ``fired`` (any selected latent > 0) and ``real`` (the token counts, see
:mod:`dsg_lens.real_tokens`), and decides per position. Every gate gives:

- ``decisions(fired, real) -> Bool[batch, pos]``: whether the guardrail is on at each position;
- ``scores(fired, real) -> Float[batch]``: a per-sequence score; ``score > tau`` iff the gate is on at the
  sequence's last position (what an evaluation of the next token after the sequence sees);
- ``calibration_scores``: the scores ``tau`` is a percentile of, on retain sequences.

Causal gates (``causal = True``) decide position t from the flags of positions <= t only. Then a forward pass
over context + continuation gives the same values at the context positions as the context alone, a KV-cached
continuation equals one full pass, and a candidate answer cannot switch the guardrail on for the positions that
predict it. They latch: once on, a sequence stays on (``latch=True``, the default). Their statistic counts only
from ``min_tokens`` real tokens on, so the first forget word of a text does not switch it on by itself.

- ``PrefixGate``: rho over the real tokens so far (the paper's rho, made causal).
- ``WindowGate``: the fraction of fired tokens among the last ``window`` real tokens (robust to benign filler
  before the question: dilution).
- ``PaperGate``: the DSG paper's reference rule, rho over ALL real tokens of the sequence, applied to every
  position. NOT causal: a continuation's own tokens change the decision for the positions that predict it, so it
  is right only for one forward pass read at one position (letter scoring); kept for exact reproduction.

All arithmetic is tensor-only (no host synchronisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

_NEVER = -1.0  # the statistic where it is not defined yet (fractions are >= 0, so it never exceeds tau >= 0)


@runtime_checkable
class Gate(Protocol):
    """What the guardrail needs of a gate (module docstring)."""

    kind: ClassVar[str]
    causal: ClassVar[bool]
    tau: float | int

    def decisions(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
        ...

    def scores(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
        ...

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " n"]:
        ...

    def with_tau(self, tau: float | int) -> Gate: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PaperGate:
    """rho over all real tokens of the sequence > tau, at every position (the paper's rule; NOT causal)."""

    tau: float | int = 0.0
    kind: ClassVar[str] = "paper"
    causal: ClassVar[bool] = False

    def scores(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
        return (fired & real).sum(-1) / real.sum(-1).clamp(min=1)

    def decisions(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
        return (self.scores(fired, real) > self.tau)[:, None].expand_as(fired)

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " n"]:
        return self.scores(fired, real)

    def with_tau(self, tau: float | int) -> PaperGate:
        return PaperGate(tau=tau)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


class _CausalGate:
    """Shared arithmetic of the causal gates: a per-position statistic, latched or not (module docstring)."""

    causal: ClassVar[bool] = True
    tau: float | int
    min_tokens: int
    latch: bool

    def _window(self) -> int | None:
        raise NotImplementedError

    def _check(self) -> None:
        window = self._window()
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window={window!r} must be a positive int (a number of real tokens)")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ValueError(f"min_tokens={self.min_tokens!r} must be a positive int (real tokens before deciding)")

    def statistic(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
        """At each position: the fired fraction over the last ``window`` real tokens so far (all of them for the
        prefix gate); -1 before ``min_tokens`` real tokens have been seen."""
        return causal_fraction(fired, real, self._window(), self.min_tokens)

    def decisions(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
        above = self.statistic(fired, real) > self.tau
        return above.cummax(-1).values if self.latch else above

    def scores(self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
        stat = self.statistic(fired, real)
        return stat.amax(-1) if self.latch else stat[:, -1]

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " n"]:
        """The largest statistic of each retain sequence: tau at the p-th percentile switches the guardrail on
        somewhere in at most (100 - p)% of retain sequences (of the calibration shape)."""
        stat = self.statistic(fired, real)
        return stat.amax(-1).clamp(min=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}  # type: ignore[attr-defined,call-overload]


@dataclass(frozen=True)
class PrefixGate(_CausalGate):
    """Causal rho: fired fraction of the real tokens so far > tau (from ``min_tokens`` real tokens on)."""

    tau: float | int = 0.0
    min_tokens: int = 8
    latch: bool = True
    kind: ClassVar[str] = "prefix"

    def __post_init__(self) -> None:
        self._check()

    def _window(self) -> int | None:
        return None

    def with_tau(self, tau: float | int) -> PrefixGate:
        return PrefixGate(tau=tau, min_tokens=self.min_tokens, latch=self.latch)


@dataclass(frozen=True)
class WindowGate(_CausalGate):
    """Causal, dilution-robust: fired fraction of the last ``window`` real tokens > tau (fewer while fewer have
    been seen; from ``min_tokens`` real tokens on)."""

    tau: float | int = 0.0
    window: int = 32
    min_tokens: int = 8
    latch: bool = True
    kind: ClassVar[str] = "window"

    def __post_init__(self) -> None:
        self._check()

    def _window(self) -> int | None:
        return self.window

    def with_tau(self, tau: float | int) -> WindowGate:
        return WindowGate(tau=tau, window=self.window, min_tokens=self.min_tokens, latch=self.latch)


def causal_fraction(
    fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], window: int | None, min_tokens: int
) -> Float[Tensor, "batch pos"]:
    """Per position t: fired real tokens among the last ``window`` real tokens at or before t, divided by their
    number (``window=None``: all real tokens so far); -1 where fewer than ``min_tokens`` real tokens precede."""
    n_real: Int[Tensor, "batch pos"] = real.long().cumsum(-1)
    fired_real = (fired & real).float()
    if window is None:
        count = fired_real.cumsum(-1)
        width = n_real
    else:
        # fired counts over the real tokens only: compact them to the left, prefix-sum, read [k - window, k)
        order = torch.argsort((~real).to(torch.uint8), dim=-1, stable=True)
        prefix = torch.nn.functional.pad(fired_real.gather(-1, order).cumsum(-1), (1, 0))
        count = prefix.gather(-1, n_real) - prefix.gather(-1, (n_real - window).clamp(min=0))
        width = n_real.clamp(max=window)
    fraction = count / width.clamp(min=1)
    return torch.where(n_real >= min_tokens, fraction, torch.full_like(fraction, _NEVER))


def clamp_positions(gate: Gate, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """Where a guardrail with ``gate`` clamps: real tokens where a selected latent fired and the gate is on."""
    return gate.decisions(fired, real) & fired & real


GATES: dict[str, type] = {"paper": PaperGate, "prefix": PrefixGate, "window": WindowGate}
DEFAULT_GATE = "window"
"""The gate :meth:`DynamicSAEGuardrail.fit` uses unless told otherwise (chosen by measurement: README)."""


def make_gate(kind: str, **params: Any) -> Gate:
    """A gate by name (``"paper"``, ``"prefix"``, ``"window"``) with its parameters."""
    if kind not in GATES:
        raise ValueError(f"unknown gate kind {kind!r}; known: {sorted(GATES)}")
    return GATES[kind](**params)


def gate_from_dict(data: dict[str, Any]) -> Gate:
    """Rebuild a gate saved with ``gate.to_dict()``; rejects unknown kinds and non-finite thresholds."""
    params = {k: v for k, v in data.items() if k != "kind"}
    tau = params.get("tau")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not torch.isfinite(torch.tensor(float(tau))):
        raise ValueError(f"gate threshold tau must be a finite number, got {tau!r}")
    return make_gate(str(data.get("kind")), **params)


def calibrate_tau(scores: Float[Tensor, " n"], p_dyn: float | int) -> float:
    """The ``p_dyn`` percentile (linear interpolation, as numpy) of gate scores on retain sequences."""
    if not 0 <= p_dyn <= 100:
        raise ValueError(f"p_dyn={p_dyn} is outside 0-100 (it is a percentile)")
    if scores.numel() == 0:
        raise ValueError("cannot calibrate tau on zero retain sequences")
    if not torch.isfinite(scores).all():
        raise ValueError("retain gate scores contain NaN/inf")
    return float(torch.quantile(scores.double(), p_dyn / 100.0))
