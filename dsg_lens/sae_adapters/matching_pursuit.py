"""``matching_pursuit`` (SAELens ``MatchingPursuitSAE``): encode greedily picks latents against the residual of the
previous picks (latents compete), so SAELens's own encode runs; decode ``acts @ W_dec (+ b_dec)`` is linear, so the
edit is the delta form."""

from __future__ import annotations

from sae_lens import MatchingPursuitSAE

from dsg_lens.sae_adapters.base import FullEncodeAdapter


class MatchingPursuitAdapter(FullEncodeAdapter):
    sae_classes = (MatchingPursuitSAE,)
