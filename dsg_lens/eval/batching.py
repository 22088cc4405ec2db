"""The forward passes used by the evaluation code.

- :func:`padded_logits`: a right-padded batch of whole sequences with an explicit attention mask.
- :func:`frozen_prefix_cache` + :func:`continuation_logits`: TransformerLens's shared-prefix pattern. A batch of
  prefixes fills a KV cache once; the cache is frozen, so every later pass continues the prefixes and never a
  previous suffix. dsg-lens hooks follow the cache (a pass over a frozen cache of c tokens continues the first c
  tokens of the sequence, :mod:`dsg_lens.tracking`), so with a causal gate a continuation scores exactly as the
  whole sequence would in one pass.

Cost note (TransformerLens 3.9 on CPU): every forward call copies the transposed MLP and unembedding weights
(``W.T.contiguous()``), ~0.1 s per call on the 135M embedded model, so fewer, fuller passes beat many small ones.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from dsg_lens.tokens import TokenBatch

try:  # TransformerLens 3.x
    from transformer_lens import TransformerLensKeyValueCache as KeyValueCache
except ImportError:  # pragma: no cover - TransformerLens 2.x name
    from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache as KeyValueCache


def padded_logits(model: nn.Module, batch: TokenBatch, lengths: list[int]) -> Float[Tensor, "batch pos vocab"]:
    """Logits of a right-padded ``batch`` whose rows hold ``lengths`` tokens (padding is masked out of attention,
    whatever the tokenizer's padding side; real positions score exactly as they would alone)."""
    return model(batch.tokens, return_type="logits", attention_mask=_mask(batch.tokens, lengths))


def supports_kv_cache(model: nn.Module) -> bool:
    """Whether :func:`frozen_prefix_cache` works on ``model`` (HookedTransformer and its subclasses, e.g.
    HookedSAETransformer; not TransformerBridge, whose HF cache objects the evaluation does not drive)."""
    return isinstance(model, HookedTransformer)


def _mask(tokens: Tensor, lengths: list[int]) -> Tensor:
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return (positions[None, :] < torch.tensor(lengths, device=tokens.device)[:, None]).long()


def frozen_prefix_cache(
    model: nn.Module, prefix: Int[Tensor, "batch pre"], lengths: list[int] | None = None
) -> KeyValueCache | None:
    """Run ``prefix`` once (rows right-padded to ``lengths`` tokens; default: all real), unembedding nothing, and
    return its frozen KV cache; None for an empty prefix (continuations then start fresh sequences).

    Padding positions are masked out of attention and skipped by the position ids (TransformerLens counts
    positions over the attention mask), so a continuation of a short row sees exactly its own tokens. Footgun:
    the padding stays INSIDE the sequence that dsg-lens hooks see (prefix, padding, continuation): pick padding
    the real-token rule ignores without changing its verdict on later tokens (the MCQ scorer checks this)."""
    if prefix.shape[1] == 0:
        return None
    if not supports_kv_cache(model):
        raise ValueError(f"{type(model).__name__} has no TransformerLens KV cache: use padded_logits")
    mask = torch.ones_like(prefix) if lengths is None else _mask(prefix, lengths)
    cache = KeyValueCache.init_cache(model.cfg, model.cfg.device, prefix.shape[0])
    model(prefix, return_type=None, past_kv_cache=cache, attention_mask=mask)
    cache.freeze()
    return cache


def continuation_logits(
    model: nn.Module, cache: KeyValueCache | None, suffix: Int[Tensor, "batch pos"], lengths: list[int]
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of right-padded ``suffix`` rows (``lengths`` tokens each) continuing the frozen ``cache``'s
    prefixes (or starting fresh sequences when ``cache`` is None). The cache is left as it was."""
    if cache is not None and not cache.frozen:
        raise ValueError("continuation_logits needs a frozen cache (frozen_prefix_cache), else suffixes pile up")
    return model(suffix, return_type="logits", past_kv_cache=cache, attention_mask=_mask(suffix, lengths))
