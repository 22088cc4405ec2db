"""``topk`` (SAELens ``TopKSAE``, and its training class): latents compete in encode (the k largest pre-activations
survive), so SAELens's own ``encode`` runs and the selected columns are read from it; decode
``(acts / ||W_dec||) @ W_dec + b_dec`` under ``rescale_acts_by_decoder_norm``, else ``acts @ W_dec + b_dec``: linear,
so the edit is the delta form along the effective rows ``W_dec[j] / ||W_dec[j]||`` (resp. ``W_dec[j]``)."""

from __future__ import annotations

from sae_lens import SAE, TopKSAE, TopKTrainingSAE
from torch import Tensor

from dsg_lens.sae_adapters.base import FullEncodeAdapter, selected


class TopKAdapter(FullEncodeAdapter):
    sae_classes: tuple[type, ...] = (TopKSAE, TopKTrainingSAE)

    @classmethod
    def decoder_rows(cls, sae: SAE, ids: list[int]) -> Tensor:
        rows = selected(sae.W_dec, "W_dec", ids)
        if sae.cfg.rescale_acts_by_decoder_norm:
            # SAELens multiplies the acts by 1 / ||W_dec[j]|| before W_dec: the same product, per row
            rows = rows * (1 / rows.norm(dim=-1, keepdim=True))
        return rows
