"""``matryoshka_batchtopk`` (SAELens ``MatryoshkaBatchTopKTrainingSAE``): BatchTopK whose training loss also
reconstructs from nested prefixes of the latents; encode and decode are BatchTopK's (see
:mod:`~dsg_lens.sae_adapters.batchtopk`, including its footgun)."""

from __future__ import annotations

from sae_lens import MatryoshkaBatchTopKTrainingSAE

from dsg_lens.sae_adapters.topk import TopKAdapter


class MatryoshkaBatchTopKAdapter(TopKAdapter):
    sae_classes = (MatryoshkaBatchTopKTrainingSAE,)
