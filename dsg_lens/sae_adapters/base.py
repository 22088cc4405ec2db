"""What every SAE adapter shares: validation of the selected latents, the dtype/device rules, the ``where`` mask, and
the two families of fast paths (an exact sliced encode; a decode that is linear in the latents).

An adapter answers two questions about ``n`` selected latents of one SAELens SAE, for activations ``x``
[*batch, d_in] at the SAE's hook:

- ``encode(x)`` -> ``sae.encode(x)[..., latent_ids]``;
- ``edit(x, old, new, where)`` -> ``decode(a') + (x - decode(a))`` where ``where`` is True (``a = sae.encode(x)``,
  ``a'`` = ``a`` with the selected latents set to ``new``), ``x`` itself (bit-identical) elsewhere.

Fast paths are taken only where they are proven equal to SAELens's own encode/decode (``tests/test_sae_adapters``);
everything else goes to :class:`~dsg_lens.sae_adapters.fallback.FallbackAdapter`, which calls them.

Dtypes: ``encode`` computes like SAELens (``x`` cast to the SAE's dtype) and returns the SAE's dtype; ``edit``
computes in ``torch.promote_types(x.dtype, sae_dtype)`` and returns ``x.dtype``.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.sae_adapters.transcoder import check_one_hook

LATENT_AXIS = {
    "W_enc": 1, "b_enc": 0, "threshold": 0, "log_threshold": 0, "W_dec": 0, "b_gate": 0, "b_mag": 0, "r_mag": 0,
}
"""Axis of each per-latent SAELens parameter that indexes the latents (others are shared by all latents)."""

Device = torch.device | str | None


def latent_id_list(sae: SAE, latent_ids: Sequence[int] | Tensor) -> list[int]:
    """``latent_ids`` as a list of ints; ValueError when empty, out of range or duplicated."""
    if isinstance(latent_ids, Tensor):
        if latent_ids.dtype.is_floating_point or latent_ids.dtype == torch.bool or latent_ids.ndim > 1:
            raise ValueError(f"latent_ids must be a 1-D integer tensor or a sequence of ints, got {latent_ids!r}")
        ids = [int(i) for i in latent_ids.tolist()]
    else:
        if any(isinstance(i, (bool, float)) for i in latent_ids):
            raise ValueError(f"latent_ids must be ints, got {list(latent_ids)!r}")
        ids = [int(i) for i in latent_ids]
    if not ids:
        raise ValueError("no latents selected (latent_ids is empty)")
    d_sae = int(sae.cfg.d_sae)
    bad = [i for i in ids if not 0 <= i < d_sae]
    if bad:
        raise ValueError(f"latent ids {bad[:5]} out of range for an SAE with d_sae={d_sae}")
    if len(set(ids)) != len(ids):
        dups = sorted(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"latent_ids contains duplicates: {dups[:5]}")
    return ids


def check_finite(sae: SAE, ids: Sequence[int]) -> None:
    """NaN/inf in a parameter the selected latents use would silently disable them (NaN > 0 is False)."""
    for name, param in sae.state_dict().items():
        if not param.is_floating_point() or param.is_meta:
            continue
        part = selected(param, name, ids) if name in LATENT_AXIS and param.ndim else param
        if not torch.isfinite(part).all():
            raise ValueError(
                f"the SAE parameter {name} has NaN/inf values for the selected latents: the SAE is corrupted"
            )


def selected(param: Tensor, name: str, ids: Sequence[int] | Tensor) -> Tensor:
    """The slice of per-latent parameter ``name`` for ``ids`` (detached, on the parameter's device)."""
    index = torch.as_tensor(ids, dtype=torch.long, device=param.device)
    return param.detach().index_select(LATENT_AXIS[name], index)


def check_editable(sae: SAE) -> None:
    """Refuse SAEs whose edit cannot be written at one hook as ``[*batch, d_in]`` activations."""
    if getattr(sae.cfg, "reshape_activations", "none") == "hook_z":
        raise ValueError(
            "SAEs on attention hook_z (reshape_activations='hook_z') are not supported: use a residual or MLP SAE"
        )
    check_one_hook(sae)


def canonical_device(device: Device, sae: SAE) -> torch.device:
    """``device`` (default: the SAE's) with the current CUDA index filled in, so equal devices compare equal."""
    resolved = torch.device(device) if device is not None else sae.W_dec.device
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def sae_on(sae: SAE, device: torch.device) -> SAE:
    """The SAE itself when it is on ``device``, else a copy of it there (made once, by the adapter)."""
    if sae.W_dec.device == device:
        return sae
    with warnings.catch_warnings():  # e.g. SAELens's note on model_from_pretrained_kwargs, already shown once
        warnings.simplefilter("ignore")
        moved = type(sae)(copy.deepcopy(sae.cfg))
    moved.load_state_dict(sae.state_dict())
    return moved.to(device).train(sae.training)


class SAEAdapter(nn.Module):
    """Encode and edit ``n`` selected latents of one SAE (module docstring). Build with
    :func:`~dsg_lens.sae_adapters.adapter_for`.

    ``exact_slice``: True when ``encode`` runs only the selected latents. ``sae_classes``: the SAELens classes a
    fast-path adapter is proven for (a subclass may override encode/decode, so it goes to the fallback).

    Footgun: exact-slice and delta-form adapters copy the selected latents' weights when they are built (adapters
    that run SAELens's encode use the SAE itself, or a copy on another device): build a new adapter after editing
    the SAE's weights in place.
    """

    exact_slice: bool = False
    sae_classes: tuple[type, ...] = ()
    latent_ids: Tensor

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__()
        check_editable(sae)
        ids = latent_id_list(sae, latent_ids)
        check_finite(sae, ids)
        self.device = canonical_device(device, sae)
        self.sae_dtype: torch.dtype = sae.W_dec.dtype
        self.d_in = int(sae.cfg.d_in)
        self.architecture = str(sae.cfg.architecture())
        self.id_list = ids
        self.register_buffer("latent_ids", torch.tensor(ids, dtype=torch.long, device=self.device))

    @property
    def n(self) -> int:
        return int(self.latent_ids.numel())

    def _check_input(self, x: Tensor) -> None:
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"activations of shape {tuple(x.shape)} do not end in the SAE's d_in={self.d_in}")

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch n"]:
        """Activations of the selected latents: ``sae.encode(x)[..., latent_ids]``, in the SAE's dtype."""
        self._check_input(x)
        return self._encode(x)

    def edit(
        self,
        x: Float[Tensor, "*batch d_in"],
        old: Float[Tensor, "*batch n"],
        new: Float[Tensor, "*batch n"],
        where: Bool[Tensor, "*batch"],
    ) -> Float[Tensor, "*batch d_in"]:
        """``x`` with the selected latents changed from ``old`` (what :meth:`encode` returned) to ``new`` where
        ``where`` is True, the SAE's reconstruction error kept; ``x`` itself elsewhere. Returns ``x.dtype``."""
        self._check_input(x)
        if where.dtype != torch.bool:
            raise ValueError(f"`where` must be a bool tensor, got {where.dtype}")
        edited = self._edited(x, old, new)
        return torch.where(where.unsqueeze(-1), edited, x)

    def decoder_norms(self) -> Float[Tensor, " n"]:
        """Norm of each selected latent's decoder direction in input space (float32, CPU)."""
        raise NotImplementedError

    def _encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _edited(self, x: Tensor, old: Tensor, new: Tensor) -> Tensor:
        """The edit at every position (``edit`` keeps ``x`` where ``where`` is False), in ``x.dtype``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.architecture}, n={self.n}, exact_slice={self.exact_slice}, device={self.device}"


class LinearDecodeAdapter(SAEAdapter):
    """For SAEs whose decode is ``acts @ W + b`` with no run-time normalisation: the edit is the delta form
    ``x + (new - old) @ W[selected]`` (``W``: the effective decoder rows, see :meth:`decoder_rows`)."""

    W_dec_selected: Tensor

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        rows = self.decoder_rows(sae, self.id_list)
        self.register_buffer("W_dec_selected", rows.to(self.device))

    @classmethod
    def decoder_rows(cls, sae: SAE, ids: list[int]) -> Tensor:
        """The selected rows of the SAE's effective decoder (how one unit of each latent moves the output)."""
        return selected(sae.W_dec, "W_dec", ids)

    def delta(self, new: Float[Tensor, "*batch n"], old: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch d_in"]:
        """Change of the SAE's reconstruction when the selected latents go from ``old`` to ``new`` (in the
        promotion of their dtype and the SAE's)."""
        compute = torch.promote_types(torch.promote_types(new.dtype, old.dtype), self.sae_dtype)
        return (new.to(compute) - old.to(compute)) @ self.W_dec_selected.to(compute)

    def _edited(self, x: Tensor, old: Tensor, new: Tensor) -> Tensor:
        compute = torch.promote_types(x.dtype, self.sae_dtype)
        delta = (new.to(compute) - old.to(compute)) @ self.W_dec_selected.to(compute)
        return (x.to(compute) + delta).to(x.dtype)

    def decoder_norms(self) -> Float[Tensor, " n"]:
        return self.W_dec_selected.detach().float().norm(dim=-1).cpu()


class ExactSliceAdapter(LinearDecodeAdapter):
    """ReLU-family SAEs without run-time normalisation: latent j's activation depends only on its own encoder
    column and biases, so ``encode`` runs the selected latents alone (N/d_sae of the cost)."""

    exact_slice = True
    b_dec: Tensor | None

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        b_dec = sae.b_dec.detach().to(self.device) if sae.cfg.apply_b_dec_to_input else None
        self.register_buffer("b_dec", b_dec)

    def _sae_in(self, x: Tensor) -> Tensor:
        """SAELens's ``process_sae_in`` for SAEs without run-time normalisation or reshaping."""
        sae_in = x.to(self.sae_dtype)
        return sae_in - self.b_dec if self.b_dec is not None else sae_in

    def _slice(self, sae: SAE, name: str) -> Tensor:
        """The selected latents' slice of parameter ``name``, on the adapter's device."""
        return selected(getattr(sae, name), name, self.id_list).to(self.device)


class FullEncodeAdapter(LinearDecodeAdapter):
    """SAEs whose latents compete in encode (TopK and friends): SAELens's own ``encode`` of all latents, the
    selected columns read from it; decode linear, so the edit is the delta form."""

    def __init__(self, sae: SAE, latent_ids: Sequence[int] | Tensor, device: Device = None):
        super().__init__(sae, latent_ids, device)
        self.__dict__["sae"] = sae_on(sae, self.device)  # not a submodule: adapter.to() must not move the SAE

    def _encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x).index_select(-1, self.latent_ids)
