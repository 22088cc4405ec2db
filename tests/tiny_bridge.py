"""A tiny random Llama as TransformerBridge and as HookedTransformer with the same weights (no network)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import FORGET_WORDS
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_pretrained_model_config
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.pretrained.weight_conversions import convert_llama_weights
from transformers import LlamaConfig, LlamaForCausalLM


def make_llama_pair(tokenizer, folder: Path, plant_forget_direction: bool = False, seed: int = 0):
    """(HookedTransformer, TransformerBridge) built from one random HF ``LlamaForCausalLM``.

    With ``plant_forget_direction`` the embeddings of the forget words share direction 0 (as ``planted_setup``
    does on a HookedTransformer), so ``planted_setup(hooked)`` returns an SAE that fits both models.
    """
    folder = Path(folder) / "tiny-model"  # TransformerLens special-cases names containing "llama"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(folder)
    torch.manual_seed(seed)
    hf_model = LlamaForCausalLM(config).eval()
    if plant_forget_direction:
        forget_ids = [tokenizer.convert_tokens_to_ids(w) for w in FORGET_WORDS]
        with torch.no_grad():
            embed = hf_model.model.embed_tokens.weight
            embed[:, 0] = 0.0
            embed[forget_ids, 0] = 3.0
    cfg = get_pretrained_model_config(
        str(folder), fold_ln=False, device="cpu", dtype=torch.float32, default_prepend_bos=True
    )
    hooked = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    hooked.load_and_process_state_dict(  # before booting the bridge, which wraps the HF modules in place
        convert_llama_weights(hf_model, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer, device="cpu")
    return hooked.eval(), bridge.eval()
