"""The one rule for which tokens count ("real tokens") in statistics, scans, calibration, the guardrail's hook,
interventions and the bench.

A token is real unless it is
- a special token of the tokenizer (BOS/EOS/PAD, turn markers, ...) or padding;
- the first present token of a sequence on models that prepend no BOS (SmolLM2): it is the attention sink that BOS
  is elsewhere (residual norm ~100x the rest), so, like BOS, it never counts; with left padding, the first token
  after the pads;
- chat-template scaffolding: the header of a turn (``<|im_start|>user\\n``), the newlines right after the end of
  a turn, and the content of system turns (the system prompt is the deployer's, not the user's). User and
  assistant content counts, and so does text outside any turn (plain text, or corpus text joined with an EOS
  that doubles as the end-of-turn marker, as on SmolLM2).

The rule is causal: whether position t is real depends only on tokens <= t, so a sequence and any of its prefixes
agree on their common positions, and a KV-cached continuation sees the same mask as one full pass.
The turn markers are read off the tokenizer's own chat template (:func:`chat_scaffold`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

SYSTEM_ROLES = ("system", "developer")
_SENTINELS = {"system": "QQSYSQQ", "user": "QQUSRQQ", "assistant": "QQASTQQ"}


@dataclass(frozen=True)
class ChatScaffold:
    """Token ids that delimit chat turns: a turn header is a ``turn_start`` token followed by a role (its first
    token is one of ``role_ids``) and runs through the first ``newline`` token after it; a ``turn_end`` token
    closes a turn. A ``turn_start`` not followed by a role opens no turn (SmolLM2's BOS is its turn start)."""

    turn_start_ids: tuple[int, ...]
    turn_end_ids: tuple[int, ...]
    newline_ids: tuple[int, ...]
    role_ids: tuple[int, ...]
    excluded_role_ids: tuple[int, ...]
    user_role_ids: tuple[int, ...] = ()


def chat_scaffold(tokenizer: object) -> ChatScaffold | None:
    """The turn markers of ``tokenizer``'s chat template, or None without a template (or one this rule cannot
    read: markers must be special tokens, each header a role name followed by a newline)."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        return None
    specials = set(tokenizer.all_special_ids)
    messages = [{"role": role, "content": text} for role, text in _SENTINELS.items()]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates that refuse a system turn (Gemma) render without it
        rendered = tokenizer.apply_chat_template(messages[1:], tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    starts, ends, roles, roles_excluded, newlines, users = set(), set(), set(), set(), set(), set()
    for k, token in enumerate(ids):
        if token not in specials:
            if pieces[k].endswith("\n"):
                newlines.add(token)
            continue
        following = _line_after(pieces, k)
        if following in ("system", "user", "assistant", "model", "developer"):
            starts.add(token)
            roles.add(ids[k + 1])
            if following in SYSTEM_ROLES:
                roles_excluded.add(ids[k + 1])
            if following == "user":
                users.add(ids[k + 1])
        elif "".join(pieces[:k]).rstrip().endswith(tuple(_SENTINELS.values())):
            ends.add(token)
    if not starts or not ends or not newlines:
        return None
    return ChatScaffold(tuple(sorted(starts)), tuple(sorted(ends - starts)), tuple(sorted(newlines)),
                        tuple(sorted(roles)), tuple(sorted(roles_excluded)), tuple(sorted(users)))


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


def _line_after(pieces: list[str], k: int) -> str:
    """The text of the tokens after ``pieces[k]`` up to the end of the line (a role name in a turn header)."""
    line = ""
    for piece in pieces[k + 1 :]:
        line += piece
        if "\n" in piece:
            break
    return line.strip().lower()


class RealTokenRule:
    """The real-token rule of one model (module docstring); build it with :meth:`for_model`."""

    def __init__(self, special_ids: list[int], pad_id: int, skip_first: bool, scaffold: ChatScaffold | None):
        self.special_ids = torch.tensor(sorted(special_ids), dtype=torch.long)
        self.pad_id = int(pad_id)
        self.skip_first = bool(skip_first)
        self.scaffold = scaffold
        self._tensors: dict[object, tuple[Tensor, ...]] = {}

    @classmethod
    def for_model(cls, model: nn.Module) -> RealTokenRule:
        """The rule for ``model`` (its tokenizer's specials and chat template, whether it prepends BOS); cached."""
        tokenizer = getattr(model, "tokenizer", None)
        key = (id(tokenizer), bool(getattr(model.cfg, "default_prepend_bos", True)))
        cached = _RULES.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
        rule = cls(special_token_ids(model), pad_token_id(model), not key[1], chat_scaffold(tokenizer))
        _RULES[model] = (key, rule)
        return rule

    def _on(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._tensors:
            scaffold = self.scaffold
            parts = [self.special_ids]
            if scaffold is not None:
                parts += [torch.tensor(ids, dtype=torch.long) for ids in
                          (scaffold.turn_start_ids, scaffold.turn_end_ids, scaffold.newline_ids,
                           scaffold.role_ids, scaffold.excluded_role_ids or (-1,))]
            self._tensors[device] = tuple(p.to(device) for p in parts)
        return self._tensors[device]

    def mask(
        self, tokens: Int[Tensor, "batch pos"], present: Bool[Tensor, "batch pos"] | None = None
    ) -> Bool[Tensor, "batch pos"]:
        """Which tokens are real. ``tokens`` are whole sequences from their first position (left or right padded);
        ``present`` marks the positions that exist (e.g. within each row's length); pad ids never do."""
        specials, *scaffold_ids = self._on(tokens.device)
        present = tokens != self.pad_id if present is None else present & (tokens != self.pad_id)
        real = present & ~torch.isin(tokens, specials)
        if self.skip_first:
            real = real & ~_first_present(present)
        if self.scaffold is not None:
            real = real & ~_scaffolding(tokens, *scaffold_ids)
        return real

    def user_turn_starts(self, tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
        """True at the role token of each user turn (a turn-start token followed by a user role), causally (from
        tokens <= t); all False without a chat template. Turn-scoped gates count from the latest of these."""
        scaffold = self.scaffold
        if scaffold is None or not scaffold.user_role_ids:
            return torch.zeros_like(tokens, dtype=torch.bool)
        key = ("user_turns", tokens.device)
        if key not in self._tensors:  # once per device: no host-to-device copy per pass
            self._tensors[key] = tuple(torch.tensor(ids, dtype=torch.long, device=tokens.device)
                                       for ids in (scaffold.turn_start_ids, scaffold.user_role_ids))
        starts, users = self._tensors[key]
        after_start = torch.nn.functional.pad(torch.isin(tokens, starts)[:, :-1], (1, 0))
        return after_start & torch.isin(tokens, users)


_RULES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, RealTokenRule]]" = weakref.WeakKeyDictionary()


def _first_present(present: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """True at each row's first present position."""
    before = present.long().cumsum(-1)
    return present & (before == 1)


def _last_index(flags: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Per position, the index of the latest True at or before it (-1 if none)."""
    positions = torch.arange(flags.shape[-1], device=flags.device).expand_as(flags)
    return torch.where(flags, positions, -1).cummax(-1).values


def _scaffolding(
    tokens: Int[Tensor, "batch pos"], starts: Tensor, ends: Tensor, newlines: Tensor, roles: Tensor,
    excluded_roles: Tensor,
) -> Bool[Tensor, "batch pos"]:
    """Chat-template scaffolding (module docstring), causally: each position looks only at tokens before it.
    A turn opens at its role token (a turn-start token followed by a role name)."""
    after_start = torch.nn.functional.pad(torch.isin(tokens, starts)[:, :-1], (1, 0))
    is_role = after_start & torch.isin(tokens, roles)
    is_end, is_newline = torch.isin(tokens, ends), torch.isin(tokens, newlines)
    last_role, last_end = _last_index(is_role), _last_index(is_end)
    in_turn = last_role > last_end  # inside a turn whose header was seen and that no end token closed yet
    newline_count = is_newline.long().cumsum(-1)
    newlines_since = newline_count - newline_count.gather(-1, last_role.clamp(min=0))
    header = in_turn & ((newlines_since == 0) | ((newlines_since == 1) & is_newline))
    role = tokens.gather(-1, last_role.clamp(min=0))
    excluded_turn = in_turn & torch.isin(role, excluded_roles)
    other_count = (~is_newline).long().cumsum(-1)
    only_newlines_since_end = other_count == other_count.gather(-1, last_end.clamp(min=0))
    between_turns = (last_end >= 0) & ~in_turn & only_newlines_since_end  # the "\n" after an end of turn
    return header | excluded_turn | between_turns
