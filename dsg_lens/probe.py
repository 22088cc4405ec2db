"""A linear probe on a hook's raw activations: logistic regression of forget vs retain corpus tokens, in torch.

The probe gate (:class:`~dsg_lens.gate.ProbeGate`) reads its per-token logit ``w . x + b`` on the activation ``x``
at ``hook_name`` (by default the guardrail's SAE hook). Training (:func:`train_probe`):

- activations of the real tokens (:mod:`dsg_lens.real_tokens`) of forget and retain corpus texts, read with the
  one activation iterator (:func:`~dsg_lens.activations.iter_activations`, the model run up to the hook's block);
  each token is labelled with its text's side; a share of the texts (``holdout``) is kept out for evaluation;
- features standardised with the training tokens' mean and standard deviation; both sides weighted equally;
  an L2 penalty; full-batch L-BFGS; the standardisation is folded into ``w`` and ``b``;
- ``info`` records the numbers of tokens and the token-level AUROC on the training and held-out texts.

Weights are float32 on the CPU; :meth:`LinearProbe.to` makes a copy on a device. Saved through the guardrail as
JSON (hook name, bias, info) + a safetensors weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dsg_lens.activations import iter_activations
from dsg_lens.tokens import to_sequences


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """``logits(x) = x @ weight + bias`` on activations at ``hook_name`` (module docstring)."""

    weight: Float[Tensor, " d_in"]
    bias: float
    hook_name: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.weight, Tensor) or self.weight.ndim != 1 or not self.weight.is_floating_point():
            shape = getattr(self.weight, "shape", self.weight)
            raise ValueError(f"probe weight must be a 1-D float tensor [d_in], got {shape!r}")
        if not torch.isfinite(self.weight).all() or not math.isfinite(self.bias):
            raise ValueError("probe weight/bias contain NaN/inf")
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError(f"probe hook_name must be a HookPoint name, got {self.hook_name!r}")

    @property
    def d_in(self) -> int:
        return int(self.weight.numel())

    def logits(self, acts: Float[Tensor, "*batch d_in"]) -> Float[Tensor, " *batch"]:
        """The probe's logit per position (float32 at least; on the activations' device)."""
        if acts.shape[-1] != self.d_in:
            raise ValueError(f"activations of width {acts.shape[-1]} do not fit a probe of d_in={self.d_in}")
        dtype = torch.promote_types(acts.dtype, torch.float32)
        weight = self.weight if self.weight.device == acts.device else self.weight.to(acts.device)
        return acts.to(dtype) @ weight.to(dtype) + self.bias

    def to(self, device: torch.device | str) -> LinearProbe:
        """The same probe with its weight on ``device``."""
        return LinearProbe(self.weight.to(device), self.bias, self.hook_name, self.info)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LinearProbe) and self.hook_name == other.hook_name and self.bias == other.bias
                and self.weight.shape == other.weight.shape and torch.equal(self.weight.cpu(), other.weight.cpu()))

    def __hash__(self) -> int:
        return hash((self.hook_name, self.d_in, self.bias))

    def to_dict(self) -> dict[str, Any]:
        return {"hook_name": self.hook_name, "d_in": self.d_in, "bias": self.bias, "info": self.info}

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.weight": self.weight.detach().float().cpu()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> LinearProbe:
        key = f"{prefix}.weight"
        if key not in tensors:
            raise ValueError(f"the saved probe's weight {key!r} is missing from the tensors file")
        weight = tensors[key].float()
        if int(data.get("d_in", -1)) != weight.numel():
            raise ValueError(f"the saved probe says d_in={data.get('d_in')} but its weight has {weight.numel()} values")
        bias = data.get("bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise ValueError(f"the saved probe's bias must be a number, got {bias!r}")
        return cls(weight, float(bias), str(data.get("hook_name", "")), dict(data.get("info") or {}))


def token_activations(
    model: nn.Module, texts: Sequence[str], hook_name: str, *, max_tokens: int | None = None,
    batch_size: int = 8, max_len: int | None = None, progress: bool = False, desc: str = "probe activations",
) -> Float[Tensor, "n d_in"]:
    """Activations at ``hook_name`` of the real tokens of ``texts`` (in order; at most ``max_tokens``), float32 CPU;
    texts cut into windows of ``max_len`` tokens (None: min(256, n_ctx))."""
    sequences = to_sequences(model, list(texts), max_len or min(256, int(model.cfg.n_ctx)))
    parts: list[Tensor] = []
    total = 0
    with torch.no_grad():
        for batch, acts in iter_activations(model, hook_name, sequences, batch_size, progress=progress, desc=desc):
            rows = acts[batch.real].float().cpu()
            parts.append(rows)
            total += rows.shape[0]
            if max_tokens is not None and total >= max_tokens:
                break
    if total == 0:
        raise ValueError("no real tokens in the probe's training texts")
    return torch.cat(parts)[:max_tokens]


def auroc(positive: Float[Tensor, " p"], negative: Float[Tensor, " q"]) -> float:
    """P(a positive scores above a negative), ties counted half (rank form: O((p + q) log(p + q)) memory-light)."""
    scores = torch.cat([positive, negative]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    unique, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    rank_sum = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (rank_sum / counts)[inverse]  # mid-ranks for ties
    p, q = positive.numel(), negative.numel()
    return float((ranks[:p].sum() - p * (p + 1) / 2) / (p * q))


def fit_logistic(
    x: Float[Tensor, "n d"], y: Float[Tensor, " n"], *, l2: float = 1e-3, steps: int = 100
) -> tuple[Float[Tensor, " d"], float]:
    """Class-balanced logistic regression with an L2 penalty on standardised ``x`` (full-batch L-BFGS); returns
    (weight, bias) in the units of ``x``."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    pos = float(y.sum())
    neg = float(y.numel()) - pos
    if pos == 0 or neg == 0:
        raise ValueError("the probe needs tokens of both sides (forget and retain)")
    sample_weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / neg)
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = z @ w + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
                * sample_weight).sum() + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight = (w.detach() / std)
    bias = float(b.detach() - (mean * weight).sum())
    return weight, bias


def train_probe(
    model: nn.Module,
    forget_texts: Sequence[str],
    retain_texts: Sequence[str],
    hook_name: str,
    *,
    max_tokens: int = 20_000,
    holdout: float = 0.2,
    l2: float = 1e-3,
    steps: int = 100,
    batch_size: int = 8,
    max_len: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LinearProbe:
    """A linear probe of forget vs retain tokens at ``hook_name`` (module docstring); at most ``max_tokens``
    training tokens per side, texts shuffled with ``seed``, the last ``holdout`` share of each side's texts held
    out for the AUROC in ``info``."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout={holdout} must be in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    sides: dict[str, tuple[Tensor, Tensor | None]] = {}
    for side, texts in (("forget", list(forget_texts)), ("retain", list(retain_texts))):
        if len(texts) < (2 if holdout else 1):
            raise ValueError(f"{side}: the probe needs {'at least two texts' if holdout else 'a text'} per side")
        order = torch.randperm(len(texts), generator=gen).tolist()
        n_train = len(texts) - (max(1, round(holdout * len(texts))) if holdout else 0)
        train = token_activations(model, [texts[i] for i in order[:n_train]], hook_name, max_tokens=max_tokens,
                                  batch_size=batch_size, max_len=max_len, progress=progress, desc=f"probe {side}")
        test = (token_activations(model, [texts[i] for i in order[n_train:]], hook_name,
                                  max_tokens=max_tokens // 4 or None, batch_size=batch_size, max_len=max_len)
                if holdout else None)
        sides[side] = (train, test)
    x = torch.cat([sides["forget"][0], sides["retain"][0]]).double()
    y = torch.cat([torch.ones(len(sides["forget"][0])), torch.zeros(len(sides["retain"][0]))]).double()
    weight, bias = fit_logistic(x, y, l2=l2, steps=steps)
    probe = LinearProbe(weight.float(), bias, hook_name)
    info: dict[str, Any] = {"n_train": {s: int(v[0].shape[0]) for s, v in sides.items()}, "l2": l2, "steps": steps,
                            "seed": seed, "max_len": max_len,
                            "train_auroc": auroc(probe.logits(sides["forget"][0]), probe.logits(sides["retain"][0]))}
    if holdout:
        test_f, test_r = sides["forget"][1], sides["retain"][1]
        info["n_heldout"] = {"forget": int(test_f.shape[0]), "retain": int(test_r.shape[0])}
        info["heldout_auroc"] = auroc(probe.logits(test_f), probe.logits(test_r))
    return LinearProbe(probe.weight, bias, hook_name, info)
