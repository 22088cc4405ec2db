"""What a HookPoint hook cannot see from its activation: the token ids being processed, and whether this pass
continues a KV-cached one (one new token during ``generate``) or starts afresh.

:class:`ForwardTracker` watches the model's embedding module (token ids, on every pass, including the
``generate`` loops of HookedTransformer and TransformerBridge) and the KV cache (HookedTransformer: the first
block's ``past_kv_cache_entry``; TransformerBridge: the ``past_key_values`` passed to the model).
Its torch hooks live only inside :meth:`ForwardTracker.installed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn


def special_token_ids(model: nn.Module) -> list[int]:
    """Ids of BOS/EOS/PAD and every other special token of the model's tokenizer (empty without tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return []
    ids = set(tokenizer.all_special_ids)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ids.add(int(value))
    return sorted(ids)


def pad_token_id(model: nn.Module) -> int:
    """The tokenizer's pad id (else its first special id, else 0)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    specials = special_token_ids(model)
    return specials[0] if specials else 0


def real_token_mask(tokens: Int[Tensor, "batch pos"], special_ids: Tensor) -> Bool[Tensor, "batch pos"]:
    """True where ``tokens`` is not a special token (BOS/EOS/PAD/...)."""
    return ~torch.isin(tokens, special_ids.to(tokens.device))


def skips_first_token(model: nn.Module) -> bool:
    """True for models that do not prepend BOS: their first token is the attention sink that BOS is elsewhere
    (residual norm ~100x the rest on SmolLM2), so, like BOS, it never counts for statistics or the gate."""
    return not getattr(model.cfg, "default_prepend_bos", True)


def first_token_mask(tokens: Int[Tensor, "batch pos"], pad_id: int) -> Bool[Tensor, "batch pos"]:
    """True at each row's first non-pad position (position 0 when right-padded; after the pads when left-padded)."""
    present = tokens != pad_id
    first = present.int().argmax(-1, keepdim=True)
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    return (positions == first) & present


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache.past_keys.size(1)) if hasattr(cache, "past_keys") else 0


class ForwardTracker:
    """Token ids of the current pass and whether it continues a KV-cached pass, for hooks to read.

    ``tokens_for(n_pos)`` returns the ids of the last ``n_pos`` positions seen by the embedding (``None`` when
    the model was fed embeddings directly). ``continuation`` is True while a pass extends a KV cache.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._tokens: Tensor | None = None
        self.continuation = False
        self.max_len = int(getattr(model.cfg, "n_ctx", 2048) or 2048)

    def tokens_for(self, n_pos: int) -> Int[Tensor, "batch n_pos"] | None:
        if self._tokens is None or self._tokens.shape[1] < n_pos:
            return None
        return self._tokens[:, -n_pos:]

    def _on_tokens(self, tokens: Any) -> None:
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
            return
        previous = self._tokens
        if previous is None or previous.shape[0] != tokens.shape[0] or previous.device != tokens.device:
            self._tokens = tokens
        else:
            self._tokens = torch.cat([previous, tokens], dim=1)[:, -self.max_len :]

    def _embed_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._on_tokens(args[0] if args else kwargs.get("input_ids", kwargs.get("tokens")))

    def _attn_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.continuation = _cache_length(kwargs.get("past_kv_cache_entry")) > 0

    def _bridge_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.continuation = _cache_length(kwargs.get("past_key_values")) > 0

    @contextmanager
    def installed(self) -> Iterator[ForwardTracker]:
        """Install the tracking hooks for the ``with`` block; always removed on exit."""
        handles = []
        try:
            embed = getattr(self.model, "embed", None)
            if embed is None:
                raise ValueError(f"{type(self.model).__name__} has no `embed` module: cannot track token ids")
            handles.append(embed.register_forward_pre_hook(self._embed_pre_hook, with_kwargs=True))
            blocks = getattr(self.model, "blocks", None)
            # the first block, not its attention: hooks at blocks.0.hook_resid_pre run before the attention
            first_block = blocks[0] if blocks is not None and len(blocks) else None
            if _is_bridge(self.model):
                handles.append(self.model.register_forward_pre_hook(self._bridge_pre_hook, with_kwargs=True))
            elif first_block is not None:
                handles.append(first_block.register_forward_pre_hook(self._attn_pre_hook, with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._tokens = None
            self.continuation = False


def _is_bridge(model: nn.Module) -> bool:
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)
