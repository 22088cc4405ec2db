"""``abstopk`` (SAELens ``AbsTopKSAE``): TopK by magnitude with the sign kept (latents may be negative); same decode
as TopK, so the same adapter: SAELens's own encode, delta-form edit."""

from __future__ import annotations

from sae_lens import AbsTopKSAE
from sae_lens.saes.abstopk_sae import AbsTopKTrainingSAE

from dsg_lens.sae_adapters.topk import TopKAdapter


class AbsTopKAdapter(TopKAdapter):
    sae_classes = (AbsTopKSAE, AbsTopKTrainingSAE)
