"""What a HookPoint hook cannot see from its activation: the token ids of the sequence so far, which of them are
real (:mod:`dsg_lens.real_tokens`) and where the current pass starts in it.

One :class:`TokenTracker` per model (:func:`token_tracker`). The hook mechanism (:mod:`dsg_lens.hooks`) installs
it while at least one attached :class:`~dsg_lens.hooks.HookSpec` has ``needs_tokens=True`` and lists it in
``describe_hooks``. It watches the embedding module (token ids of every pass, ``generate`` loops included) and
the KV cache length at the start of each pass (HookedTransformer: the first block's ``past_kv_cache_entry``;
TransformerBridge: the ``past_key_values`` given to the model).

The relation of a pass to the previous ones is read off the KV cache, never guessed:
- an empty cache starts a new sequence;
- a cache of length c continues the first c tokens seen so far. During ``generate`` c is everything seen; with
  TransformerLens's frozen shared-prefix pattern (fill a cache with a prefix, ``freeze()`` it, run several
  suffixes) c is the prefix, so each suffix continues the prefix and never a previous suffix;
- a cache holding tokens the tracker did not see (filled before a token-aware hook was attached, or with another
  batch size) raises: the hook cannot know what the cached positions were.

Footgun: a pass that embeds no tokens (``start_at_layer``, as TransformerLens's ``generate`` does after embedding
each new token) is taken to continue the last sequence the tracker saw.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from dsg_lens.real_tokens import RealTokenRule


@dataclass(frozen=True)
class PassContext:
    """The sequence as of the current pass: ``tokens`` and ``real`` [batch, seen] (this pass's tokens are the
    last ``seen - start``), and ``pass_id`` (increases by one per forward pass of the model)."""

    tokens: Int[Tensor, "batch seen"]
    real: Bool[Tensor, "batch seen"]
    start: int
    pass_id: int


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache.past_keys.size(1)) if hasattr(cache, "past_keys") else 0


def is_bridge(model: nn.Module) -> bool:
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)


class TokenTracker:
    """Token ids and real-token mask of the sequence being processed (module docstring). Reference-counted:
    :meth:`acquire` installs its torch hooks on the first user, :meth:`release` removes them with the last."""

    label = "token-tracker"

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)
        self.users = 0
        self.on_pass: Callable[[], None] | None = None  # set by the hook mechanism: prunes users reset_hooks removed
        self._handles: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        self._tokens: Tensor | None = None
        self._real: Tensor | None = None
        self._start = 0
        self._pending_tokens: Tensor | None = None
        self._pending_cache: int | None = None
        self.pass_id = 0

    # --------------------------------------------------------------------------------------------- lifetime
    def acquire(self) -> None:
        if self.users == 0:
            self._install()
        self.users += 1

    def release(self) -> None:
        self.users = max(self.users - 1, 0)
        if self.users == 0:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self._reset()

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def _install(self) -> None:
        model = self._model()
        embed = getattr(model, "embed", None)
        if embed is None:
            raise ValueError(f"{type(model).__name__} has no `embed` module: cannot track token ids")
        self._handles.append(embed.register_forward_pre_hook(self._embed_pre_hook, with_kwargs=True))
        if is_bridge(model):
            self._handles.append(model.register_forward_pre_hook(self._bridge_pre_hook, with_kwargs=True))
        else:
            # the first block, not its attention: hooks at blocks.0.hook_resid_pre run before the attention
            self._handles.append(model.blocks[0].register_forward_pre_hook(self._block_pre_hook, with_kwargs=True))

    # ------------------------------------------------------------------------------------------ the passes
    def _embed_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.on_pass is not None:
            self.on_pass()
            if not self.installed:
                return
        tokens = args[0] if args else kwargs.get("input_ids", kwargs.get("tokens"))
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
            self._pending_tokens = None
            return
        pending = self._pending_tokens
        same_batch = pending is not None and pending.shape[0] == tokens.shape[0]
        self._pending_tokens = torch.cat([pending, tokens], dim=1) if same_batch else tokens
        if is_bridge(self._model()):
            self._resolve(self._pending_cache or 0, tokens.shape[1])

    def _block_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        resid = args[0] if args else kwargs.get("resid_pre")
        if isinstance(resid, Tensor) and resid.ndim == 3:
            self._resolve(_cache_length(kwargs.get("past_kv_cache_entry")), resid.shape[1])

    def _bridge_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending_cache = _cache_length(kwargs.get("past_key_values"))

    def _resolve(self, cached: int, n_pos: int) -> None:
        """The pass covers ``n_pos`` positions after the first ``cached`` of the sequence (module docstring).

        Its token ids are the last ``n_pos`` of the tokens embedded since the last pass, preceded where needed by
        the sequence so far (TransformerLens's uncached ``generate`` embeds only each new token, then runs the
        whole sequence)."""
        pending, self._pending_tokens, self._pending_cache = self._pending_tokens, None, None
        previous = self._tokens
        self._tokens = None
        if pending is not None and pending.shape[1] >= n_pos:
            current = pending[:, pending.shape[1] - n_pos :]
        elif previous is not None and (pending is None or pending.shape[0] == previous.shape[0]):
            known = previous if pending is None else torch.cat([previous, pending.to(previous.device)], dim=1)
            if known.shape[1] < n_pos:
                return  # token ids unknown: context() refuses
            current = known[:, known.shape[1] - n_pos :]
        else:
            return
        if cached == 0:
            tokens = current
        elif previous is not None and previous.shape[0] == current.shape[0] and cached <= previous.shape[1]:
            tokens = torch.cat([previous[:, :cached], current.to(previous.device)], dim=1)
        else:
            seen = 0 if previous is None else previous.shape[1]
            raise RuntimeError(
                f"the KV cache holds {cached} positions but dsg-lens has seen {seen} tokens of this sequence "
                f"(batch {current.shape[0]}): a token-aware hook (guardrail, static clamp) cannot know what the "
                "cached positions were. Attach it before filling the cache."
            )
        self._tokens, self._start = tokens, tokens.shape[1] - n_pos
        self._real = RealTokenRule.for_model(self._model()).mask(tokens)
        self.pass_id += 1

    def context(self, n_pos: int) -> PassContext:
        """The current pass, whose hook activation has ``n_pos`` positions; raises if no tracked pass fits."""
        unresolved = self._pending_tokens is not None
        if unresolved or self._tokens is None or self._tokens.shape[1] - self._start != n_pos:
            raise RuntimeError(
                "a token-aware dsg-lens hook ran in a pass whose token ids it could not see (the model was fed "
                "embeddings, started at a later layer, or the hook sits before the first block). Run the model "
                "on token ids and attach the hook at a block's HookPoint."
            )
        return PassContext(self._tokens, self._real, self._start, self.pass_id)


_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, TokenTracker]" = weakref.WeakKeyDictionary()
_POINT_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, TokenTracker]" = weakref.WeakKeyDictionary()


def token_tracker(model: nn.Module) -> TokenTracker:
    """The model's tracker (created on first use; installed only while a hook that needs it is attached)."""
    tracker = _TRACKERS.get(model)
    if tracker is None:
        tracker = _TRACKERS[model] = TokenTracker(model)
    return tracker


def bind_hook_point(point: nn.Module, tracker: TokenTracker) -> None:
    """Let hooks on ``point`` find the tracker of its model (the hook mechanism calls this on attach)."""
    _POINT_TRACKERS[point] = tracker


def real_positions(act: Tensor, hook: nn.Module) -> Bool[Tensor, "batch pos"]:
    """The real-token mask of the current pass's positions, for a ``where=`` of a token-aware hook (a HookSpec
    with ``needs_tokens=True``) that sees activation ``act`` [batch, pos, ...] at HookPoint ``hook``."""
    tracker = _POINT_TRACKERS.get(hook)
    if tracker is None:
        raise RuntimeError("real_positions() needs a HookSpec with needs_tokens=True attached by dsg-lens")
    context = tracker.context(act.shape[1])
    return context.real[:, context.start :]
