"""The error-term attack: a residual steering that keeps what the gate reads below its thresholds, so the
guardrail never switches on, while the rest of the activation (the SAE's error term and every other latent) is
left to carry the forget knowledge ("SAE interventions are unreliable", arXiv 2606.18322, in DSG's setting).

Threat model (white box on the guardrail, write access to the residual stream at the guardrail's hook): the
attacker knows the SAE, the selected latents and, in the adaptive variant, the probe of a probe gate. At every
real token it adds the minimum-norm change ``delta`` (in the span of the constraint directions) that brings each
violated constraint exactly to its target and leaves the others' values unchanged:

- each selected latent's pre-activation ``h_j = (x - b_dec) . W_enc[:, j] + b_enc[j]`` to at most its firing
  threshold (0 for ReLU, ``threshold_j`` for JumpReLU) minus ``margin``;
- with ``evade_probe`` (adaptive), the probe's logit to at most logit(``probe_p``), ``probe_p`` below the probe
  gate's tau, so a mean or a max of the probe's probabilities stays below it.

``delta = (target - value)_violated @ pinv(A)`` with ``A`` = the constraint directions [d_in, m] (full column rank).
The attacker's cost is recorded per run: the mean of ||delta|| / ||x|| over real tokens and the share of real
tokens edited. ReLU and JumpReLU SAEs (the exact-slice adapters' encoders) only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dsg_lens.gate import probe_component
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.hooks import HookSpec
from dsg_lens.sae_adapters import adapter_for
from dsg_lens.sae_adapters.jumprelu import JumpReLUAdapter
from dsg_lens.sae_adapters.standard import StandardAdapter
from dsg_lens.sae_view import check_sae_fits_model
from dsg_lens.tracking import real_positions

STEERING_ORDER = -10
"""The steering runs before the guardrail (order 0) and a probe observer (order -1) on the same HookPoint."""


def error_term_support(guard: DynamicSAEGuardrail) -> str | None:
    """None if :class:`ErrorTermAttack` can steer against ``guard``, else why not."""
    adapter = adapter_for(guard.sae, guard.latent_ids)
    if not isinstance(adapter, (StandardAdapter, JumpReLUAdapter)):
        return (f"the error-term attack needs a ReLU or JumpReLU SAE (exact linear encoder); this SAE's adapter is "
                f"{type(adapter).__name__}")
    return None


class ErrorTermAttack:
    """The steering against ``guard`` (module docstring); :meth:`hook_spec` attaches it, :meth:`cost` reads the
    attacker's cost since the last :meth:`reset`."""

    def __init__(self, guard: DynamicSAEGuardrail, *, margin: float = 0.01, evade_probe: bool = False,
                 probe_margin: float = 0.01):
        if margin < 0 or probe_margin < 0:
            raise ValueError("margins must be >= 0")
        self.guard = guard
        self.margin = float(margin)
        self.evade_probe = bool(evade_probe)
        self.probe_margin = float(probe_margin)
        self.probe_gate = probe_component(guard.gate) if evade_probe else None
        if evade_probe and self.probe_gate is None:
            raise ValueError("evade_probe=True but the guardrail's gate reads no probe")
        if self.probe_gate is not None and self.probe_gate.probe.hook_name != guard.hook_name:
            raise ValueError("the adaptive error-term attack steers at the guardrail's hook: the probe must read it")
        self.reset()

    def reset(self) -> None:
        self._sums = {"rel_norm": 0.0, "edited": 0, "real": 0}

    def cost(self) -> dict[str, float]:
        """``mean_rel_norm``: mean ||delta|| / ||x|| over real tokens; ``edited_share``: share of real tokens edited."""
        n = max(self._sums["real"], 1)
        return {"mean_rel_norm": self._sums["rel_norm"] / n, "edited_share": self._sums["edited"] / n,
                "real_tokens": self._sums["real"]}

    def _constraints(self, device: torch.device) -> tuple[Any, Tensor, Tensor, Tensor]:
        """(adapter, directions A [d_in, m], offsets [m], targets [m]): value = sae_in @ A[:, :n] + offsets for
        the latents (sae_in = x - b_dec), x @ A[:, n:] + offsets for the probe."""
        unsupported = error_term_support(self.guard)
        if unsupported:
            raise ValueError(unsupported)
        adapter = adapter_for(self.guard.sae, self.guard.latent_ids, device=device)
        directions, offsets = adapter.W_enc.double(), adapter.b_enc.double()
        jump = isinstance(adapter, JumpReLUAdapter)
        floor = adapter.threshold.double().clamp(min=0) if jump else torch.zeros_like(offsets)
        targets = floor - self.margin
        if self.probe_gate is not None:
            probe = self.probe_gate.probe.to(device)
            p = min(float(self.probe_gate.tau), 0.5) - self.probe_margin
            if not 0 < p < 1:
                raise ValueError(f"the probe gate's tau={self.probe_gate.tau} leaves no probability to aim below")
            directions = torch.cat([directions, probe.weight.double()[:, None]], dim=1)
            offsets = torch.cat([offsets, torch.tensor([probe.bias], dtype=torch.float64, device=device)])
            targets = torch.cat([targets, torch.tensor([math.log(p / (1 - p))], dtype=torch.float64, device=device)])
        return adapter, directions, offsets, targets

    def hook_spec(self, model: nn.Module) -> HookSpec:
        """The steering as a HookSpec at the guardrail's hook (attach it before the guardrail, in an outer scope)."""
        hook_name = check_sae_fits_model(model, self.guard.sae, self.guard.hook_name)
        device = torch.device(model.cfg.device)
        adapter, directions, offsets, targets = self._constraints(device)
        n_latents = adapter.n
        pinv = torch.linalg.pinv(directions)  # [m, d_in]: delta @ directions = change of the values
        b_dec = adapter.b_dec.double() if adapter.b_dec is not None else None

        def steer(resid: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
            real = real_positions(resid, hook)
            x = resid.double()
            sae_in = x - b_dec if b_dec is not None else x
            values = torch.cat([sae_in @ directions[:, :n_latents], x @ directions[:, n_latents:]], -1) + offsets
            change = (targets - values).clamp(max=0.0) * real[..., None]
            delta = change @ pinv
            edited = change.ne(0).any(-1)
            norm = x.detach().norm(dim=-1).clamp(min=1e-12)
            self._sums["rel_norm"] += float((delta.detach().norm(dim=-1) / norm)[real].sum())
            self._sums["edited"] += int(edited.sum())
            self._sums["real"] += int(real.sum())
            return torch.where(edited[..., None], (x + delta).to(resid.dtype), resid)

        variant = "adaptive" if self.probe_gate is not None else "latents"
        return HookSpec(hook_name, steer, order=STEERING_ORDER, label=f"error-term-attack ({variant})",
                        needs_tokens=True)
