"""SAE adapters: what dsg-lens needs of an SAELens SAE, one module per architecture (like SAELens's ``saes/``).

``adapter_for(sae, latent_ids, device=None)`` returns an :class:`SAEAdapter` with ``encode(x)`` (the selected
latents' activations, == ``sae.encode(x)[..., ids]``) and ``edit(x, old, new, where)`` (the selected latents set to
``new`` where ``where`` is True, SAELens's reconstruction error kept; ``x`` bit-identical elsewhere).
:func:`reference_edit` is the full-form reference as a plain function.

Which adapter (``registry``; fast paths only with ``normalize_activations`` "none" or "expected_average_only_in"):

- exact slice + delta form: ``StandardAdapter``, ``JumpReLUAdapter``, ``GatedAdapter`` (SAELens inference classes);
- SAELens's full encode + delta form along the effective decoder rows: ``TopKAdapter`` (topk, rescaled or not),
  ``AbsTopKAdapter``, ``BatchTopKAdapter``, ``MatryoshkaBatchTopKAdapter``, ``MatchingPursuitAdapter``;
- ``FallbackAdapter`` (SAELens encode + decode + error): everything else, e.g. run-time normalisation
  (layer_norm, constant_norm_rescale), temporal SAEs, same-hook transcoders, classes no adapter is proven for.
"""

from dsg_lens.sae_adapters.base import ExactSliceAdapter, FullEncodeAdapter, LinearDecodeAdapter, SAEAdapter
from dsg_lens.sae_adapters.fallback import FallbackAdapter, reference_edit
from dsg_lens.sae_adapters.registry import (
    ADAPTER_REGISTRY,
    AdapterKey,
    adapter_class,
    adapter_for,
    adapter_key,
    register_adapter,
)

__all__ = [
    "ADAPTER_REGISTRY",
    "AdapterKey",
    "ExactSliceAdapter",
    "FallbackAdapter",
    "FullEncodeAdapter",
    "LinearDecodeAdapter",
    "SAEAdapter",
    "adapter_class",
    "adapter_for",
    "adapter_key",
    "reference_edit",
    "register_adapter",
]
