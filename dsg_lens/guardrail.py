"""DynamicSAEGuardrail: a gate plus a negative clamp of selected SAE latents, attached at the SAE's HookPoint.

At the hook, for activations ``resid`` [batch, pos, d]: ``a`` = activations of the N selected latents (exact sliced
encode), ``fired`` = real tokens where any of them is > 0; the gate decides per row; in tripped rows, at fired
tokens, ALL N selected latents are set to -c: ``resid' = resid + (-c - a) @ W_dec[selected]`` (the delta form:
the SAE's reconstruction error is kept). Everywhere else ``resid`` is returned untouched, so a guardrail whose gate
does not fire leaves the model's outputs bit-identical.

Footguns: ``c`` is in latent units, so a fixed value does not transfer across SAEs/models (use ``clamp_scale``:
c_j = clamp_scale * mean residual norm / ||W_dec[j]||). During KV-cached generation, tokens before a row trips were
already processed unclamped; the gate decides on the prompt pass and may switch a row on later, never off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.artifacts import read_json, read_tensors, require, write_json, write_tensors
from dsg_lens.forward_context import (
    ForwardTracker,
    first_token_mask,
    pad_token_id,
    real_token_mask,
    skips_first_token,
    special_token_ids,
)
from dsg_lens.gate import Gate, PaperGate, calibrate_tau, gate_from_dict
from dsg_lens.hooks import HookHandle, HookSpec, attach, hooks
from dsg_lens.sae_view import SelectedLatents, check_sae_fits_model, sae_architecture, sae_fingerprint, sae_hook_name
from dsg_lens.selection import FeatureSet, as_latent_ids
from dsg_lens.scan import RankScan, gate_scores_from_scan, scan_first_rank
from dsg_lens.tokens import TextsOrTokens

GUARDRAIL_SCHEMA = 1
GUARDRAIL_HOOK_ORDER = 0


class DynamicSAEGuardrail:
    """DSG guardrail (module docstring). Build with :meth:`fit` or directly from a calibrated ``gate``."""

    def __init__(
        self,
        sae: SAE,
        features: FeatureSet | Sequence[int],
        gate: Gate,
        *,
        clamp: float | int = 500.0,
        clamp_scale: float | int | None = None,
        resid_norm: float | int | None = None,
        hook_name: str | None = None,
        label: str = "dsg-guardrail",
    ):
        self.sae = sae
        self.latent_ids = as_latent_ids(features)
        self.features = features if isinstance(features, FeatureSet) else None
        self.gate = gate
        self.hook_name = hook_name or sae_hook_name(sae)
        self.label = label
        if not math.isfinite(clamp) or clamp < 0:
            raise ValueError(f"clamp={clamp} must be a finite non-negative number (latents are set to -clamp)")
        if clamp_scale is not None and not (
            math.isfinite(clamp_scale) and clamp_scale > 0 and resid_norm is not None and math.isfinite(resid_norm)
            and resid_norm > 0
        ):
            raise ValueError(
                f"clamp_scale={clamp_scale} needs to be positive and finite, with a positive finite resid_norm "
                f"(got {resid_norm}; fit() measures it)"
            )
        tau = getattr(gate, "tau", None)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise ValueError(f"gate threshold tau={tau!r} must be a finite number (calibrate it with fit())")
        self.clamp, self.clamp_scale, self.resid_norm = float(clamp), clamp_scale, resid_norm
        self._view_cpu = SelectedLatents(sae, self.latent_ids)
        self.clamp_values = self._clamp_values()

    def _clamp_values(self) -> Float[Tensor, " n"]:
        """Per-latent clamp magnitude c_j (absolute, or relative to the residual norm)."""
        if self.clamp_scale is None:
            return torch.full((len(self.latent_ids),), self.clamp)
        row_norms = self._view_cpu.W_dec_selected.float().norm(dim=-1).cpu()
        return self.clamp_scale * float(self.resid_norm) / row_norms.clamp(min=1e-12)

    # ----------------------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        model: nn.Module,
        sae: SAE,
        features: FeatureSet | Sequence[int],
        retain_texts: TextsOrTokens,
        *,
        p_dyn: float | int = 95.0,
        clamp: float | int = 500.0,
        clamp_scale: float | int | None = None,
        gate: Gate | None = None,
        batch_size: int = 8,
        max_len: int | None = None,
        progress: bool = True,
    ) -> DynamicSAEGuardrail:
        """Calibrate tau as the ``p_dyn`` percentile of the gate's calibration scores on ``retain_texts`` (rho per
        text for the paper gate) and build the guardrail."""
        if not 0 <= p_dyn <= 100:
            raise ValueError(f"p_dyn={p_dyn} is outside 0-100 (it is a percentile)")
        probe = cls(sae, features, gate or PaperGate(), clamp=clamp)
        scan = probe._scan(model, retain_texts, batch_size=batch_size, max_len=max_len, progress=progress)
        scores = gate_scores_from_scan(scan, probe.gate, len(probe.latent_ids), calibration=True)
        tuned = probe.gate.with_tau(calibrate_tau(scores, p_dyn))
        guard = cls(
            sae, features, tuned, clamp=clamp, clamp_scale=clamp_scale, resid_norm=scan.mean_resid_norm,
            hook_name=probe.hook_name,
        )
        guard.p_dyn = p_dyn
        return guard

    def _scan(self, model: nn.Module, texts: TextsOrTokens, **kwargs: Any) -> RankScan:
        return scan_first_rank(model, self.sae, self.latent_ids, texts, hook_name=self.hook_name, **kwargs)

    def gate_scores(
        self, model: nn.Module, texts: TextsOrTokens, *, batch_size: int = 8, max_len: int | None = None,
        progress: bool = False,
    ) -> Float[Tensor, " n_texts"]:
        """The gate's score per text (rho for the paper gate)."""
        scan = self._scan(model, texts, batch_size=batch_size, max_len=max_len, progress=progress)
        return gate_scores_from_scan(scan, self.gate, len(self.latent_ids))

    def is_forget(self, model: nn.Module, texts: TextsOrTokens, **kwargs: Any) -> Bool[Tensor, " n_texts"]:
        """Whether the gate classifies each text as forget-relevant (score > tau)."""
        return self.gate_scores(model, texts, **kwargs) > self.gate.tau

    # ------------------------------------------------------------------------------------------- the hook
    def hook_spec(self, model: nn.Module, tracker: ForwardTracker) -> HookSpec:
        """The HookSpec that applies this guardrail on ``model`` (state is per attachment, never shared)."""
        hook_name = check_sae_fits_model(model, self.sae, self.hook_name)
        device = torch.device(model.cfg.device)
        view = SelectedLatents(self.sae, self.latent_ids, device=device)
        if view.full_sae is not None and view.full_sae.W_dec.device != device:
            raise ValueError(
                f"the {sae_architecture(self.sae)} SAE is on {view.full_sae.W_dec.device} but the model is on {device} "
                "(this SAE needs its full encode): move it first, sae.to(model.cfg.device)"
            )
        clamp_values = -self.clamp_values.to(device=device, dtype=view.sae_dtype)
        specials = torch.tensor(special_token_ids(model), dtype=torch.long, device=device)
        skip_first, pad_id = skips_first_token(model), pad_token_id(model)
        gate = self.gate
        state: dict[str, Any] = {"gate": None}

        def guardrail_hook(resid: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
            tokens = tracker.tokens_for(resid.shape[1])
            if tokens is None:
                real = torch.ones(resid.shape[:2], dtype=torch.bool, device=resid.device)
            else:
                real = real_token_mask(tokens, specials)
                if skip_first and not tracker.continuation:
                    real = real & ~first_token_mask(tokens, pad_id)
            acts = view.encode(resid)
            fired = (acts > 0).any(-1) & real
            gate_state = state["gate"]
            if not tracker.continuation or gate_state is None or gate_state["tripped"].shape[0] != resid.shape[0]:
                gate_state = state["gate"] = gate.new_state(resid.shape[0], resid.device)
            tripped = gate.update(gate_state, fired, real)
            clamp_here = (fired & tripped[:, None])[..., None]
            delta = view.delta(clamp_values.expand_as(acts), acts)
            exact = torch.promote_types(resid.dtype, delta.dtype)  # never add in the lower precision
            return torch.where(clamp_here, (resid.to(exact) + delta.to(exact)).to(resid.dtype), resid)

        return HookSpec(hook_name, guardrail_hook, order=GUARDRAIL_HOOK_ORDER, label=self.label, owner=self)

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[DynamicSAEGuardrail]:
        """Attach for the ``with`` block; everything is removed on exit, exceptions included."""
        with ExitStack() as stack:
            tracker = stack.enter_context(ForwardTracker(model).installed())
            stack.enter_context(hooks(model, self.hook_spec(model, tracker)))
            yield self

    def attach(self, model: nn.Module) -> GuardrailHandle:
        """Attach until ``handle.remove()``."""
        stack = ExitStack()
        try:
            tracker = stack.enter_context(ForwardTracker(model).installed())
            handle = attach(model, self.hook_spec(model, tracker))
            stack.callback(handle.remove)
        except BaseException:
            stack.close()
            raise
        return GuardrailHandle(stack, handle)

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write ``guardrail.json`` + ``guardrail.safetensors`` (and the FeatureSet, if any) into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "schema_version": GUARDRAIL_SCHEMA,
            "hook_name": self.hook_name,
            "latent_ids": self.latent_ids,
            "clamp": self.clamp,
            "clamp_scale": self.clamp_scale,
            "resid_norm": self.resid_norm,
            "p_dyn": getattr(self, "p_dyn", None),
            "gate": self.gate.to_dict(),
            "label": self.label,
            "sae": _sae_identity(self.sae, self.latent_ids),
        }
        tensors = {"latent_ids": torch.tensor(self.latent_ids, dtype=torch.long), "clamp_values": self.clamp_values}
        write_tensors(folder / "guardrail.safetensors", tensors)
        write_json(folder / "guardrail.json", meta)
        if self.features is not None:
            self.features.save(folder)

    @classmethod
    def load(cls, path: str | Path, sae: SAE) -> DynamicSAEGuardrail:
        """Load a saved guardrail for ``sae``; refuses an SAE that differs from the one it was fitted on."""
        folder = Path(path)
        meta_path, tensor_path = folder / "guardrail.json", folder / "guardrail.safetensors"
        meta = read_json(meta_path, GUARDRAIL_SCHEMA, "guardrail")
        raw_ids = require(meta, "latent_ids", list, meta_path)
        if not raw_ids or any(isinstance(i, bool) or not isinstance(i, int) for i in raw_ids):
            raise ValueError(f"{meta_path}: latent_ids must be a non-empty list of ints, got {raw_ids!r}")
        ids = [int(i) for i in raw_ids]
        bad = [i for i in ids if not 0 <= i < sae.cfg.d_sae]
        if bad:
            raise ValueError(
                f"{meta_path}: saved latent ids {bad[:5]} are out of range for an SAE with d_sae={sae.cfg.d_sae}"
            )
        tensors = read_tensors(tensor_path, ("latent_ids", "clamp_values"), "guardrail")
        if tensors["latent_ids"].tolist() != ids or tensors["clamp_values"].shape != (len(ids),):
            raise ValueError(f"{tensor_path} does not match {meta_path} (latent ids or clamp_values shape)")
        expected, actual = require(meta, "sae", dict, meta_path), _sae_identity(sae, ids)
        if expected != actual:
            diff = {k: (expected.get(k), actual.get(k)) for k in expected if expected.get(k) != actual.get(k)}
            raise ValueError(f"this SAE is not the one the guardrail was fitted on: {diff}")
        features: FeatureSet | list[int] = ids
        if (folder / "features.json").is_file():
            features = FeatureSet.load(folder)
            if features.ids != ids:
                raise ValueError(f"{folder}: features.safetensors ids {features.ids[:5]}... differ from guardrail.json")
        guard = cls(
            sae, features, gate_from_dict(require(meta, "gate", dict, meta_path)),
            clamp=require(meta, "clamp", (int, float), meta_path), clamp_scale=meta.get("clamp_scale"),
            resid_norm=meta.get("resid_norm"), hook_name=require(meta, "hook_name", str, meta_path),
            label=meta.get("label", "dsg-guardrail"),
        )
        if not torch.allclose(guard.clamp_values, tensors["clamp_values"].float(), rtol=1e-5, atol=0.0):
            raise ValueError(f"{tensor_path}: clamp_values differ from those implied by {meta_path} (tampered?)")
        guard.p_dyn = meta.get("p_dyn")
        return guard

    def __repr__(self) -> str:
        return (
            f"DynamicSAEGuardrail(hook={self.hook_name!r}, n={len(self.latent_ids)}, gate={self.gate}, "
            f"clamp={self.clamp if self.clamp_scale is None else f'{self.clamp_scale}x|resid|'})"
        )


class GuardrailHandle:
    """A persistently attached guardrail; ``remove()`` takes off its hooks and its token tracking.

    Footgun: ``model.reset_hooks()`` removes the guardrail's HookPoint hook but not its token-tracking hook on
    ``model.embed``; call ``remove()`` to take off both."""

    def __init__(self, stack: ExitStack, handle: HookHandle):
        self._stack, self._handle = stack, handle

    def remove(self) -> None:
        self._stack.close()

    @property
    def active(self) -> bool:
        return self._handle.active


def _sae_identity(sae: SAE, latent_ids: Sequence[int]) -> dict[str, Any]:
    return {
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": sae_architecture(sae),
        "hook_name": sae_hook_name(sae),
        "fingerprint": sae_fingerprint(sae, latent_ids),
    }


def full_form_edit(
    sae: SAE,
    resid: Float[Tensor, "batch pos d"],
    latent_ids: Sequence[int],
    clamp_mask: Bool[Tensor, "batch pos"],
    clamp_values: Float[Tensor, " n"],
    acts: Float[Tensor, "batch pos d_sae"] | None = None,
) -> Float[Tensor, "batch pos d"]:
    """Reference formulation (paper/SAEBench): full encode, clamp, decode, add the SAE error back.

    ``acts`` is ``sae.encode(resid)`` when the caller has it already (the encode is then not repeated).
    """
    acts = sae.encode(resid) if acts is None else acts
    error = resid.to(acts.dtype) - sae.decode(acts)
    ids = torch.as_tensor(list(latent_ids), device=acts.device)
    edited = acts.clone()
    target = (-clamp_values.to(acts)).expand(*acts.shape[:-1], ids.numel())
    edited[..., ids] = torch.where(clamp_mask[..., None], target, acts[..., ids])
    return (sae.decode(edited) + error).to(resid.dtype)
