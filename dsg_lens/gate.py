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
- ``CountGate``: the NUMBER of fired tokens among the last ``window`` real tokens (optionally only those since the
  latest user turn opened): benign text around the question cannot dilute a count, as it dilutes a fraction.
- ``ProbeGate``: a linear probe on the hook's raw activations (:mod:`dsg_lens.probe`), its per-token probability
  averaged (or maxed) over the last ``window`` real tokens.
- ``AnyGate``: on where any of its gates is on; calibrated jointly (:meth:`AnyGate.calibrate`).
- ``PaperGate``: the DSG paper's reference rule, rho over ALL real tokens of the sequence, applied to every
  position. NOT causal: a continuation's own tokens change the decision for the positions that predict it, so it
  is right only for one forward pass read at one position (letter scoring); kept for exact reproduction.

Besides ``fired`` and ``real`` a gate may read per-token inputs named in its ``needs`` (passed as keywords
``**extras``, all [batch, pos] over the same positions): ``"turn_start"`` (Bool: the role token of each user turn,
:meth:`~dsg_lens.real_tokens.RealTokenRule.user_turn_starts`) and ``"probe"`` (Float: the probe's logit at each
token). The guardrail computes them in its hook and for calibration; :func:`gate_needs` lists them.

All arithmetic is tensor-only (no host synchronisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dsg_lens.probe import LinearProbe

_NEVER = -1.0  # the statistic where it is not defined yet (fractions are >= 0, so it never exceeds tau >= 0)
TURN_START = "turn_start"
PROBE = "probe"
EXTRAS = (TURN_START, PROBE)
"""The per-token inputs a gate can need besides ``fired`` and ``real`` (module docstring)."""


@runtime_checkable
class Gate(Protocol):
    """What the guardrail needs of a gate (module docstring)."""

    kind: ClassVar[str]
    causal: ClassVar[bool]
    tau: float | int

    def decisions(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Bool[Tensor, "batch pos"]:
        ...

    def scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " batch"]:
        ...

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
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
    needs: ClassVar[tuple[str, ...]] = ()

    def scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " batch"]:
        return (fired & real).sum(-1) / real.sum(-1).clamp(min=1)

    def decisions(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Bool[Tensor, "batch pos"]:
        return (self.scores(fired, real) > self.tau)[:, None].expand_as(fired)

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " n"]:
        return self.scores(fired, real)

    def with_tau(self, tau: float | int) -> PaperGate:
        return PaperGate(tau=tau)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


class _CausalGate:
    """Shared arithmetic of the causal gates: a per-position statistic, latched or not (module docstring)."""

    causal: ClassVar[bool] = True
    needs: tuple[str, ...] = ()
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
        if not isinstance(self.latch, bool):
            raise ValueError(f"latch={self.latch!r} must be True or False")

    def statistic(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, "batch pos"]:
        """At each position: the fired fraction over the last ``window`` real tokens so far (all of them for the
        prefix gate); -1 before ``min_tokens`` real tokens have been seen."""
        return causal_fraction(fired, real, self._window(), self.min_tokens)

    def decisions(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Bool[Tensor, "batch pos"]:
        above = self.statistic(fired, real, **extras) > self.tau
        return above.cummax(-1).values if self.latch else above

    def scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " batch"]:
        stat = self.statistic(fired, real, **extras)
        return stat.amax(-1) if self.latch else stat[:, -1]

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " n"]:
        """The largest statistic of each retain sequence: tau at the p-th percentile switches the guardrail on
        somewhere in at most (100 - p)% of retain sequences (of the calibration shape)."""
        stat = self.statistic(fired, real, **extras)
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


@dataclass(frozen=True)
class CountGate(_CausalGate):
    """Causal and dilution-proof: the number of fired tokens among the last ``window`` real tokens (None: all
    so far) > tau, i.e. at least floor(tau) + 1 of them. With ``turn=True`` only the tokens since the latest user
    turn opened count (the user's current message and the answer to it; plain text without turns: all of them).
    Unlike the window gate's fraction, benign text before or around the question does not lower the count; a
    question split over several user turns does, under ``turn=True``."""

    tau: float | int = 0.0
    window: int | None = 32
    turn: bool = False
    min_tokens: int = 1
    latch: bool = True
    kind: ClassVar[str] = "count"

    def __post_init__(self) -> None:
        self._check()
        if not isinstance(self.turn, bool):
            raise ValueError(f"turn={self.turn!r} must be True or False")

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (TURN_START,) if self.turn else ()

    def _window(self) -> int | None:
        return self.window

    def statistic(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, "batch pos"]:
        """At each position: fired real tokens in the scope (last ``window`` real tokens, since the latest user
        turn with ``turn``); -1 before ``min_tokens`` real tokens have been seen."""
        turn_start = _extra(self, extras, TURN_START) if self.turn else None
        n_real, lower = scope_bounds(real, self.window, turn_start)
        count = scope_sum((fired & real).float(), real, n_real, lower)
        return torch.where(n_real >= self.min_tokens, count, torch.full_like(count, _NEVER))

    def with_tau(self, tau: float | int) -> CountGate:
        return replace(self, tau=tau)


PROBE_REDUCTIONS = ("mean", "max")


@dataclass(frozen=True)
class ProbeGate(_CausalGate):
    """A linear probe's per-token probability sigmoid(w.x + b) on the activation at ``probe.hook_name``,
    averaged (``reduce="mean"``) or maxed (``"max"``) over the last ``window`` real tokens, > tau (from
    ``min_tokens`` real tokens on, latched). The guardrail computes the probe's logits (extra ``"probe"``)."""

    probe: LinearProbe
    tau: float | int = 0.0
    window: int = 32
    reduce: str = "mean"
    min_tokens: int = 8
    latch: bool = True
    kind: ClassVar[str] = "probe"
    needs: ClassVar[tuple[str, ...]] = (PROBE,)  # type: ignore[misc]

    def __post_init__(self) -> None:
        self._check()
        if not isinstance(self.probe, LinearProbe):
            raise ValueError(f"probe must be a LinearProbe (dsg_lens.probe.train_probe), got "
                             f"{type(self.probe).__name__}")
        if self.window is None:
            raise ValueError("a probe gate needs a window (a positive number of real tokens)")
        if self.reduce not in PROBE_REDUCTIONS:
            raise ValueError(f"reduce={self.reduce!r}: use one of {PROBE_REDUCTIONS}")

    def _window(self) -> int | None:
        return self.window

    def statistic(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, "batch pos"]:
        """At each position: the mean (or max) probe probability over the last ``window`` real tokens; -1 before
        ``min_tokens`` real tokens have been seen."""
        logits = _extra(self, extras, PROBE)
        if logits.shape != real.shape:
            raise ValueError(f"probe logits {tuple(logits.shape)} do not match the positions {tuple(real.shape)}")
        prob = torch.sigmoid(logits.float())
        n_real, lower = scope_bounds(real, self.window, None)
        if self.reduce == "mean":
            stat = scope_sum(prob, real, n_real, lower) / (n_real - lower).clamp(min=1)
        else:
            stat = scope_max(prob, real, n_real, lower, self.window)
        return torch.where(n_real >= self.min_tokens, stat, torch.full_like(stat, _NEVER))

    def with_tau(self, tau: float | int) -> ProbeGate:
        return replace(self, tau=tau)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tau": self.tau, "window": self.window, "reduce": self.reduce,
                "min_tokens": self.min_tokens, "latch": self.latch, "probe": self.probe.to_dict()}


@dataclass(frozen=True)
class AnyGate:
    """On wherever any of ``gates`` is on (each with its own threshold). ``tau`` is a shared offset added to
    every component's threshold (0 once calibrated), so ``scores`` = max over components of score - threshold
    and ``score > tau`` iff the gate is on at the last position. :meth:`calibrate` sets the components'
    thresholds at one common percentile ``level`` of their own calibration scores, the lowest at which the
    union switches on in at most (100 - p_dyn)% of the retain sequences."""

    gates: tuple[Any, ...]
    tau: float | int = 0.0
    level: float | None = None
    kind: ClassVar[str] = "any"

    def __post_init__(self) -> None:
        if not isinstance(self.gates, tuple) or len(self.gates) < 2:
            raise ValueError("AnyGate needs a tuple of at least two gates")
        if any(isinstance(g, AnyGate) for g in self.gates):
            raise ValueError("AnyGate cannot nest another AnyGate: list all the gates in one")
        if sum(isinstance(g, ProbeGate) for g in self.gates) > 1:
            raise ValueError("AnyGate holds at most one probe gate")

    @property
    def causal(self) -> bool:
        return all(g.causal for g in self.gates)

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(name for name in EXTRAS if any(name in gate_needs(g) for g in self.gates))

    def _shifted(self) -> list[Any]:
        return [g if self.tau == 0 else g.with_tau(g.tau + self.tau) for g in self.gates]

    def decisions(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Bool[Tensor, "batch pos"]:
        on = [g.decisions(fired, real, **_for(g, extras)) for g in self._shifted()]
        return torch.stack(on).any(0)

    def _margins(self, method: str, fired: Tensor, real: Tensor, extras: dict[str, Tensor]) -> Tensor:
        return torch.stack([getattr(g, method)(fired, real, **_for(g, extras)).float() - float(g.tau)
                            for g in self.gates]).amax(0)

    def scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " batch"]:
        return self._margins("scores", fired, real, extras)

    def calibration_scores(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
    ) -> Float[Tensor, " n"]:
        return self._margins("calibration_scores", fired, real, extras)

    def calibrate(
        self, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], p_dyn: float | int,
        **extras: Tensor,
    ) -> AnyGate:
        """Components' thresholds at the lowest common percentile level in [p_dyn, 100] (steps of 0.05) at
        which the union is on in at most (100 - p_dyn)% of the retain sequences (class docstring)."""
        scores = [g.calibration_scores(fired, real, **_for(g, extras)).double() for g in self.gates]
        allowed = (100.0 - float(p_dyn)) / 100.0
        steps = round((100.0 - float(p_dyn)) / 0.05)
        for k in range(steps + 1):
            level = min(float(p_dyn) + 0.05 * k, 100.0)
            taus = [calibrate_tau(s, level) for s in scores]
            union = torch.stack([s > t for s, t in zip(scores, taus)]).any(0).double().mean()
            if float(union) <= allowed + 1e-12:
                break
        return AnyGate(tuple(g.with_tau(t) for g, t in zip(self.gates, taus)), tau=0.0, level=level)

    def with_tau(self, tau: float | int) -> AnyGate:
        return replace(self, tau=tau)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tau": self.tau, "level": self.level, "gates": [g.to_dict() for g in self.gates]}


def _extra(gate: Any, extras: dict[str, Tensor], name: str) -> Tensor:
    if name not in extras:
        raise ValueError(f"{type(gate).__name__} needs the per-token input {name!r} (the guardrail computes it; "
                         f"outside a guardrail pass {name}=... to decisions/scores)")
    return extras[name]


def _for(gate: Any, extras: dict[str, Tensor]) -> dict[str, Tensor]:
    """The extras ``gate`` needs (a component of an AnyGate reads only its own)."""
    return {k: v for k, v in extras.items() if k in gate_needs(gate)}


def gate_needs(gate: Any) -> tuple[str, ...]:
    """The per-token inputs ``gate`` reads besides ``fired`` and ``real`` (module docstring)."""
    return tuple(getattr(gate, "needs", ()))


def probe_component(gate: Any) -> ProbeGate | None:
    """``gate`` itself if it is a probe gate, else its probe-gate component (of an :class:`AnyGate`), if any."""
    if isinstance(gate, ProbeGate):
        return gate
    return next((g for g in getattr(gate, "gates", ()) if isinstance(g, ProbeGate)), None)


def gate_probe(gate: Any) -> LinearProbe | None:
    """The linear probe ``gate`` (or one of its components) reads, if any."""
    component = probe_component(gate)
    return None if component is None else component.probe


def scope_bounds(
    real: Bool[Tensor, "batch pos"], window: int | None, turn_start: Bool[Tensor, "batch pos"] | None = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Per position t, in counts of real tokens: ``n_real`` (real tokens at or before t) and ``lower`` (real
    tokens before the scope: the last ``window`` real tokens, and with ``turn_start`` none before the latest
    user turn opened). The scope holds real tokens number lower+1 .. n_real."""
    n_real = real.long().cumsum(-1)
    lower = torch.zeros_like(n_real) if window is None else (n_real - window).clamp(min=0)
    if turn_start is not None:
        before_turn = torch.where(turn_start, n_real - real.long(), torch.zeros_like(n_real)).cummax(-1).values
        lower = torch.maximum(lower, before_turn)
    return n_real, lower


def _compacted(values: Float[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """``values`` of the real tokens moved to the left, in order (the rest after them)."""
    order = torch.argsort((~real).to(torch.uint8), dim=-1, stable=True)
    return values.gather(-1, order)


def scope_sum(
    values: Float[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], n_real: Int[Tensor, "batch pos"],
    lower: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos"]:
    """Per position: the sum of ``values`` over the real tokens number lower+1 .. n_real (:func:`scope_bounds`)."""
    prefix = torch.nn.functional.pad(_compacted(values * real, real).cumsum(-1), (1, 0))
    return prefix.gather(-1, n_real) - prefix.gather(-1, lower)


def scope_max(
    values: Float[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], n_real: Int[Tensor, "batch pos"],
    lower: Int[Tensor, "batch pos"], window: int,
) -> Float[Tensor, "batch pos"]:
    """Per position: the max of ``values`` over the real tokens number lower+1 .. n_real, a scope of at most
    ``window`` real tokens (-inf where it is empty)."""
    compact = torch.nn.functional.pad(_compacted(values, real), (window, 0), value=float("-inf"))
    windows = compact.unfold(-1, window, 1)  # [batch, pos + 1, window]: row k = real tokens number k-window+1 .. k
    rows = windows.gather(1, n_real[..., None].expand(*n_real.shape, window))
    number = n_real[..., None] - window + 1 + torch.arange(window, device=values.device)
    return torch.where(number > lower[..., None], rows, float("-inf")).amax(-1)


def causal_fraction(
    fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], window: int | None, min_tokens: int
) -> Float[Tensor, "batch pos"]:
    """Per position t: fired real tokens among the last ``window`` real tokens at or before t, divided by their
    number (``window=None``: all real tokens so far); -1 where fewer than ``min_tokens`` real tokens precede."""
    fired_real = (fired & real).float()
    if window is None:
        n_real = real.long().cumsum(-1)
        count = fired_real.cumsum(-1)
        width = n_real
    else:
        n_real, lower = scope_bounds(real, window)
        count = scope_sum(fired_real, real, n_real, lower)
        width = n_real - lower
    fraction = count / width.clamp(min=1)
    return torch.where(n_real >= min_tokens, fraction, torch.full_like(fraction, _NEVER))


def clamp_positions(
    gate: Gate, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], **extras: Tensor
) -> Bool[Tensor, "batch pos"]:
    """Where a guardrail with ``gate`` clamps: real tokens where a selected latent fired and the gate is on."""
    return gate.decisions(fired, real, **extras) & fired & real


GATES: dict[str, type] = {"paper": PaperGate, "prefix": PrefixGate, "window": WindowGate, "count": CountGate}
"""Gates built from their name and numbers alone (the command line's ``--gate``)."""
_BUILT_FROM_PARTS: dict[str, type] = {"probe": ProbeGate, "any": AnyGate}
DEFAULT_GATE = "window"
"""The gate :meth:`DynamicSAEGuardrail.fit` uses unless told otherwise (chosen by measurement: README)."""


def make_gate(kind: str, **params: Any) -> Gate:
    """A gate by name (``"paper"``, ``"prefix"``, ``"window"``, ``"count"``; ``"probe"`` with ``probe=``, ``"any"``
    with ``gates=``) with its parameters."""
    if kind in _BUILT_FROM_PARTS:
        return _BUILT_FROM_PARTS[kind](**params)
    if kind not in GATES:
        raise ValueError(f"unknown gate kind {kind!r}; known: {sorted(GATES) + sorted(_BUILT_FROM_PARTS)}")
    return GATES[kind](**params)


def gate_tensors(gate: Gate, prefix: str = "gate") -> dict[str, Tensor]:
    """The tensors a saved ``gate`` needs besides ``gate.to_dict()`` (a probe's weights), named under ``prefix``."""
    if isinstance(gate, ProbeGate):
        return gate.probe.tensors(f"{prefix}.probe")
    out: dict[str, Tensor] = {}
    for i, component in enumerate(getattr(gate, "gates", ())):
        out.update(gate_tensors(component, f"{prefix}.{i}"))
    return out


def gate_from_dict(data: dict[str, Any], tensors: dict[str, Tensor] | None = None, prefix: str = "gate") -> Gate:
    """Rebuild a gate saved with ``gate.to_dict()`` (and :func:`gate_tensors` for a probe's weights); rejects
    unknown kinds and non-finite thresholds."""
    params = {k: v for k, v in data.items() if k != "kind"}
    tau = params.get("tau")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not torch.isfinite(torch.tensor(float(tau))):
        raise ValueError(f"gate threshold tau must be a finite number, got {tau!r}")
    kind = str(data.get("kind"))
    if kind == "probe":
        if not isinstance(params.get("probe"), dict):
            raise ValueError("a saved probe gate lacks its probe's description ('probe': {...})")
        params["probe"] = LinearProbe.from_dict(params["probe"], tensors or {}, f"{prefix}.probe")
    if kind == "any":
        parts = params.get("gates")
        if not isinstance(parts, list):
            raise ValueError("a saved 'any' gate lacks its list of gates")
        params["gates"] = tuple(gate_from_dict(part, tensors, f"{prefix}.{i}") for i, part in enumerate(parts))
    return make_gate(kind, **params)


def calibrate_gate(
    gate: Gate, fired: Bool[Tensor, "batch pos"], real: Bool[Tensor, "batch pos"], p_dyn: float | int,
    **extras: Tensor,
) -> Gate:
    """``gate`` with its threshold(s) calibrated on retain sequences: tau = the ``p_dyn`` percentile of its
    calibration scores (a gate with its own ``calibrate``, e.g. :class:`AnyGate`, does it its way)."""
    own = getattr(gate, "calibrate", None)
    if own is not None:
        return own(fired, real, p_dyn, **extras)
    return gate.with_tau(calibrate_tau(gate.calibration_scores(fired, real, **extras), p_dyn))


def calibrate_tau(scores: Float[Tensor, " n"], p_dyn: float | int) -> float:
    """The ``p_dyn`` percentile (linear interpolation, as numpy) of gate scores on retain sequences."""
    if not 0 <= p_dyn <= 100:
        raise ValueError(f"p_dyn={p_dyn} is outside 0-100 (it is a percentile)")
    if scores.numel() == 0:
        raise ValueError("cannot calibrate tau on zero retain sequences")
    if not torch.isfinite(scores).all():
        raise ValueError("retain gate scores contain NaN/inf")
    return float(torch.quantile(scores.double(), p_dyn / 100.0))
