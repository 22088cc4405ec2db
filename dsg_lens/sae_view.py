"""What dsg-lens needs to know about an SAELens SAE: its hook name and architecture, whether it fits a model, and
a fingerprint that identifies it. Encoding and editing selected latents is the job of
:mod:`dsg_lens.sae_adapters`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch
from sae_lens import SAE
from torch import nn

from dsg_lens.hooks import resolve_hook_name
from dsg_lens.user_warnings import warn_user

# Which parameters the fingerprint hashes per latent (the rest whole). Part of the saved-guardrail format: keep it
# stable (the adapters' own table, dsg_lens.sae_adapters.base.LATENT_AXIS, also slices gated SAEs' parameters).
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
    own_hook = getattr(sae.cfg.metadata, "hook_name", None) or ""
    if name.endswith("hook_z") or own_hook.endswith("_z"):
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
    warn_user(
        f"the model is {model_dtype} and the SAE {sae_dtype}: activations are upcast to {sae_dtype} for the SAE "
        f"(exact) and edits are returned in {model_dtype}"
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
