"""dsg-lens: Dynamic SAE Guardrails (DSG) for precision unlearning, on TransformerLens + SAELens."""

from dsg_lens.ablation import ablation_study, write_table
from dsg_lens.gate import DEFAULT_GATE, Gate, PaperGate, PrefixGate, WindowGate, calibrate_tau, make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail, GuardrailConfig
from dsg_lens.hooks import (
    AttachedHook,
    HookHandle,
    HookSpec,
    attach,
    attached_hooks,
    describe_hooks,
    resolve_hook_name,
    scoped_hooks,
    suspended,
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
from dsg_lens.real_tokens import RealTokenRule
from dsg_lens.sae_adapters import adapter_for, reference_edit
from dsg_lens.selection import FeatureSet, select_dsg, select_farrell, select_features
from dsg_lens.activations import hook_activations
from dsg_lens.stats import LatentStats, collect_latent_stats
from dsg_lens.tokens import chunk_corpus
from dsg_lens.tracking import token_tracker

# the evaluation and baselines users call next to the core (they import the core, so they come last)
from dsg_lens.eval.corpus import corpus_loss  # noqa: E402
from dsg_lens.eval.gate_stats import gate_rates_by_shape, question_inputs  # noqa: E402
from dsg_lens.eval.mcq import filter_base_correct, score_mcq  # noqa: E402
from dsg_lens.eval.sweep import pareto_front, run_question_sweep, run_sweep, unlearning_score  # noqa: E402
from dsg_lens.baselines import RMUConfig, StaticClamp, rmu_unlearn  # noqa: E402

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
