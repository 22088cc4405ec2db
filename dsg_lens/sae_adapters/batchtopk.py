"""``batchtopk`` (SAELens ``BatchTopKTrainingSAE``; saved for inference as a JumpReLU SAE, which
:mod:`~dsg_lens.sae_adapters.jumprelu` handles): the top ``k * n_positions`` activations of the WHOLE batch survive,
so a position's latents depend on the other rows of the batch. SAELens's own encode of exactly the given ``x``;
TopK's decode, so the delta-form edit.

Footgun: encode results change with the batch composition; save the SAE for inference (JumpReLU) before using it
in a guardrail."""

from __future__ import annotations

from sae_lens import BatchTopKTrainingSAE

from dsg_lens.sae_adapters.topk import TopKAdapter


class BatchTopKAdapter(TopKAdapter):
    sae_classes = (BatchTopKTrainingSAE,)
