"""Latent interventions on an SAE at its HookPoint, as :class:`~dsg_lens.hooks.HookSpec` objects.

Every intervention edits the activations ``a`` of a few selected latents into ``a'`` through the SAE's adapter
(:func:`~dsg_lens.sae_adapters.adapter_for`): ``resid' = decode(a') + (resid - decode(a))``, the SAE's
reconstruction error kept (for plain ReLU/JumpReLU/TopK SAEs the delta form ``resid + (a' - a) @ W_dec[selected]``;
SAELens's own encode/decode for SAEs with run-time normalisation). Tokens where nothing changes are returned
bit-identical. Rules (``new`` from ``a``):

- :func:`zero_ablate`: ``a' = 0``; :func:`mean_ablate`: ``a' = mean_j`` (e.g. ``LatentStats.mean_act``);
- :func:`clamp_latents`: ``a' = value``; :func:`scale_latents`: ``a' = factor * a``; :func:`steer_latents`:
  ``a' = a + amount``; values may be one number or one per latent;
- :func:`static_clamp`: Farrell et al.'s baseline, each selected latent set to ``-multiplier`` wherever it fires.

``where`` restricts the edit to some tokens: a bool tensor broadcastable to ``[batch, pos]``, or a callable
``where(activation, hook) -> Bool[batch, pos]``. ``only_where_active=True`` edits latent j only at tokens where
latent j is > 0. :func:`cache_spec` is an observer that stores an activation (order after the edits).

Footgun: a ``where`` tensor is fixed in shape; during KV-cached generation the hook sees one new position per
pass, so use a callable there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor

from dsg_lens.hooks import HookSpec
from dsg_lens.tracking import real_positions
from dsg_lens.sae_adapters import SAEAdapter, adapter_for
from dsg_lens.sae_view import sae_hook_name
from dsg_lens.stats import LatentStats

EDIT_ORDER = 10
"""Default ``order`` of interventions: after the guardrail (order 0) when attached in the same call."""
OBSERVE_ORDER = 100
"""Default ``order`` of :func:`cache_spec`: after every edit attached in the same call."""

Where = Bool[Tensor, "*batch pos"] | Callable[..., Tensor] | None
Values = float | int | Sequence[float | int] | Float[Tensor, " n"]
Rule = Callable[[Float[Tensor, "batch pos n"]], Float[Tensor, "batch pos n"]]


def _latent_ids(latent_ids: int | Sequence[int]) -> list[int]:
    return [int(latent_ids)] if isinstance(latent_ids, int) else [int(i) for i in latent_ids]


def _per_latent(name: str, values: Values, n: int) -> Float[Tensor, " n"]:
    """``values`` as a float tensor [n] (one number is repeated); raises on wrong length or non-finite values."""
    tensor = torch.as_tensor(values, dtype=torch.float32).detach().flatten().cpu()
    if tensor.numel() == 1:
        tensor = tensor.expand(n).clone()
    if tensor.numel() != n:
        raise ValueError(f"{name} has {tensor.numel()} values for {n} latents: give one number or one per latent")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains non-finite values")
    return tensor


def _where_mask(where: Where, act: Tensor, hook: Any) -> Bool[Tensor, "batch pos"] | None:
    if where is None:
        return None
    mask = where(act, hook) if callable(where) else where
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError("`where` must be a bool tensor [batch, pos] or a callable returning one")
    try:
        return torch.broadcast_to(mask.to(act.device), act.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"`where` mask of shape {tuple(mask.shape)} does not fit the activation {tuple(act.shape[:-1])} "
            "(during KV-cached generation pass a callable instead of a fixed tensor)"
        ) from err


def latent_intervention(
    sae: SAE,
    latent_ids: int | Sequence[int],
    rule: Rule,
    *,
    where: Where = None,
    only_where_active: bool = False,
    real_only: bool = False,
    hook_name: str | None = None,
    label: str = "latent-intervention",
    order: int = EDIT_ORDER,
) -> HookSpec:
    """A HookSpec that sets the selected latents to ``rule(a)`` (``a``: [batch, pos, n]) through the SAE's adapter.

    The building block of every named intervention in this module; the adapter (the SAE's weights it needs) is
    built once per device the hook runs on. Tokens not selected by ``where`` / ``only_where_active`` keep ``a``;
    with ``real_only`` so do the tokens that are not real (BOS/specials/padding, chat scaffolding, the first token
    of models without BOS: :mod:`dsg_lens.real_tokens`), read from the model's token tracker.
    """
    ids = _latent_ids(latent_ids)
    first = adapter_for(sae, ids)  # validates the ids now, not at the first forward pass
    adapters: dict[torch.device, SAEAdapter] = {first.latent_ids.device: first}

    def intervention_hook(resid: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
        adapter = adapters.get(resid.device)
        if adapter is None:
            adapter = adapters[resid.device] = adapter_for(sae, ids, device=resid.device)
        acts = adapter.encode(resid)
        new = rule(acts).to(acts.dtype)
        apply = torch.ones_like(acts, dtype=torch.bool) if not only_where_active else acts > 0
        mask = _where_mask(where, resid, hook)
        if mask is not None:
            apply = apply & mask[..., None]
        if real_only:
            apply = apply & real_positions(resid, hook)[..., None]
        new = torch.where(apply, new, acts)
        changed = (new != acts).any(-1)
        return adapter.edit(resid, acts, new, changed)

    return HookSpec(hook_name or sae_hook_name(sae), intervention_hook, order=order, label=label,
                    needs_tokens=real_only)


def _describe(kind: str, ids: list[int]) -> str:
    return f"{kind}[{ids[0]}]" if len(ids) == 1 else f"{kind}[{len(ids)} latents]"


def zero_ablate(sae: SAE, latent_ids: int | Sequence[int], **kwargs: Any) -> HookSpec:
    """Set the latents to 0 (``kwargs``: ``where``, ``only_where_active``, ``hook_name``, ``label``, ``order``)."""
    kwargs.setdefault("label", _describe("zero", _latent_ids(latent_ids)))
    return latent_intervention(sae, latent_ids, torch.zeros_like, **kwargs)


def mean_ablate(
    sae: SAE, latent_ids: int | Sequence[int], means: LatentStats | Float[Tensor, " d_sae"], **kwargs: Any
) -> HookSpec:
    """Set the latents to their mean activation (``means``: a :class:`LatentStats` or a [d_sae] tensor)."""
    ids = _latent_ids(latent_ids)
    table = means.mean_act if isinstance(means, LatentStats) else torch.as_tensor(means)
    if table.ndim != 1 or table.numel() != sae.cfg.d_sae:
        raise ValueError(
            f"means has shape {tuple(table.shape)} but the SAE has d_sae={sae.cfg.d_sae}: "
            "pass LatentStats collected with this SAE"
        )
    values = _per_latent("means", table.detach().float().cpu()[ids], len(ids))
    kwargs.setdefault("label", _describe("mean", ids))
    return latent_intervention(sae, ids, lambda acts: values.to(acts).expand_as(acts), **kwargs)


def clamp_latents(sae: SAE, latent_ids: int | Sequence[int], value: Values, **kwargs: Any) -> HookSpec:
    """Set the latents to ``value`` (one number or one per latent)."""
    ids = _latent_ids(latent_ids)
    values = _per_latent("value", value, len(ids))
    kwargs.setdefault("label", _describe("clamp", ids))
    return latent_intervention(sae, ids, lambda acts: values.to(acts).expand_as(acts), **kwargs)


def scale_latents(sae: SAE, latent_ids: int | Sequence[int], factor: Values, **kwargs: Any) -> HookSpec:
    """Multiply the latents by ``factor`` (one number or one per latent)."""
    ids = _latent_ids(latent_ids)
    factors = _per_latent("factor", factor, len(ids))
    kwargs.setdefault("label", _describe("scale", ids))
    return latent_intervention(sae, ids, lambda acts: acts * factors.to(acts), **kwargs)


def steer_latents(sae: SAE, latent_ids: int | Sequence[int], amount: Values, **kwargs: Any) -> HookSpec:
    """Add ``amount`` to the latents (one number or one per latent): steering along their decoder rows."""
    ids = _latent_ids(latent_ids)
    amounts = _per_latent("amount", amount, len(ids))
    kwargs.setdefault("label", _describe("steer", ids))
    return latent_intervention(sae, ids, lambda acts: acts + amounts.to(acts), **kwargs)


def static_clamp(
    sae: SAE, latent_ids: int | Sequence[int], multiplier: float | int, **kwargs: Any
) -> HookSpec:
    """Static SAE clamping (Farrell et al. 2024; SAEBench unlearning): every selected latent is set to
    ``-multiplier`` wherever it fires (> 0) on a real token, on every sequence (no gate). Like SAEBench (which
    leaves position 0 alone) and like the guardrail, BOS, special tokens, padding and chat scaffolding are never
    edited."""
    if not math.isfinite(multiplier) or multiplier < 0:
        raise ValueError(f"multiplier={multiplier} must be a finite non-negative number (latents are set to -it)")
    kwargs.setdefault("label", _describe("static-clamp", _latent_ids(latent_ids)))
    return clamp_latents(sae, latent_ids, -float(multiplier), only_where_active=True, real_only=True, **kwargs)


def cache_spec(
    name: str, store: dict[str, Tensor], *, key: str | None = None, label: str = "cache", order: int = OBSERVE_ORDER
) -> HookSpec:
    """An observer that stores a detached copy of the activation at ``name`` in ``store[key or name]`` on every
    forward pass (the last pass wins). With the default ``order`` it sees the edits attached in the same call."""

    def cache_hook(act: Tensor, hook: Any) -> None:
        store[key or name] = act.detach().clone()

    return HookSpec(name, cache_hook, order=order, label=label)
