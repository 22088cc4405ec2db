"""What dsg-lens needs of an SAELens SAE: its hook name, checks against a model, and the activations of a few
selected latents.

For ReLU (``StandardSAE``) and JumpReLU SAEs, latent j depends only on column j of ``W_enc`` (and ``b_enc[j]``,
``threshold[j]``), so :class:`SelectedLatents` builds an SAE of the same SAELens class holding only the selected
latents and calls its own ``encode``: exact, and N/d_sae of the cost. TopK SAEs (and run-time input
normalisation) couple latents, so there the full ``sae.encode`` runs and the selected columns are read from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from collections.abc import Sequence

import torch
from einops import einsum
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.hooks import resolve_hook_name

SLICEABLE_ACTIVATIONS = ("standard", "jumprelu")
_LATENT_AXIS = {"W_enc": 1, "b_enc": 0, "threshold": 0, "log_threshold": 0, "W_dec": 0}


def sae_hook_name(sae: SAE) -> str:
    """The hook name the SAE was trained on (``sae.cfg.metadata.hook_name``)."""
    name = getattr(sae.cfg.metadata, "hook_name", None)
    if not name:
        raise ValueError("the SAE has no hook name in sae.cfg.metadata.hook_name; pass hook_name= explicitly")
    return name


def sae_architecture(sae: SAE) -> str:
    """SAELens architecture name: "standard", "jumprelu", "topk", ..."""
    return sae.cfg.architecture()


def hook_layer(hook_name: str) -> int | None:
    """Layer index of a ``blocks.{L}.…`` hook name, or None for hooks outside the blocks (e.g. hook_embed)."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


def check_sae_fits_model(model: nn.Module, sae: SAE, hook_name: str | None = None) -> str:
    """Validate that ``sae`` can run at ``hook_name`` (default: the SAE's own) on ``model``; returns the name."""
    name = hook_name or sae_hook_name(sae)
    resolve_hook_name(model, name)
    if name.endswith("hook_z") or getattr(sae.cfg.metadata, "hook_name", "").endswith("_z"):
        raise ValueError(f"SAEs on attention hook_z ({name}) are not supported; use a residual or MLP SAE")
    d_model = int(model.cfg.d_model)
    if name.split(".")[-1].startswith(("hook_resid", "hook_mlp_out", "hook_attn_out")) and sae.cfg.d_in != d_model:
        raise ValueError(
            f"SAE/model dimension mismatch: SAE d_in={sae.cfg.d_in} but the model's d_model={d_model} at {name}. "
            "Was this SAE trained on another model?"
        )
    model_name = getattr(sae.cfg.metadata, "model_name", None)
    own_name = getattr(model.cfg, "model_name", None)
    if model_name and own_name and _norm(model_name) != _norm(own_name):
        sae_for = f"{model_name!r}"
        raise ValueError(
            f"The SAE was trained for model {sae_for} but this model is {own_name!r}. "
            "Pass the matching SAE (or clear sae.cfg.metadata.model_name if you know they share weights)."
        )
    _check_dtypes(model, sae)
    return name


def _check_dtypes(model: nn.Module, sae: SAE) -> None:
    """Model activations are cast to the SAE's dtype for encoding: allowed (with a warning) only when that cast is
    exact, i.e. the SAE's dtype is at least as precise as the model's."""
    model_dtype = getattr(model.cfg, "dtype", None) or next(model.parameters()).dtype
    sae_dtype = sae.W_dec.dtype
    if model_dtype == sae_dtype:
        return
    if torch.promote_types(model_dtype, sae_dtype) != sae_dtype:
        raise ValueError(
            f"the SAE is {sae_dtype} but the model is {model_dtype}: casting activations to {sae_dtype} loses "
            f"precision. Cast the SAE: sae.to(dtype={model_dtype})"
        )
    warnings.warn(
        f"the model is {model_dtype} and the SAE {sae_dtype}: activations are upcast to {sae_dtype} for the SAE "
        f"(exact) and edits are returned in {model_dtype}",
        stacklevel=3,
    )


def _norm(name: str) -> str:
    return name.split("/")[-1].lower()


def sae_fingerprint(sae: SAE, latent_ids: Sequence[int]) -> str:
    """SHA-256 over the SAE's shape, hook and the parameters of ``latent_ids`` (identifies the SAE on load)."""
    digest = hashlib.sha256()
    digest.update(f"{sae.cfg.d_in}|{sae.cfg.d_sae}|{sae_architecture(sae)}|{sae_hook_name(sae)}".encode())
    ids = torch.as_tensor(list(latent_ids), dtype=torch.long)
    for name, param in sorted(sae.state_dict().items()):
        if name in _LATENT_AXIS:
            part = param.detach().index_select(_LATENT_AXIS[name], ids.to(param.device))
        else:
            part = param.detach()
        digest.update(name.encode())
        digest.update(part.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class SelectedLatents(nn.Module):
    """Exact activations of ``latent_ids`` of ``sae`` and the residual change of editing them.

    ``encode(x)`` -> ``[..., n]`` activations; ``delta(new, old)`` -> ``(new - old) @ W_dec[latent_ids]`` in the
    input space. Weights are copied once to ``device`` (the model's); computation is in the SAE's dtype.
    """

    def __init__(self, sae: SAE, latent_ids: Sequence[int], device: torch.device | str | None = None):
        super().__init__()
        ids = [int(i) for i in latent_ids]
        if not ids:
            raise ValueError("no latents selected (latent_ids is empty)")
        bad = [i for i in ids if not 0 <= i < sae.cfg.d_sae]
        if bad:
            raise ValueError(f"latent ids {bad[:5]} out of range for an SAE with d_sae={sae.cfg.d_sae}")
        if len(set(ids)) != len(ids):
            raise ValueError("latent_ids contains duplicates")
        device = torch.device(device) if device is not None else sae.W_dec.device
        _check_finite(sae, ids)
        self.sae_dtype = sae.W_dec.dtype
        index = torch.tensor(ids, dtype=torch.long, device=sae.W_dec.device)
        self.register_buffer("latent_ids", index.to(device))
        self.register_buffer("W_dec_selected", sae.W_dec.detach().index_select(0, index).to(device))
        self.exact_slice = (
            sae_architecture(sae) in SLICEABLE_ACTIVATIONS
            and getattr(sae.cfg, "normalize_activations", "none") in ("none", "expected_average_only_in")
        )
        self.full_sae = None if self.exact_slice else sae
        self.sliced_sae = _slice_sae(sae, index).to(device) if self.exact_slice else None

    @property
    def n(self) -> int:
        return int(self.latent_ids.numel())

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch n"]:
        """Activations of the selected latents (the SAE's own ``encode``, sliced when that is exact)."""
        if self.sliced_sae is not None:
            return self.sliced_sae.encode(x)
        return self.full_sae.encode(x).index_select(-1, self.latent_ids.to(x.device))

    def delta(
        self, new_acts: Float[Tensor, "*batch n"], old_acts: Float[Tensor, "*batch n"]
    ) -> Float[Tensor, "*batch d_in"]:
        """Change of the SAE reconstruction when the selected latents go from ``old_acts`` to ``new_acts``."""
        return einsum(new_acts - old_acts, self.W_dec_selected, "... n, n d -> ... d")


def _check_finite(sae: SAE, ids: list[int]) -> None:
    """NaN/inf in the selected latents' parameters would silently disable them (NaN > 0 is False)."""
    index = torch.tensor(ids, dtype=torch.long, device=sae.W_dec.device)
    for name, param in sae.state_dict().items():
        part = param.index_select(_LATENT_AXIS[name], index) if name in _LATENT_AXIS else param
        if part.is_floating_point() and not part.is_meta and not torch.isfinite(part).all():
            raise ValueError(f"the SAE parameter {name} has NaN/inf for the selected latents: the SAE is corrupted")


def _slice_sae(sae: SAE, index: Tensor) -> SAE:
    cfg = dataclasses.replace(sae.cfg, d_sae=int(index.numel()))
    sliced = type(sae)(cfg)
    state = {
        name: (param.detach().index_select(_LATENT_AXIS[name], index) if name in _LATENT_AXIS else param.detach())
        for name, param in sae.state_dict().items()
    }
    sliced.load_state_dict(state)
    return sliced.eval()
