"""TransformerBridge: hook names (aliases vs canonical), and the same results as a HookedTransformer with the same
weights for interventions and the DSG guardrail (forward passes, gate scores, generation)."""

from __future__ import annotations

import pytest
import torch
from conftest import planted_setup, texts
from tiny_bridge import make_llama_pair

import dsg_lens as dsg
from dsg_lens import interventions as iv
from dsg_lens.hooks import hook_point

PLANTED_HOOK = "blocks.0.hook_resid_pre"


@pytest.fixture(scope="module")
def planted_pair(tiny_tokenizer, tmp_path_factory):
    """(HookedTransformer, TransformerBridge, SAE): same weights, latent 5 fires only on forget words."""
    hooked, bridge = make_llama_pair(tiny_tokenizer, tmp_path_factory.mktemp("planted"), plant_forget_direction=True)
    sae, _ = planted_setup(hooked)  # re-writes the same embedding values on `hooked`
    return hooked, bridge, sae


@pytest.fixture(scope="module")
def guard(planted_pair):
    hooked, _, sae = planted_pair
    return dsg.DynamicSAEGuardrail.fit(hooked, sae, [5], texts(11, 12, False), p_dyn=95, clamp=20.0,
                                       gate=dsg.WindowGate(min_tokens=1), progress=False)


def test_same_weights_same_logits(planted_pair):
    hooked, bridge, _ = planted_pair
    tokens = hooked.to_tokens(texts(1, 3, True), padding_side="right")
    torch.testing.assert_close(bridge(tokens), hooked(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "alias, canonical",
    [("blocks.0.hook_resid_pre", "blocks.0.hook_in"), ("blocks.0.hook_resid_post", "blocks.0.hook_out"),
     ("blocks.1.hook_mlp_out", "blocks.1.mlp.hook_out"), ("hook_embed", "embed.hook_out")],
)
def test_aliases_resolve_to_the_canonical_hook_point(planted_pair, alias, canonical):
    _, bridge, _ = planted_pair
    assert hook_point(bridge, alias) is hook_point(bridge, canonical)
    seen = []
    with dsg.scoped_hooks(bridge, dsg.HookSpec(alias, lambda a, hook: seen.append("alias")),
                   dsg.HookSpec(canonical, lambda a, hook: seen.append("canonical"), order=1)):
        bridge(bridge.to_tokens("w1 w2"))
    assert seen == ["alias", "canonical"]


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pos", "blocks.7.hook_resid_pre", "hook_embeds", ""])
def test_unknown_names_raise_on_the_bridge(planted_pair, name):
    _, bridge, _ = planted_pair
    with pytest.raises(ValueError, match="not a HookPoint"):
        dsg.resolve_hook_name(bridge, name)
    with pytest.raises(ValueError, match="not a HookPoint"):
        with dsg.scoped_hooks(bridge, dsg.HookSpec(name, lambda a, hook: None)):
            pass
    assert dsg.attached_hooks(bridge) == []


def test_edit_by_alias_matches_hooked_transformer(planted_pair):
    hooked, bridge, _ = planted_pair
    tokens = hooked.to_tokens(texts(2, 2, False), padding_side="right")
    shift = torch.linspace(-1, 1, 16)
    spec = dsg.HookSpec("blocks.0.hook_resid_post", lambda a, hook: a + shift)
    with dsg.scoped_hooks(hooked, spec):
        expected = hooked(tokens)
    with dsg.scoped_hooks(bridge, spec):
        got = bridge(tokens)
    assert not torch.allclose(expected, hooked(tokens))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_interventions_match_hooked_transformer(planted_pair):
    hooked, bridge, sae = planted_pair
    tokens = hooked.to_tokens(texts(3, 3, True), padding_side="right")
    for spec in (iv.zero_ablate(sae, 5), iv.steer_latents(sae, [1, 5], 2.0), iv.static_clamp(sae, [5], 10)):
        with dsg.scoped_hooks(hooked, spec):
            expected = hooked(tokens)
        with dsg.scoped_hooks(bridge, spec):
            got = bridge(tokens)
        assert not torch.allclose(expected, hooked(tokens)), spec.label
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=spec.label)


def test_tracker_sees_token_ids_on_the_bridge(planted_pair):
    _, bridge, _ = planted_pair
    tokens = bridge.to_tokens(texts(4, 2, False), padding_side="right")
    tracker = dsg.token_tracker(bridge)
    seen = {}
    spec = dsg.HookSpec(PLANTED_HOOK, lambda a, hook: seen.update(t=tracker.context(a.shape[1]).tokens),
                        needs_tokens=True)
    with dsg.scoped_hooks(bridge, spec):
        bridge(tokens)
    assert torch.equal(seen["t"], tokens)
    assert not bridge.embed._forward_pre_hooks and not bridge._forward_pre_hooks


def test_guardrail_same_on_bridge_and_hooked_transformer(planted_pair, guard):
    hooked, bridge, sae = planted_pair
    batch = texts(12, 3, True) + texts(13, 3, False)
    assert torch.equal(guard.gate_scores(bridge, batch), guard.gate_scores(hooked, batch))
    tokens = hooked.to_tokens(batch, padding_side="right")
    with guard.attached(hooked):
        expected = hooked(tokens)
    with guard.attached(bridge):
        assert [h.label for h in dsg.attached_hooks(bridge)] == ["dsg-guardrail"]
        got = bridge(tokens)
    assert not torch.allclose(expected[:3], hooked(tokens)[:3])  # forget rows are clamped
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert dsg.attached_hooks(bridge) == [] and not bridge.embed._forward_pre_hooks


def test_guardrail_generation_without_kv_cache_matches(planted_pair, guard):
    hooked, bridge, _ = planted_pair
    prompt = hooked.to_tokens(texts(12, 1, True))
    kwargs = dict(max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False)
    with guard.attached(hooked):
        expected = hooked.generate(prompt, **kwargs)
    with guard.attached(bridge):
        got = bridge.generate(prompt, **kwargs)
    assert torch.equal(got, expected)
    assert not torch.equal(got, bridge.generate(prompt, **kwargs))  # the guardrail changed the continuation


@pytest.mark.xfail(
    strict=True,
    reason="TransformerLens 3.9 + transformers 5.24: HF Llama layers pass the KV cache as `cache=`, the Bridge's "
    "attention reads `past_key_values=`, so the cache stays empty and each decoded token attends only to itself "
    "(KV-cached Bridge generation differs from uncached, with or without dsg-lens).",
)
def test_bridge_kv_cached_generation_matches_uncached(planted_pair, guard):
    _, bridge, _ = planted_pair
    prompt = bridge.to_tokens(texts(12, 1, True))
    kwargs = dict(max_new_tokens=6, do_sample=False, verbose=False)
    plain_cached = bridge.generate(prompt, use_past_kv_cache=True, **kwargs)
    plain_uncached = bridge.generate(prompt, use_past_kv_cache=False, **kwargs)
    with guard.attached(bridge):
        cached = bridge.generate(prompt, use_past_kv_cache=True, **kwargs)
        uncached = bridge.generate(prompt, use_past_kv_cache=False, **kwargs)
    assert torch.equal(plain_cached, plain_uncached)
    assert torch.equal(cached, uncached)
