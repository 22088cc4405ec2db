"""Which adapter an SAE gets: a registry keyed on the SAELens architecture AND the options that change what encode
and decode compute (run-time normalisation, TopK's decoder-norm rescaling), like SAELens's own ``registry``.

A key that is not registered, or an SAE whose class the registered adapter was not proven for (a subclass may
override encode/decode), gets :class:`~dsg_lens.sae_adapters.fallback.FallbackAdapter`: SAELens's own
encode/decode, always right. Adding an architecture = one module + one :func:`register_adapter` line below.

Not registered on purpose (-> fallback): ``normalize_activations`` "layer_norm" / "constant_norm_rescale" (decode
rescales by per-input state), "covariance_whitening" and anything SAELens adds later; ``temporal`` (encode reads
the context); transcoders that reconstruct the hook they read (others are refused, see
:mod:`~dsg_lens.sae_adapters.transcoder`); SAELens training classes other than the TopK family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sae_lens import SAE
from torch import Tensor

from dsg_lens.sae_adapters.abstopk import AbsTopKAdapter
from dsg_lens.sae_adapters.base import Device, SAEAdapter
from dsg_lens.sae_adapters.batchtopk import BatchTopKAdapter
from dsg_lens.sae_adapters.fallback import FallbackAdapter
from dsg_lens.sae_adapters.gated import GatedAdapter
from dsg_lens.sae_adapters.jumprelu import JumpReLUAdapter
from dsg_lens.sae_adapters.matching_pursuit import MatchingPursuitAdapter
from dsg_lens.sae_adapters.matryoshka_batchtopk import MatryoshkaBatchTopKAdapter
from dsg_lens.sae_adapters.standard import StandardAdapter
from dsg_lens.sae_adapters.topk import TopKAdapter

RUNTIME_IDENTITY = ("none", "expected_average_only_in")
"""Normalisations that leave SAELens 6's encode/decode input untouched at run time ("expected_average_only_in":
the factor is folded into the weights when the SAE is loaded)."""


@dataclass(frozen=True)
class AdapterKey:
    """What decides the adapter: architecture name and the options that change encode/decode."""

    architecture: str
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False


ADAPTER_REGISTRY: dict[AdapterKey, type[SAEAdapter]] = {}


def register_adapter(
    architecture: str,
    adapter: type[SAEAdapter],
    *,
    normalizations: Sequence[str] = RUNTIME_IDENTITY,
    rescale: Sequence[bool] = (False,),
) -> None:
    """Register ``adapter`` for every combination of ``normalizations`` x ``rescale`` of ``architecture``."""
    for norm in normalizations:
        for flag in rescale:
            key = AdapterKey(architecture, norm, flag)
            if key in ADAPTER_REGISTRY:
                raise ValueError(f"an adapter is already registered for {key}")
            ADAPTER_REGISTRY[key] = adapter


def adapter_key(sae: SAE) -> AdapterKey:
    cfg = sae.cfg
    return AdapterKey(
        str(cfg.architecture()),
        str(getattr(cfg, "normalize_activations", "none")),
        bool(getattr(cfg, "rescale_acts_by_decoder_norm", False)),
    )


def adapter_class(sae: SAE) -> type[SAEAdapter]:
    """The registered adapter for ``sae``'s key when it is proven for ``type(sae)``, else the fallback."""
    adapter = ADAPTER_REGISTRY.get(adapter_key(sae))
    if adapter is None or type(sae) not in adapter.sae_classes:
        return FallbackAdapter
    return adapter


def adapter_for(sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None) -> SAEAdapter:
    """The adapter for latents ``latent_ids`` of ``sae``, its weights on ``device`` (default: the SAE's).

    Raises ValueError for empty, out-of-range or duplicated ids, NaN/inf in the parameters the latents use, and
    SAEs whose edit cannot be written at one hook (hook_z SAEs; transcoders between two hooks)."""
    return adapter_class(sae)(sae, latent_ids, device)


register_adapter("standard", StandardAdapter)
register_adapter("jumprelu", JumpReLUAdapter)
register_adapter("gated", GatedAdapter)
register_adapter("topk", TopKAdapter, rescale=(False, True))
register_adapter("abstopk", AbsTopKAdapter, rescale=(False, True))
register_adapter("batchtopk", BatchTopKAdapter, rescale=(False, True))
register_adapter("matryoshka_batchtopk", MatryoshkaBatchTopKAdapter, rescale=(False, True))
register_adapter("matching_pursuit", MatchingPursuitAdapter)
