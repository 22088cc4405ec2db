"""DynamicSAEGuardrail: a gate plus a negative clamp of selected SAE latents, attached at the SAE's HookPoint.

At the hook, for activations ``resid`` [batch, pos, d]: ``a`` = activations of the N selected latents (the SAE
adapter's exact encode), ``fired`` = real tokens where any of them is > 0; the gate decides per position (causal
gates: from tokens <= t only); at fired tokens where the gate is on, ALL N selected latents are set to -c and the
SAE adapter writes the change into the residual, the SAE's reconstruction error kept (for plain ReLU/JumpReLU/TopK
SAEs ``resid + (-c - a) @ W_dec[selected]``; SAELens's own encode/decode for normalised SAEs). Everywhere else
``resid`` is returned untouched, so where the gate is off the model's outputs are bit-identical.

On a HookedSAETransformer with this SAE attached (``add_sae``), the guardrail edits the selected latents at the
SAE's ``hook_sae_acts_post``: the SAE's own decode (with or without its error term) does the rest, and the latents
it reads are those of the model's activation, exactly what statistics and calibration read.

Footguns: ``c`` is in latent units, so a fixed value does not transfer across SAEs/models (use ``clamp_scale``:
c_j = clamp_scale * mean residual norm / ||W_dec[j]||). During KV-cached generation the state of each sequence
follows the KV cache (:mod:`dsg_lens.tracking`); a cache filled before the guardrail was attached is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Shaped
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.artifacts import read_json, read_tensors, require, write_json, write_tensors
from dsg_lens.gate import (
    DEFAULT_GATE,
    PROBE,
    TURN_START,
    Gate,
    calibrate_gate,
    clamp_positions,
    gate_from_dict,
    gate_needs,
    gate_probe,
    gate_tensors,
    make_gate,
)
from dsg_lens.hooks import HookHandle, HookSpec, attach, resolve_hook_name, scoped_hooks, suspended
from dsg_lens.real_tokens import RealTokenRule
from dsg_lens.sae_adapters import adapter_for
from dsg_lens.sae_view import check_sae_fits_model, hook_layer, sae_architecture, sae_fingerprint, sae_hook_name
from dsg_lens.tracking import PassContext, token_tracker
from dsg_lens.selection import FeatureSet, as_latent_ids
from dsg_lens.scan import RankScan, gate_scores_from_scan, scan_extras, scan_first_rank
from dsg_lens.tokens import TextsOrTokens

GUARDRAIL_SCHEMA = 2
GUARDRAIL_HOOK_ORDER = 0


@dataclass(frozen=True)
class GuardrailConfig:
    """What ``guardrail.json`` holds (besides the SAE's identity): enough to rebuild the guardrail."""

    hook_name: str
    latent_ids: list[int]
    gate: dict[str, Any]
    clamp: float
    clamp_scale: float | None = None
    resid_norm: float | None = None
    p_dyn: float | None = None
    label: str = "dsg-guardrail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> GuardrailConfig:
        missing = [k for k in ("hook_name", "latent_ids", "gate", "clamp") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing keys {missing} (not a dsg-lens guardrail, or a damaged one)")
        ids = data["latent_ids"]
        if not isinstance(ids, list) or not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise ValueError(f"{path}: latent_ids must be a non-empty list of ints, got {ids!r}")
        require(data, "hook_name", str, path)
        require(data, "gate", dict, path)
        require(data, "clamp", (int, float), path)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


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
        self._adapter_cpu = adapter_for(sae, self.latent_ids)
        self.clamp_values = self._clamp_values()
        self.p_dyn: float | None = None

    def _clamp_values(self) -> Float[Tensor, " n"]:
        """Per-latent clamp magnitude c_j (absolute, or relative to the residual norm)."""
        if self.clamp_scale is None:
            return torch.full((len(self.latent_ids),), self.clamp)
        row_norms = self._adapter_cpu.decoder_norms()
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
        gate: Gate | str | None = None,
        batch_size: int = 8,
        max_len: int | None = None,
        progress: bool = True,
    ) -> DynamicSAEGuardrail:
        """Calibrate tau as the ``p_dyn`` percentile of the gate's calibration scores on ``retain_texts`` (one
        score per text: the largest value of the gate's statistic in it) and build the guardrail. ``gate``: a
        gate object (its tau is replaced) or a kind name; default :data:`~dsg_lens.gate.DEFAULT_GATE`.
        Calibrate on retain inputs of the shape the guardrail will see (e.g. questions, chat turns): tau bounds
        the share of such inputs the guardrail edits."""
        if not 0 <= p_dyn <= 100:
            raise ValueError(f"p_dyn={p_dyn} is outside 0-100 (it is a percentile)")
        chosen = make_gate(gate or DEFAULT_GATE) if gate is None or isinstance(gate, str) else gate
        probe = cls(sae, features, chosen, clamp=clamp)
        scan = probe._scan(model, retain_texts, batch_size=batch_size, max_len=max_len, progress=progress)
        fired, real = scan.padded(len(probe.latent_ids))
        tuned = calibrate_gate(probe.gate, fired, real, p_dyn, **scan_extras(scan, probe.gate))
        guard = cls(
            sae, features, tuned, clamp=clamp, clamp_scale=clamp_scale, resid_norm=scan.mean_resid_norm,
            hook_name=probe.hook_name,
        )
        guard.p_dyn = float(p_dyn)
        return guard

    def _scan(self, model: nn.Module, texts: TextsOrTokens, **kwargs: Any) -> RankScan:
        """The gate's inputs as this guardrail's hook sees them: before its own edit (its hooks, when attached,
        pass through for the scan; other hooks, e.g. a steering before it, stay active)."""
        with suspended(model, owner=self):
            return scan_first_rank(model, self.sae, self.latent_ids, texts, hook_name=self.hook_name,
                                   probe=gate_probe(self.gate), turn_starts=TURN_START in gate_needs(self.gate),
                                   **kwargs)

    def gate_scores(
        self, model: nn.Module, texts: TextsOrTokens, *, batch_size: int = 8, max_len: int | None = None,
        progress: bool = False,
    ) -> Float[Tensor, " n_texts"]:
        """The gate's score per text: > tau iff the gate is on at the text's last token."""
        scan = self._scan(model, texts, batch_size=batch_size, max_len=max_len, progress=progress)
        return gate_scores_from_scan(scan, self.gate, len(self.latent_ids))

    def is_forget(self, model: nn.Module, texts: TextsOrTokens, **kwargs: Any) -> Bool[Tensor, " n_texts"]:
        """Whether the gate is on at the last token of each text (what predicts the next token after it)."""
        return self.gate_scores(model, texts, **kwargs) > self.gate.tau

    # ------------------------------------------------------------------------------------------- the hook
    def hook_spec(self, model: nn.Module) -> HookSpec:
        """The HookSpec that applies this guardrail on ``model`` (state is per attachment, never shared). A probe
        gate whose probe reads another HookPoint needs a second spec: use :meth:`hook_specs`."""
        specs = self.hook_specs(model)
        if len(specs) != 1:
            raise ValueError(f"this guardrail's probe reads {gate_probe(self.gate).hook_name}, another HookPoint than "
                             "its edit: attach it with hook_specs(model) (attached/attach do)")
        return specs[0]

    def hook_specs(self, model: nn.Module) -> list[HookSpec]:
        """The HookSpecs that apply this guardrail on ``model``: the guardrail's own, preceded by an observer
        that records the probe's logits when its probe reads another HookPoint (or the model's activation on a
        HookedSAETransformer with the SAE attached). State is per attachment, never shared."""
        hook_name = check_sae_fits_model(model, self.sae, self.hook_name)
        latent_point = _attached_sae_latents(model, self.sae, hook_name)
        device = torch.device(model.cfg.device)
        adapter = adapter_for(self.sae, self.latent_ids, device=device)
        clamp_values = -self.clamp_values.to(device=device, dtype=adapter.sae_dtype)
        ids = adapter.latent_ids
        tracker = token_tracker(model)
        gate = self.gate
        needs = gate_needs(gate)
        rule = RealTokenRule.for_model(model) if TURN_START in needs else None
        probe = gate_probe(gate)
        probe = probe.to(device) if probe is not None else None
        probe_point = None if probe is None else resolve_hook_name(model, probe.hook_name, read=True)
        own_point = latent_point or hook_name
        observe = probe is not None and (latent_point is not None or probe_point != own_point)
        if observe:
            _check_probe_runs_first(probe.hook_name, hook_name)
        state: dict[str, Any] = {"fired": None, "probe": None, "probe_now": None}

        def decide(acts: Float[Tensor, "batch pos n"], n_pos: int, resid: Tensor | None) -> Bool[Tensor, "batch pos"]:
            context = tracker.context(n_pos)
            fired_now = (acts > 0).any(-1)
            fired = state["fired"] = _continue(state["fired"], fired_now, context)
            extras: dict[str, Tensor] = {}
            if rule is not None:
                extras[TURN_START] = rule.user_turn_starts(context.tokens)
            if probe is not None:
                if observe:
                    logits_now, state["probe_now"] = state["probe_now"], None  # consumed: one per pass
                    if logits_now is None or logits_now.shape != fired_now.shape:
                        raise RuntimeError(f"the probe's hook {probe.hook_name} did not run before the guardrail in "
                                           "this pass: a probe must read a HookPoint at or before the guardrail's")
                else:
                    logits_now = probe.logits(resid)
                extras[PROBE] = state["probe"] = _continue(state["probe"], logits_now, context)
            return clamp_positions(gate, fired, context.real, **extras)[:, context.start :]

        def guardrail_hook(resid: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
            acts = adapter.encode(resid)
            clamp_here = decide(acts, resid.shape[1], resid)
            return adapter.edit(resid, acts, clamp_values.expand_as(acts), clamp_here)

        def latent_hook(latents: Float[Tensor, "batch pos d_sae"], hook: Any) -> Float[Tensor, "batch pos d_sae"]:
            acts = latents.index_select(-1, ids)
            clamp_here = decide(acts, latents.shape[1], None)
            edited = latents.clone()
            edited[..., ids] = torch.where(clamp_here[..., None], clamp_values.to(acts).expand_as(acts), acts)
            return edited

        def probe_hook(act: Float[Tensor, "batch pos d"], hook: Any) -> None:
            state["probe_now"] = probe.logits(act)

        fn, point = (latent_hook, latent_point) if latent_point else (guardrail_hook, hook_name)
        main = HookSpec(point, fn, order=GUARDRAIL_HOOK_ORDER, label=self.label, owner=self, needs_tokens=True)
        if not observe:
            return [main]
        return [HookSpec(probe_point, probe_hook, order=GUARDRAIL_HOOK_ORDER - 1, label=f"{self.label}-probe"), main]

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[DynamicSAEGuardrail]:
        """Attach for the ``with`` block; everything is removed on exit, exceptions included."""
        with scoped_hooks(model, *self.hook_specs(model)):
            yield self

    def attach(self, model: nn.Module) -> HookHandle:
        """Attach until ``handle.remove()`` (or ``model.reset_hooks()``)."""
        return attach(model, *self.hook_specs(model))

    # ------------------------------------------------------------------------------------------ persistence
    def config(self) -> GuardrailConfig:
        return GuardrailConfig(
            hook_name=self.hook_name, latent_ids=list(self.latent_ids), gate=self.gate.to_dict(), clamp=self.clamp,
            clamp_scale=self.clamp_scale, resid_norm=self.resid_norm, p_dyn=self.p_dyn, label=self.label,
        )

    def save(self, path: str | Path) -> None:
        """Write ``guardrail.json`` + ``guardrail.safetensors`` (and the FeatureSet, if any) into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"schema_version": GUARDRAIL_SCHEMA, **self.config().to_dict(),
                "sae": _sae_identity(self.sae, self.latent_ids)}
        tensors = {"latent_ids": torch.tensor(self.latent_ids, dtype=torch.long), "clamp_values": self.clamp_values,
                   **gate_tensors(self.gate)}
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
        cfg = GuardrailConfig.from_dict(meta, meta_path)
        ids = [int(i) for i in cfg.latent_ids]
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
            sae, features, gate_from_dict(cfg.gate, tensors), clamp=cfg.clamp, clamp_scale=cfg.clamp_scale,
            resid_norm=cfg.resid_norm, hook_name=cfg.hook_name, label=cfg.label,
        )
        if not torch.allclose(guard.clamp_values, tensors["clamp_values"].float(), rtol=1e-5, atol=0.0):
            raise ValueError(f"{tensor_path}: clamp_values differ from those implied by {meta_path} (tampered?)")
        guard.p_dyn = cfg.p_dyn
        return guard

    def __repr__(self) -> str:
        return (
            f"DynamicSAEGuardrail(hook={self.hook_name!r}, n={len(self.latent_ids)}, gate={self.gate}, "
            f"clamp={self.clamp if self.clamp_scale is None else f'{self.clamp_scale}x|resid|'})"
        )


def _continue(
    previous: Shaped[Tensor, "rows before"] | None, fired_now: Shaped[Tensor, "batch pos"], context: PassContext
) -> Shaped[Tensor, "batch seen"]:
    """Per-token values of the whole sequence (fired flags, probe logits): those of the first ``context.start``
    positions (kept from earlier passes: the KV cache holds them) followed by this pass's."""
    if context.start == 0:
        return fired_now
    if previous is None or previous.shape[0] != fired_now.shape[0] or previous.shape[1] < context.start:
        raise RuntimeError(
            "this pass continues a KV cache whose positions the guardrail did not process (it was attached, or "
            "un-suspended, after the cache was filled): attach it before filling the cache"
        )
    return torch.cat([previous[:, : context.start], fired_now], dim=1)


def _check_probe_runs_first(probe_hook: str, guard_hook: str) -> None:
    """A probe gate decides at the guardrail's hook from the probe's logits of the same pass: its HookPoint must
    run first (an earlier block, or the same one)."""
    probe_layer, guard_layer = hook_layer(probe_hook), hook_layer(guard_hook)
    if probe_layer is None:  # hook_embed & co: TransformerLens's generate embeds without them
        raise ValueError(f"the probe reads {probe_hook}, not a block's HookPoint (blocks.L.*): generation skips it; "
                         "train the probe at the guardrail's hook or an earlier block's")
    if guard_layer is None:
        return
    same_block = probe_layer == guard_layer
    ranks = [_BLOCK_ORDER.get(h.rsplit(".", 1)[-1]) for h in (probe_hook, guard_hook)]
    if probe_layer > guard_layer or (same_block and (None in ranks or ranks[0] > ranks[1])):
        raise ValueError(f"the probe reads {probe_hook}, which does not run before the guardrail's {guard_hook}: "
                         "train the probe at the guardrail's hook or an earlier one")


_BLOCK_ORDER = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "hook_mlp_out": 3, "hook_resid_post": 4}
"""Forward order of a block's residual-stream HookPoints (a probe and a guardrail in one block)."""


def _attached_sae_latents(model: nn.Module, sae: SAE, hook_name: str) -> str | None:
    """``{hook_name}.hook_sae_acts_post`` when a HookedSAETransformer has this SAE attached there, else None;
    raises if another SAE is attached at that hook."""
    attached = getattr(model, "acts_to_saes", {}).get(hook_name)
    if attached is None:
        return None
    if attached is not sae and _sae_identity(attached, range(int(sae.cfg.d_sae))) != _sae_identity(
        sae, range(int(sae.cfg.d_sae))
    ):
        raise ValueError(
            f"another SAE is attached at {hook_name} on this HookedSAETransformer: the guardrail's latents are "
            "those of its own SAE. Attach the guardrail's SAE (model.add_sae(guard.sae)) or remove it first"
        )
    return f"{hook_name}.hook_sae_acts_post"


def _sae_identity(sae: SAE, latent_ids: Sequence[int]) -> dict[str, Any]:
    return {
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": sae_architecture(sae),
        "hook_name": sae_hook_name(sae),
        "fingerprint": sae_fingerprint(sae, latent_ids),
    }
