"""Helpers shared by the reliability, property and artifact tests: a tiny TransformerBridge and hook bookkeeping."""

from __future__ import annotations

import torch
from conftest import D_VOCAB
from torch import nn


def make_bridge(tokenizer, seed: int = 0) -> nn.Module:
    """A tiny Llama (2 layers, d_model 16) booted as a TransformerBridge, offline."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=D_VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    hf = LlamaForCausalLM(cfg).eval()
    return TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tokenizer, device="cpu")


def hook_counts(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """Per submodule: (forward hooks, forward pre-hooks, TransformerLens fwd_hooks) — a snapshot to compare."""
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(getattr(m, "fwd_hooks", [])))
        for name, m in model.named_modules()
    }
