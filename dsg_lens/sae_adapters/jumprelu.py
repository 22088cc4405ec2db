"""``jumprelu`` (SAELens ``JumpReLUSAE``, also what BatchTopK SAEs are saved as): ``h = (x - b_dec) @ W_enc + b_enc``,
``relu(h) * (h > threshold)``; decode ``acts @ W_dec + b_dec``. Exact sliced encode; delta-form edit."""

from __future__ import annotations

from collections.abc import Sequence

from sae_lens import SAE, JumpReLUSAE
from torch import Tensor

from dsg_lens.sae_adapters.base import Device, ExactSliceAdapter


class JumpReLUAdapter(ExactSliceAdapter):
    sae_classes = (JumpReLUSAE,)

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        self.register_buffer("W_enc", self._slice(sae, "W_enc"))
        self.register_buffer("b_enc", self._slice(sae, "b_enc"))
        self.register_buffer("threshold", self._slice(sae, "threshold"))

    def _encode(self, x: Tensor) -> Tensor:
        hidden = self._sae_in(x) @ self.W_enc + self.b_enc
        return hidden.relu() * (hidden > self.threshold).to(hidden.dtype)
