"""dsg-lens: Dynamic SAE Guardrails (DSG) for precision unlearning, on TransformerLens + SAELens."""

from dsg_lens.ablation import ablation_study, write_table
from dsg_lens.gate import Gate, PaperGate, WindowGate, calibrate_tau
from dsg_lens.guardrail import DynamicSAEGuardrail, GuardrailHandle, full_form_edit
from dsg_lens.hooks import (
    AttachedHook,
    HookHandle,
    HookSpec,
    attach,
    attached_hooks,
    describe_hooks,
    hooks,
    resolve_hook_name,
)
from dsg_lens.interventions import (
    cache_spec,
    clamp_latents,
    latent_intervention,
    mean_ablate,
    scale_latents,
    static_clamp,
    steer_latents,
    zero_ablate,
)
from dsg_lens.selection import FeatureSet, select_dsg, select_farrell, select_features
from dsg_lens.stats import LatentStats, collect_latent_stats, hook_activations
from dsg_lens.tokens import chunk_corpus

__all__ = [
    "AttachedHook",
    "ablation_study",
    "cache_spec",
    "clamp_latents",
    "describe_hooks",
    "latent_intervention",
    "mean_ablate",
    "scale_latents",
    "static_clamp",
    "steer_latents",
    "write_table",
    "zero_ablate",
    "DynamicSAEGuardrail",
    "FeatureSet",
    "Gate",
    "GuardrailHandle",
    "HookHandle",
    "HookSpec",
    "LatentStats",
    "PaperGate",
    "WindowGate",
    "attach",
    "attached_hooks",
    "calibrate_tau",
    "chunk_corpus",
    "collect_latent_stats",
    "full_form_edit",
    "hook_activations",
    "hooks",
    "resolve_hook_name",
    "select_dsg",
    "select_farrell",
    "select_features",
]
