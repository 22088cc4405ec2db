"""A tiny word-level tokenizer with a ChatML-style chat template (for turn-aware gates and chat-shaped attacks)
and a tiny Llama-shaped HookedTransformer on it with the planted forget feature of ``conftest.planted_setup``."""

from __future__ import annotations

from conftest import TEST_DEVICE, WORDS, make_sae, planted_setup
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

CHAT_SPECIALS = ["<bos>", "<eos>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_WORDS = ["user", "assistant", "system", "\n", "QQSYSQQ", "QQUSRQQ", "QQASTQQ"] + WORDS
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(folder):
    """Words split on spaces, newlines kept as tokens, turn markers special; unknown words map to the pad token."""
    vocab = {tok: i for i, tok in enumerate(CHAT_SPECIALS + CHAT_WORDS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"),
                                                 pre_tokenizers.Split("\n", "isolated")])
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def chat_model(tokenizer):
    """A 2-layer rotary model on ``tokenizer`` with the planted SAE (latent 5 fires on cat/dog/fox only)."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=128, d_head=4, n_heads=4, d_mlp=32, d_vocab=len(CHAT_SPECIALS + CHAT_WORDS),
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4, gated_mlp=True,
        n_key_value_heads=2, final_rms=True, device=TEST_DEVICE, seed=0, default_prepend_bos=True,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
    sae, _ = planted_setup(model)
    return model, sae


__all__ = ["chat_model", "chat_tokenizer", "make_sae"]
