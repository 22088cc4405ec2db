"""The reference formulation, correct for any SAE: SAELens's own ``encode``, the selected latents set, SAELens's
own ``decode``, the reconstruction error added back (the paper's / SAEBench's full form).

Run-time state: with ``normalize_activations`` "layer_norm" or "constant_norm_rescale", SAELens's ``encode``
stores the input's scale on the SAE and ``decode`` consumes (deletes) it, so ``decode`` can run once per
``encode``. The full form needs two decodes (of ``a`` and of ``a'``): they run as ONE decode of
``torch.stack([a, a'])``; the stored per-position state (shape ``[*batch, 1]``) broadcasts over the new leading
axis, so both halves are decoded with the state of the one encode of ``x``. Encoders that couple positions
(BatchTopK over the batch, TemporalSAE over the sequence) see ``x`` exactly as given.

:func:`reference_edit` is the plain-function form (the bench's reference hook, tests); :class:`FallbackAdapter`
is the adapter every SAE without a proven fast path gets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor

from dsg_lens.sae_adapters.base import Device, SAEAdapter, check_editable, latent_id_list, sae_on, selected

STATEFUL_NORMALISATIONS = ("layer_norm", "constant_norm_rescale")
"""SAELens 6 normalisations whose encode stores per-input state that decode consumes."""


def full_form(
    sae: SAE,
    x: Float[Tensor, "*batch d_in"],
    index: Tensor,
    new: Float[Tensor, "*batch n"],
    acts: Float[Tensor, "*batch d_sae"] | None = None,
) -> Float[Tensor, "*batch d_in"]:
    """``decode(a') + (x - decode(a))`` at every position, in ``x.dtype`` (``a = acts`` or ``sae.encode(x)``)."""
    a = sae.encode(x) if acts is None else acts
    edited = a.index_copy(a.ndim - 1, index.to(a.device), new.to(a.dtype).expand(*a.shape[:-1], index.numel()))
    both = sae.decode(torch.stack([a, edited]))
    if both.shape != (2, *x.shape):
        raise RuntimeError(
            f"{type(sae).__name__}.decode of stacked latents returned {tuple(both.shape)}, expected "
            f"{(2, *x.shape)}: this SAE's decode does not broadcast over a leading axis"
        )
    compute = torch.promote_types(x.dtype, both.dtype)
    return (both[1].to(compute) + (x.to(compute) - both[0].to(compute))).to(x.dtype)


def reference_edit(
    sae: SAE,
    x: Float[Tensor, "*batch d_in"],
    latent_ids: Sequence[int] | Tensor,
    where: Bool[Tensor, "*batch"],
    new_values: Float[Tensor, "..."],
    *,
    acts: Float[Tensor, "*batch d_sae"] | None = None,
) -> Float[Tensor, "*batch d_in"]:
    """``x`` with the latents ``latent_ids`` set to ``new_values`` where ``where`` is True, by SAELens's own
    encode/decode with the error term kept (module docstring); ``x`` itself (bit-identical) elsewhere.

    ``new_values``: ``[n]`` or broadcastable to ``[*batch, n]``. ``acts``: ``sae.encode(x)`` when the caller has
    just computed it (skips the encode). It must come from the SAE's LAST encode, of this ``x``: SAEs with
    run-time normalisation keep the input's scale on the SAE from encode to decode.
    """
    check_editable(sae)
    ids = latent_id_list(sae, latent_ids)
    if where.dtype != torch.bool:
        raise ValueError(f"`where` must be a bool tensor, got {where.dtype}")
    index = torch.tensor(ids, dtype=torch.long, device=x.device)
    new = torch.as_tensor(new_values).to(x.device)
    try:
        new = torch.broadcast_to(new, (*x.shape[:-1], len(ids)))
    except RuntimeError as err:
        raise ValueError(
            f"new_values of shape {tuple(new.shape)} does not broadcast to {(*x.shape[:-1], len(ids))}"
        ) from err
    edited = full_form(sae, x, index, new, acts)
    return torch.where(where.unsqueeze(-1), edited, x)


class FallbackAdapter(SAEAdapter):
    """Any SAE: ``encode`` is SAELens's full encode (selected columns read from it); ``edit`` re-encodes ``x`` and
    applies :func:`full_form` (``old`` is not needed). The SAE is used in place, or copied once to ``device``."""

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        self.__dict__["sae"] = sae_on(sae, self.device)  # not a submodule: adapter.to() must not move the SAE

    def _encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x).index_select(-1, self.latent_ids)

    def _edited(self, x: Tensor, old: Tensor, new: Tensor) -> Tensor:
        return full_form(self.sae, x, self.latent_ids, new)

    def decoder_norms(self) -> Float[Tensor, " n"]:
        """``||W_dec[j]||`` (divided by itself under ``rescale_acts_by_decoder_norm``, i.e. 1). With a stateful
        run-time normalisation the input-space size is further scaled per token (layer_norm: by the input's
        std; constant_norm_rescale: by ``||x|| / sqrt(d_in)``): no per-latent constant exists there."""
        rows = selected(self.sae.W_dec, "W_dec", self.id_list).float()
        norms = rows.norm(dim=-1)
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            norms = norms / norms
        return norms.cpu()
