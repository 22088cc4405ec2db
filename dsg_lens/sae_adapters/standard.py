"""``standard`` (SAELens ``StandardSAE``): ``relu((x - b_dec) @ W_enc + b_enc)``, decode ``acts @ W_dec + b_dec``.
Exact sliced encode; delta-form edit."""

from __future__ import annotations

from collections.abc import Sequence

from sae_lens import SAE, StandardSAE
from torch import Tensor

from dsg_lens.sae_adapters.base import Device, ExactSliceAdapter


class StandardAdapter(ExactSliceAdapter):
    sae_classes = (StandardSAE,)

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        self.register_buffer("W_enc", self._slice(sae, "W_enc"))
        self.register_buffer("b_enc", self._slice(sae, "b_enc"))

    def _encode(self, x: Tensor) -> Tensor:
        return (self._sae_in(x) @ self.W_enc + self.b_enc).relu()
