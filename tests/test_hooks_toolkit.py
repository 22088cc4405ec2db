"""Hook composition on HookedTransformer, HookedSAETransformer (SAE attached or not) and TransformerBridge."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_sae, texts
from sae_lens import HookedSAETransformer
from tiny_bridge import make_llama_pair

import dsg_lens as dsg
from dsg_lens import interventions as iv
from dsg_lens.hooks import describe_hooks

HOOK = "blocks.1.hook_resid_pre"
KINDS = ["hooked", "sae", "sae+attached", "bridge"]


@pytest.fixture(scope="module")
def models(tiny_tokenizer, tmp_path_factory):
    hooked, bridge = make_llama_pair(tiny_tokenizer, tmp_path_factory.mktemp("tiny_model"))
    sae_model = make_model("llama", tiny_tokenizer, cls=HookedSAETransformer)
    attached = make_model("llama", tiny_tokenizer, cls=HookedSAETransformer)
    attached.add_sae(make_sae(seed=3), use_error_term=True)
    return {"hooked": hooked, "sae": sae_model, "sae+attached": attached, "bridge": bridge}


def _live_hook_count(model) -> tuple[int, int]:
    """(torch forward hooks that run, TransformerLens's record of hooks) over all HookPoints."""
    points = {id(p): p for p in model.hook_dict.values()}.values()  # a Bridge lists aliases of one point
    return sum(len(p._forward_hooks) for p in points), sum(len(p.fwd_hooks) + len(p.bwd_hooks) for p in points)


def _add(vec):
    return lambda act, hook: act + vec


@pytest.mark.parametrize("kind", KINDS)
def test_observer_after_edit_sees_the_edit(models, kind):
    model = models[kind]
    tokens = model.to_tokens(texts(1, 2, False), padding_side="right")
    store: dict = {}
    shift = torch.arange(16, dtype=torch.float32)
    # given in the "wrong" order: the spec order decides
    with dsg.scoped_hooks(model, iv.cache_spec(HOOK, store, key="after"), dsg.HookSpec(HOOK, _add(shift), label="edit"),
                   iv.cache_spec(HOOK, store, key="before", order=-1)):
        assert [h.label for h in dsg.attached_hooks(model)] == ["cache", "edit", "cache"]
        assert [h.order for h in dsg.attached_hooks(model)] == [-1, 0, 100]
        model(tokens)
    torch.testing.assert_close(store["after"], store["before"] + shift)


@pytest.mark.parametrize("kind", KINDS)
def test_same_order_keeps_given_order_and_nesting_runs_outer_first(models, kind):
    model = models[kind]
    seen = []

    def mark(tag):
        return dsg.HookSpec(HOOK, lambda act, hook: seen.append(tag), label=tag)

    with dsg.scoped_hooks(model, mark("outer")):
        with dsg.scoped_hooks(model, mark("a"), mark("b")):
            model(model.to_tokens("w1 w2"))
    assert seen == ["outer", "a", "b"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["in hook", "in body"])
def test_exception_leaves_no_hook_behind(models, kind, where):
    model = models[kind]
    before = _live_hook_count(model)

    def boom(act, hook):
        raise RuntimeError("boom")

    spec = dsg.HookSpec(HOOK, boom if where == "in hook" else (lambda act, hook: None), label="x")
    with pytest.raises(RuntimeError, match="boom"):
        with dsg.scoped_hooks(model, spec, iv.cache_spec("blocks.0.hook_resid_post", {})):
            model(model.to_tokens("w1 w2"))
            raise RuntimeError("boom")
    assert dsg.attached_hooks(model) == []
    assert _live_hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with dsg.attach(model, spec):
            model(model.to_tokens("w1 w2"))
            raise RuntimeError("boom")
    assert dsg.attached_hooks(model) == []
    assert _live_hook_count(model) == before


@pytest.mark.parametrize("kind", KINDS)
def test_nested_contexts_restore_exactly_the_previous_state(models, kind):
    model = models[kind]
    tokens = model.to_tokens(texts(2, 2, False), padding_side="right")
    base = model(tokens)
    foreign = dsg.resolve_hook_name(model, "blocks.0.hook_resid_post")
    model.hook_dict[foreign].add_hook(_add(0.5))  # someone else's hook, outside dsg-lens
    try:
        with_foreign = model(tokens)
        snapshot = (describe_hooks(model), _live_hook_count(model))
        with dsg.scoped_hooks(model, dsg.HookSpec(HOOK, _add(1.0), label="one")):
            level1 = (describe_hooks(model), _live_hook_count(model))
            out1 = model(tokens)
            with dsg.scoped_hooks(model, dsg.HookSpec(HOOK, _add(2.0), label="two")):
                assert [h.label for h in dsg.attached_hooks(model)] == ["one", "two"]
                model(tokens)
            assert (describe_hooks(model), _live_hook_count(model)) == level1
            assert torch.equal(model(tokens), out1)
        assert (describe_hooks(model), _live_hook_count(model)) == snapshot
        assert torch.equal(model(tokens), with_foreign)
    finally:
        model.hook_dict[foreign].remove_hooks()
    assert torch.equal(model(tokens), base)


@pytest.mark.parametrize("kind", KINDS)
def test_persistent_attach_removes_exactly_its_hooks(models, kind):
    model = models[kind]
    before = _live_hook_count(model)
    handle = dsg.attach(model, dsg.HookSpec(HOOK, _add(1.0), label="steer"), iv.cache_spec(HOOK, {}))
    with dsg.scoped_hooks(model, dsg.HookSpec(HOOK, _add(1.0), label="scoped")):
        table = describe_hooks(model)
    for text in ("steer", "cache", "scoped", "persistent", "order"):
        assert text in table
    assert _live_hook_count(model) == (before[0] + 2, before[1] + 2)
    handle.remove()
    handle.remove()  # idempotent
    assert _live_hook_count(model) == before
    assert describe_hooks(model) == "no dsg-lens hooks attached"


def test_describe_hooks_counts_foreign_hooks(tiny_gpt2):
    tiny_gpt2.hook_dict[HOOK].add_hook(lambda act, hook: None)
    try:
        with dsg.scoped_hooks(tiny_gpt2, dsg.HookSpec(HOOK, lambda act, hook: None, label="mine", order=3)):
            lines = describe_hooks(tiny_gpt2).splitlines()
    finally:
        tiny_gpt2.reset_hooks()
    assert lines[0].split() == ["label", "hook", "name", "order", "lifetime"]
    assert lines[2].split() == ["mine", HOOK, "3", "scoped"]
    assert lines[-1] == "(+ 1 forward hook(s) not added by dsg-lens)"


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_hook_name_raises_and_attaches_nothing(models, kind):
    model = models[kind]
    before = _live_hook_count(model)
    with pytest.raises(ValueError, match="not a HookPoint"):
        with dsg.scoped_hooks(model, dsg.HookSpec(HOOK, _add(1.0)), dsg.HookSpec("blocks.1.hook_resid_prr", _add(1.0))):
            pass
    with pytest.raises(ValueError, match="not a HookPoint"):
        dsg.attach(model, dsg.HookSpec("blocks.9.hook_resid_pre", _add(1.0)))
    assert dsg.attached_hooks(model) == [] and _live_hook_count(model) == before


def test_guardrail_stacked_with_ablation_and_cache(tiny_tokenizer):
    """The guardrail, an ablation and a cache on one HookPoint compose, and the cache sees both edits."""
    model = make_model("gpt2", tiny_tokenizer)
    sae = make_sae()
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [0, 3], texts(3, 8, False), p_dyn=50, clamp=5.0, progress=False)
    guard.gate = guard.gate.with_tau(-1.0)
    tokens = model.to_tokens(texts(4, 2, True), padding_side="right")
    store: dict = {}
    with guard.attached(model):
        with dsg.scoped_hooks(model, iv.zero_ablate(sae, [9, 10]), iv.cache_spec(HOOK, store)):
            assert [h.label for h in dsg.attached_hooks(model)] == ["dsg-guardrail", "zero[2 latents]", "cache"]
            model(tokens)
    only_guard: dict = {}
    with guard.attached(model):
        with dsg.scoped_hooks(model, iv.cache_spec(HOOK, only_guard)):
            model(tokens)
    assert not torch.equal(store[HOOK], only_guard[HOOK])  # the ablation ran after the guardrail
    acts = sae.encode(only_guard[HOOK])[..., [9, 10]]
    expected = only_guard[HOOK] - acts @ sae.W_dec[[9, 10]]
    torch.testing.assert_close(store[HOOK], expected, atol=1e-5, rtol=1e-5)
    assert dsg.attached_hooks(model) == []
