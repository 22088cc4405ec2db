"""dsg-lens: Dynamic SAE Guardrails (DSG) for precision unlearning, on TransformerLens + SAELens."""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> the module each comes from. They are imported on first use (PEP 562), so `import dsg_lens` and
# the `dsg-lens` command line start without loading torch, TransformerLens or SAELens.
_EXPORTS: dict[str, str] = {
    "ablation_study": "dsg_lens.ablation",
    "write_table": "dsg_lens.ablation",
    "DEFAULT_GATE": "dsg_lens.gate",
    "Gate": "dsg_lens.gate",
    "PaperGate": "dsg_lens.gate",
    "PrefixGate": "dsg_lens.gate",
    "WindowGate": "dsg_lens.gate",
    "CountGate": "dsg_lens.gate",
    "ProbeGate": "dsg_lens.gate",
    "AnyGate": "dsg_lens.gate",
    "LinearProbe": "dsg_lens.probe",
    "train_probe": "dsg_lens.probe",
    "calibrate_tau": "dsg_lens.gate",
    "make_gate": "dsg_lens.gate",
    "DynamicSAEGuardrail": "dsg_lens.guardrail",
    "GuardrailConfig": "dsg_lens.guardrail",
    "AttachedHook": "dsg_lens.hooks",
    "HookHandle": "dsg_lens.hooks",
    "HookSpec": "dsg_lens.hooks",
    "attach": "dsg_lens.hooks",
    "attached_hooks": "dsg_lens.hooks",
    "describe_hooks": "dsg_lens.hooks",
    "resolve_hook_name": "dsg_lens.hooks",
    "scoped_hooks": "dsg_lens.hooks",
    "suspended": "dsg_lens.hooks",
    "cache_spec": "dsg_lens.interventions",
    "clamp_latents": "dsg_lens.interventions",
    "latent_intervention": "dsg_lens.interventions",
    "mean_ablate": "dsg_lens.interventions",
    "scale_latents": "dsg_lens.interventions",
    "static_clamp": "dsg_lens.interventions",
    "steer_latents": "dsg_lens.interventions",
    "zero_ablate": "dsg_lens.interventions",
    "RealTokenRule": "dsg_lens.real_tokens",
    "adapter_for": "dsg_lens.sae_adapters",
    "reference_edit": "dsg_lens.sae_adapters",
    "FeatureSet": "dsg_lens.selection",
    "select_dsg": "dsg_lens.selection",
    "select_farrell": "dsg_lens.selection",
    "select_features": "dsg_lens.selection",
    "hook_activations": "dsg_lens.activations",
    "LatentStats": "dsg_lens.stats",
    "collect_latent_stats": "dsg_lens.stats",
    "chunk_corpus": "dsg_lens.tokens",
    "token_tracker": "dsg_lens.tracking",
    "corpus_loss": "dsg_lens.eval.corpus",
    "gate_rates_by_shape": "dsg_lens.eval.gate_stats",
    "question_inputs": "dsg_lens.eval.gate_stats",
    "filter_base_correct": "dsg_lens.eval.mcq",
    "score_mcq": "dsg_lens.eval.mcq",
    "pareto_front": "dsg_lens.eval.sweep",
    "run_question_sweep": "dsg_lens.eval.sweep",
    "run_sweep": "dsg_lens.eval.sweep",
    "unlearning_score": "dsg_lens.eval.sweep",
    "RMUConfig": "dsg_lens.baselines",
    "StaticClamp": "dsg_lens.baselines",
    "rmu_unlearn": "dsg_lens.baselines",
}

__all__ = [
    "DEFAULT_GATE",
    "RMUConfig",
    "StaticClamp",
    "corpus_loss",
    "filter_base_correct",
    "gate_rates_by_shape",
    "pareto_front",
    "question_inputs",
    "rmu_unlearn",
    "run_question_sweep",
    "run_sweep",
    "score_mcq",
    "unlearning_score",
    "AttachedHook",
    "DynamicSAEGuardrail",
    "FeatureSet",
    "Gate",
    "GuardrailConfig",
    "HookHandle",
    "HookSpec",
    "LatentStats",
    "PaperGate",
    "PrefixGate",
    "RealTokenRule",
    "WindowGate",
    "CountGate",
    "ProbeGate",
    "AnyGate",
    "LinearProbe",
    "train_probe",
    "ablation_study",
    "adapter_for",
    "attach",
    "attached_hooks",
    "cache_spec",
    "calibrate_tau",
    "chunk_corpus",
    "clamp_latents",
    "collect_latent_stats",
    "describe_hooks",
    "hook_activations",
    "latent_intervention",
    "make_gate",
    "mean_ablate",
    "reference_edit",
    "resolve_hook_name",
    "scale_latents",
    "scoped_hooks",
    "select_dsg",
    "select_farrell",
    "select_features",
    "static_clamp",
    "steer_latents",
    "suspended",
    "token_tracker",
    "write_table",
    "zero_ablate",
]


def __getattr__(name: str) -> Any:
    """``dsg_lens.X``: the public name ``X`` (imported from its module on first use) or the submodule ``X``."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
