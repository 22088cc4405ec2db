"""One hook mechanism for everything in dsg-lens that reads or edits activations.

A :class:`HookSpec` names a HookPoint, a TransformerLens hook function, an ``order`` and a ``label``.
``with scoped_hooks(model, *specs):`` attaches specs for a scope (TransformerLens's level-scoped ``model.hooks``
underneath, so it nests and never touches hooks that others added); :func:`attach` attaches them until the
returned :class:`HookHandle` is removed. :func:`attached_hooks` lists what dsg-lens has attached to a model and
:func:`describe_hooks` prints it as a table (for notebooks).

Order: within one call, specs on the same HookPoint run by ascending ``order`` (ties keep the given order).
Across calls, TransformerLens's rule holds: hooks run in the order they were attached, so a hook attached in an
outer scope runs before one attached in an inner scope. An observer (e.g. a cache) given a larger ``order`` than
an editing hook sees the edited activation.

Token-aware hooks (``HookSpec(needs_tokens=True)``: the guardrail, static clamping) read the token ids and
real-token mask of the sequence from the model's :class:`~dsg_lens.tracking.TokenTracker`, which this mechanism
installs with the first such hook and removes with the last (also when ``model.reset_hooks()`` removed them);
``describe_hooks`` lists it. ``with suspended(model):`` makes every dsg-lens hook on the model a no-op for the
block (reference passes of an evaluation run the model as if nothing were attached).

Works on ``HookedTransformer``, ``HookedSAETransformer`` (with or without SAEs attached: a name whose HookPoint
was replaced by an SAE resolves to that SAE's ``hook_sae_output``) and ``TransformerBridge`` (whose aliases
resolve to canonical names; unknown names raise here instead of being skipped silently).
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformer_lens.hook_points import HookPoint

from dsg_lens.tracking import TokenTracker, bind_hook_point, token_tracker

HookFn = Callable[..., Any]


@dataclass(frozen=True)
class HookSpec:
    """A hook to attach: ``fn(activation, hook=HookPoint) -> activation | None`` at HookPoint ``name``.

    ``owner`` identifies the object the hook belongs to (a guardrail, say): the same owner cannot be attached
    twice to one model at the same time. ``needs_tokens``: the hook reads ``token_tracker(model).context(...)``.
    """

    name: str
    fn: HookFn
    order: int = 0
    label: str = ""
    owner: Any = field(default=None, compare=False)
    needs_tokens: bool = False


@dataclass(frozen=True)
class AttachedHook:
    """What :func:`attached_hooks` reports: one live dsg-lens hook."""

    label: str
    hook_name: str
    order: int
    scoped: bool


@dataclass(eq=False)
class _Entry:
    """One attached spec: what is reported, the function TransformerLens holds, the tracker it uses."""

    info: AttachedHook
    spec: HookSpec
    fn: HookFn
    tracker: TokenTracker | None = None


_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, list[_Entry]]" = weakref.WeakKeyDictionary()
_SUSPENDED: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
_SUSPENDED_OWNERS: "weakref.WeakKeyDictionary[nn.Module, dict[int, int]]" = weakref.WeakKeyDictionary()


def resolve_hook_name(model: nn.Module, name: str, *, read: bool = False) -> str:
    """The HookPoint name to use on ``model`` for ``name``; raises ValueError (with close matches) if none.

    Where a HookedSAETransformer replaced ``name`` by an attached SAE, edits go to the SAE's ``hook_sae_output``
    and reads (``read=True``) come from its ``hook_sae_input`` (the model's own activation).
    """
    hook_dict = model.hook_dict
    if name in hook_dict:
        return name
    replaced = f"{name}.hook_sae_input" if read else f"{name}.hook_sae_output"
    if replaced in hook_dict:
        return replaced
    close = difflib.get_close_matches(name, list(hook_dict), n=3)
    hint = f" Close matches: {close}." if close else ""
    raise ValueError(
        f"Hook name {name!r} is not a HookPoint of this {type(model).__name__}.{hint} "
        "See model.hook_dict for the valid names."
    )


def hook_point(model: nn.Module, name: str) -> HookPoint:
    """The HookPoint object of ``model`` that ``name`` resolves to."""
    return model.hook_dict[resolve_hook_name(model, name)]


def _drop(live: list[_Entry], entry: _Entry) -> None:
    """Forget ``entry`` (once) and release its hold on the token tracker."""
    if entry in live:
        live.remove(entry)
        if entry.tracker is not None:
            entry.tracker.release()
            entry.tracker = None


def _live(model: nn.Module) -> list[_Entry]:
    """The registry of ``model``, without persistent hooks that ``model.reset_hooks()`` has since removed."""
    live = _REGISTRY.setdefault(model, [])
    for entry in list(live):
        if not entry.info.scoped and not any(h.user_hook is entry.fn for h in model.hook_dict[entry.info.hook_name].fwd_hooks):
            _drop(live, entry)
    return live


def attached_hooks(model: nn.Module) -> list[AttachedHook]:
    """The dsg-lens hooks live on ``model`` now, in attachment order."""
    return [entry.info for entry in _live(model)]


def attached_owners(model: nn.Module) -> list[Any]:
    """The objects (guardrails, static clamps, ...) that own the dsg-lens hooks live on ``model``."""
    return [entry.spec.owner for entry in _live(model) if entry.spec.owner is not None]


def describe_hooks(model: nn.Module) -> str:
    """A readable table of the dsg-lens hooks live on ``model`` (label, hook name, order, scoped/persistent), in
    the order they run on each HookPoint, the token tracker when one is installed, plus a count of forward hooks
    on the model that dsg-lens did not add."""
    entries = attached_hooks(model)
    rows = [("label", "hook name", "order", "lifetime")]
    rows += [(e.label or "-", e.hook_name, str(e.order), "scoped" if e.scoped else "persistent") for e in entries]
    tracker = token_tracker(model)
    if tracker.installed:
        rows.append((tracker.label, "embed + first block (torch hooks)", "-", f"while {tracker.users} hook(s) use it"))
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    points = {id(point): point for point in model.hook_dict.values()}  # a Bridge lists aliases of one point
    foreign = sum(len(point.fwd_hooks) for point in points.values()) - len(entries)
    if not entries:
        lines = ["no dsg-lens hooks attached"]
    if foreign > 0:
        lines.append(f"(+ {foreign} forward hook(s) not added by dsg-lens)")
    return "\n".join(lines)


@contextmanager
def suspended(model: nn.Module, owner: object | None = None) -> Iterator[None]:
    """Every dsg-lens hook on ``model`` (with ``owner``: only the hooks ``owner`` attached, e.g. a guardrail's own)
    passes its activation through unchanged for the ``with`` block."""
    if owner is None:
        _SUSPENDED[model] = _SUSPENDED.get(model, 0) + 1
    else:
        counts = _SUSPENDED_OWNERS.setdefault(model, {})
        counts[id(owner)] = counts.get(id(owner), 0) + 1
    try:
        yield
    finally:
        if owner is None:
            _SUSPENDED[model] -= 1
        else:
            counts[id(owner)] -= 1
            if not counts[id(owner)]:
                del counts[id(owner)]  # an id can be reused by a later object once this owner is gone


def _ordered(model: nn.Module, specs: Sequence[HookSpec]) -> list[tuple[str, HookSpec]]:
    for spec in specs:
        if not isinstance(spec, HookSpec):
            raise TypeError(f"expected HookSpec objects, got {type(spec).__name__}")
    resolved = [(resolve_hook_name(model, spec.name), spec) for spec in specs]
    return sorted(resolved, key=lambda pair: pair[1].order)


def _suspendable(model: nn.Module, fn: HookFn, owner: object | None) -> HookFn:
    model_ref = weakref.ref(model)
    owner_id = None if owner is None else id(owner)

    def dsg_lens_hook(act: Any, hook: HookPoint) -> Any:
        current = model_ref()
        if _SUSPENDED.get(current, 0) or (
                owner_id is not None and _SUSPENDED_OWNERS.get(current, {}).get(owner_id, 0)):
            return None
        return fn(act, hook=hook)

    return dsg_lens_hook


def _register(model: nn.Module, resolved: list[tuple[str, HookSpec]], scoped: bool) -> list[_Entry]:
    live = _live(model)
    owners = {id(entry.spec.owner) for entry in live if entry.spec.owner is not None}
    for _, spec in resolved:
        if spec.owner is not None and id(spec.owner) in owners:
            raise ValueError(
                f"{spec.label or type(spec.owner).__name__} is already attached to this model; "
                "detach it first (leave its `with` block or call handle.remove())."
            )
    entries = [_Entry(AttachedHook(spec.label, name, spec.order, scoped), spec,
                      _suspendable(model, spec.fn, spec.owner))
               for name, spec in resolved]
    tracker = token_tracker(model)
    model_ref = weakref.ref(model)  # the tracker must not keep the model alive
    tracker.on_pass = lambda: _live(model_ref()) if model_ref() is not None else None
    for entry in entries:
        if entry.spec.needs_tokens:
            tracker.acquire()
            entry.tracker = tracker
            bind_hook_point(model.hook_dict[entry.info.hook_name], tracker)
        live.append(entry)
    return entries


def _unregister(model: nn.Module, entries: list[_Entry]) -> None:
    live = _REGISTRY.get(model, [])
    for entry in entries:
        _drop(live, entry)


@contextmanager
def scoped_hooks(model: nn.Module, *specs: HookSpec) -> Iterator[None]:
    """Attach ``specs`` to ``model`` for the ``with`` block; they are removed on exit, even on exceptions."""
    resolved = _ordered(model, specs)
    entries = _register(model, resolved, scoped=True)
    try:
        with model.hooks(fwd_hooks=[(entry.info.hook_name, entry.fn) for entry in entries]):
            yield
    finally:
        _unregister(model, entries)


class HookHandle:
    """Persistent hooks added by :func:`attach`; ``remove()`` takes off exactly these and nothing else."""

    def __init__(self, model: nn.Module, added: list[tuple[HookPoint, Any]], entries: list[_Entry]):
        self._model = model
        self._added = added
        self._entries = entries

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for point, lens_handle in self._added:
            lens_handle.hook.remove()
            if lens_handle in point.fwd_hooks:
                point.fwd_hooks.remove(lens_handle)
        self._added = []
        _unregister(self._model, self._entries)
        self._entries = []

    @property
    def active(self) -> bool:
        return bool(self._added)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach(model: nn.Module, *specs: HookSpec) -> HookHandle:
    """Attach ``specs`` until ``handle.remove()``; survives ``run_with_hooks`` but not ``model.reset_hooks()``."""
    resolved = _ordered(model, specs)
    entries = _register(model, resolved, scoped=False)
    added: list[tuple[HookPoint, Any]] = []
    try:
        for entry in entries:
            point = model.hook_dict[entry.info.hook_name]
            point.add_hook(entry.fn, dir="fwd")
            added.append((point, next(h for h in reversed(point.fwd_hooks) if h.user_hook is entry.fn)))
    except BaseException:
        HookHandle(model, added, entries).remove()
        raise
    return HookHandle(model, added, entries)
