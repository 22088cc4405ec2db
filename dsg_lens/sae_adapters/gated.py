"""``gated`` (SAELens ``GatedSAE``): gate ``(x - b_dec) @ W_enc + b_gate > 0`` times magnitude
``relu((x - b_dec) @ (W_enc * exp(r_mag)) + b_mag)``, per latent; decode ``acts @ W_dec + b_dec``. Exact sliced
encode; delta-form edit."""

from __future__ import annotations

from collections.abc import Sequence

from sae_lens import SAE, GatedSAE
from torch import Tensor

from dsg_lens.sae_adapters.base import Device, ExactSliceAdapter


class GatedAdapter(ExactSliceAdapter):
    sae_classes = (GatedSAE,)

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        w_enc = self._slice(sae, "W_enc")
        self.register_buffer("W_enc", w_enc)
        self.register_buffer("W_mag", w_enc * self._slice(sae, "r_mag").exp())
        self.register_buffer("b_gate", self._slice(sae, "b_gate"))
        self.register_buffer("b_mag", self._slice(sae, "b_mag"))

    def _encode(self, x: Tensor) -> Tensor:
        sae_in = self._sae_in(x)
        active = (sae_in @ self.W_enc + self.b_gate > 0).to(sae_in.dtype)
        return active * (sae_in @ self.W_mag + self.b_mag).relu()
