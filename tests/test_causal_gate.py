"""Causal gates, the KV-cache-following tracker and the one real-token rule (issues 12 and 13).

Independent references: hand-computed statistics, a gate run on a prefix vs the full sequence, an uncached
forward vs a KV-cached one, SAELens's own encode/decode on a HookedSAETransformer.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import make_model, planted_setup, texts
from hypothesis import given, settings
from hypothesis import strategies as st
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as HookedTransformerKeyValueCache

import dsg_lens as dsg
from dsg_lens.gate import PaperGate, PrefixGate, WindowGate, gate_from_dict
from dsg_lens.real_tokens import ChatScaffold, RealTokenRule
from dsg_lens.tokens import iter_batches, to_sequences


# ----------------------------------------------------------------------------------------------- the gates
def test_window_and_prefix_statistics_by_hand():
    fired = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1, 1]]).bool()
    real = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 1, 1, 1]]).bool()
    window = WindowGate(0.5, window=3, min_tokens=2)
    expected = [-1, -1, 1 / 2, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 1 / 3, 2 / 3]
    torch.testing.assert_close(window.statistic(fired, real)[0], torch.tensor(expected))
    assert window.decisions(fired, real)[0].tolist() == [False] * 3 + [True] * 7  # latched from position 3
    assert not WindowGate(0.5, window=3, min_tokens=2, latch=False).decisions(fired, real)[0, 7]
    prefix = PrefixGate(0.5, min_tokens=2)
    torch.testing.assert_close(prefix.statistic(fired, real)[0],
                               torch.tensor([-1, -1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 2 / 5, 2 / 6, 3 / 7, 4 / 8]))
    assert prefix.scores(fired, real).item() == pytest.approx(2 / 3)
    assert PaperGate(0.4).scores(fired, real).item() == pytest.approx(4 / 8)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_causal_gates_decide_from_the_prefix_only(data):
    """decisions(prefix) == decisions(full)[:len(prefix)] for the causal gates; not for the paper gate."""
    length = data.draw(st.integers(2, 40))
    fired = torch.tensor(data.draw(st.lists(st.booleans(), min_size=length, max_size=length)))[None]
    real = torch.tensor(data.draw(st.lists(st.booleans(), min_size=length, max_size=length)))[None]
    cut = data.draw(st.integers(1, length))
    tau = data.draw(st.floats(0.0, 0.9))
    for gate in (PrefixGate(tau, min_tokens=data.draw(st.integers(1, 5))),
                 WindowGate(tau, window=data.draw(st.integers(1, 8)), min_tokens=2),
                 WindowGate(tau, window=4, latch=False)):
        full = gate.decisions(fired, real)
        assert torch.equal(gate.decisions(fired[:, :cut], real[:, :cut]), full[:, :cut])
        assert bool(gate.scores(fired, real)[0] > tau) == bool(full[0, -1])


def test_paper_gate_is_not_causal():
    fired = torch.tensor([[0, 0, 0, 1, 1, 1]]).bool()
    real = torch.ones_like(fired)
    gate = PaperGate(0.4)
    assert not gate.decisions(fired[:, :3], real[:, :3]).any() and gate.decisions(fired, real)[0, 0]


def test_gate_round_trip_and_bad_input():
    for gate in (PaperGate(0.2), PrefixGate(0.3, min_tokens=2, latch=False), WindowGate(0.1, window=8)):
        assert gate_from_dict(gate.to_dict()) == gate
    with pytest.raises(ValueError, match="unknown gate kind"):
        gate_from_dict({"kind": "magic", "tau": 0.1})
    with pytest.raises(ValueError, match="min_tokens"):
        PrefixGate(0.1, min_tokens=0)
    with pytest.raises(ValueError, match="window"):
        WindowGate(0.1, window=0)


# ------------------------------------------------------------------------------------- the real-token rule
SCAFFOLD = ChatScaffold(turn_start_ids=(1,), turn_end_ids=(2,), newline_ids=(9,), role_ids=(5, 6, 7),
                        excluded_role_ids=(5,))


def test_chat_scaffolding_by_hand():
    """<s> system \\n sys sys </s> \\n <s> user \\n q q </s> \\n <s> assistant \\n a (ids: 1 start, 2 end, 9 newline,
    5 system, 6 user, 7 assistant): only the user's and the assistant's content counts."""
    rule = RealTokenRule([0, 1, 2], pad_id=0, skip_first=False, scaffold=SCAFFOLD)
    tokens = torch.tensor([[1, 5, 9, 20, 21, 2, 9, 1, 6, 9, 30, 31, 2, 9, 1, 7, 9, 40]])
    expected = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1]
    assert rule.mask(tokens)[0].int().tolist() == expected
    for cut in range(1, tokens.shape[1]):  # causal: every prefix agrees
        assert rule.mask(tokens[:, :cut])[0].int().tolist() == expected[:cut]
    plain = torch.tensor([[20, 9, 21, 22]])  # no turn markers: everything counts
    assert rule.mask(plain).all()
    joined = torch.tensor([[1, 20, 21, 2, 22, 9, 23]])  # BOS = turn start, texts joined with EOS = turn end
    assert rule.mask(joined)[0].int().tolist() == [0, 1, 1, 0, 1, 1, 1]


def test_first_token_rule_with_left_and_right_padding():
    rule = RealTokenRule([0], pad_id=0, skip_first=True, scaffold=None)
    tokens = torch.tensor([[0, 0, 7, 8], [9, 10, 11, 12], [13, 14, 0, 0]])
    assert rule.mask(tokens).int().tolist() == [[0, 0, 0, 1], [0, 1, 1, 1], [0, 1, 0, 0]]


def test_left_padded_tensor_counts_like_right_padded_on_a_no_bos_model(tiny_tokenizer):
    """Finding 6: statistics of a left-padded token tensor count the same tokens as the right-padded one (the
    first real token of each row is the attention sink on models without BOS, left padding or not)."""
    model = make_model("llama", tiny_tokenizer)
    model.cfg.default_prepend_bos = False
    pad = model.tokenizer.pad_token_id
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in "w1 w2 w3 w4".split()]
    left = torch.tensor([[pad, pad] + ids[:2], ids])
    right = torch.tensor([ids[:2] + [pad, pad], ids])
    sae, _ = planted_setup(model)
    n_left = dsg.collect_latent_stats(model, sae, left, progress=False).n_tokens
    n_right = dsg.collect_latent_stats(model, sae, right, progress=False).n_tokens
    assert n_left == n_right == 1 + 3


def test_chat_template_scaffolding_read_from_the_smollm2_tokenizer():
    from dsg_lens.models import load_hf_model
    from dsg_lens.real_tokens import chat_scaffold

    tokenizer = load_hf_model()[1]

    scaffold = chat_scaffold(tokenizer)
    assert scaffold is not None
    rule = RealTokenRule(tokenizer.all_special_ids, tokenizer.pad_token_id, True, scaffold)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What do cheetahs eat?"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text + "Answer:", add_special_tokens=False)["input_ids"]])
    kept = tokenizer.decode(ids[0][rule.mask(ids)[0]])
    assert kept == "What do cheetahs eat?Answer:"


# ---------------------------------------------------------------------------------- the guardrail, causally
@pytest.fixture
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    return model, sae


def _guard(sae, gate):
    return dsg.DynamicSAEGuardrail(sae, [5], gate, clamp=20.0)


def _capture(model, guard, tokens, name="blocks.1.hook_resid_pre", **kwargs):
    store = {}
    with guard.attached(model), dsg.scoped_hooks(model, dsg.cache_spec(name, store, key="x")):
        logits = model(tokens, **kwargs)
    return logits, store["x"]


@pytest.mark.parametrize("gate", [PrefixGate(0.3, min_tokens=2), WindowGate(0.3, window=4, min_tokens=2)])
def test_context_positions_do_not_see_the_continuation(planted, gate):
    model, sae = planted
    context = model.to_tokens("w1 w2 cat w3 w4 w5 w6")
    continuation = model.to_tokens(" cat dog fox cat", prepend_bos=False)
    guard = _guard(sae, gate)
    alone, _ = _capture(model, guard, context)
    joint, _ = _capture(model, guard, torch.cat([context, continuation], dim=1))
    torch.testing.assert_close(joint[:, : context.shape[1]], alone, atol=1e-5, rtol=1e-5)
    plain = model(torch.cat([context, continuation], dim=1))
    assert not torch.allclose(joint, plain, atol=1e-3)  # the continuation itself is clamped


def test_paper_gate_lets_the_continuation_change_the_context(planted):
    """Why the paper's gate must not score continuations: the answer's own tokens switch it on for the context."""
    model, sae = planted
    context = model.to_tokens("w1 w2 cat w3 w4 w5 w6")
    continuation = model.to_tokens(" cat dog fox cat", prepend_bos=False)
    guard = _guard(sae, PaperGate(0.3))
    alone, _ = _capture(model, guard, context)
    joint, _ = _capture(model, guard, torch.cat([context, continuation], dim=1))
    assert not torch.allclose(joint[:, : context.shape[1]], alone, atol=1e-3)


def test_kv_cached_continuation_equals_one_full_pass(planted):
    model, sae = planted
    guard = _guard(sae, WindowGate(0.3, window=4, min_tokens=2))
    first = model.to_tokens("w1 cat w2 w3")
    second = model.to_tokens(" dog w4 fox w5", prepend_bos=False)
    full, _ = _capture(model, guard, torch.cat([first, second], dim=1))
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with guard.attached(model):
        head = model(first, past_kv_cache=cache)
        tail = model(second, past_kv_cache=cache)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), full, atol=1e-4, rtol=1e-4)


def test_frozen_shared_prefix_does_not_leak_between_suffixes(planted):
    """Finding 3: fill a cache with a prefix, freeze it, run suffixes: each suffix is judged with the prefix only
    (reference: an uncached run of prefix + suffix)."""
    model, sae = planted
    guard = _guard(sae, PrefixGate(0.3, min_tokens=2))
    prefix = model.to_tokens("w1 w2 w3 w4")
    loud = model.to_tokens(" cat dog fox cat", prepend_bos=False)  # trips the gate
    quiet = model.to_tokens(" w5 cat w6 w7", prepend_bos=False)  # alone after the prefix: 1/8 < tau
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with guard.attached(model):
        model(prefix, past_kv_cache=cache)
        cache.freeze()
        model(loud, past_kv_cache=cache)
        quiet_cached = model(quiet, past_kv_cache=cache)
    reference, _ = _capture(model, guard, torch.cat([prefix, quiet], dim=1))
    torch.testing.assert_close(quiet_cached, reference[:, prefix.shape[1]:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(quiet_cached, model(torch.cat([prefix, quiet], dim=1))[:, prefix.shape[1]:],
                               atol=1e-4, rtol=1e-4)  # the gate stayed off: as without the guardrail


def test_cache_filled_before_attaching_is_refused(planted):
    model, sae = planted
    guard = _guard(sae, PrefixGate(0.3, min_tokens=2))
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    model(model.to_tokens("w1 w2 w3"), past_kv_cache=cache)
    with guard.attached(model), pytest.raises(RuntimeError, match="Attach it before filling the cache"):
        model(model.to_tokens(" w4", prepend_bos=False), past_kv_cache=cache)


@pytest.mark.parametrize("gate", [PrefixGate(0.2, min_tokens=2), WindowGate(0.3, window=4, min_tokens=2)])
def test_cached_and_uncached_generation_agree(planted, gate):
    model, sae = planted
    guard = _guard(sae, gate)
    fox = model.tokenizer.convert_tokens_to_ids("fox")
    with torch.no_grad():
        model.b_U[fox] = 8.0  # generations drift into forget words
    for prompt in ("w1 w2 w3", "w1 cat w2 dog"):
        tokens = model.to_tokens(prompt)
        with guard.attached(model):
            cached = model.generate(tokens, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False)
            uncached = model.generate(tokens, max_new_tokens=8, do_sample=False, use_past_kv_cache=False,
                                      verbose=False)
        assert torch.equal(cached, uncached)


# ------------------------------------------------------------------------------------- the hook mechanism
def test_tracker_is_visible_reference_counted_and_follows_reset_hooks(planted):
    model, sae = planted
    guard = _guard(sae, PrefixGate(0.3))
    tracker = dsg.token_tracker(model)
    assert not tracker.installed
    with guard.attached(model):
        assert tracker.installed and "token-tracker" in dsg.describe_hooks(model)
        other = dsg.DynamicSAEGuardrail(sae, [5], PrefixGate(0.5), label="second")
        handle = other.attach(model)
        assert tracker.users == 2
    assert tracker.installed and tracker.users == 1
    model.reset_hooks()
    model(model.to_tokens("w1 w2"))  # the next pass notices the reset and takes the tracker off
    assert not tracker.installed and "token-tracker" not in dsg.describe_hooks(model)
    handle.remove()
    assert tracker.users == 0


def test_suspended_turns_every_dsg_lens_hook_off(planted):
    model, sae = planted
    tokens = model.to_tokens("cat dog fox cat dog")
    guard = _guard(sae, PrefixGate(0.1, min_tokens=1))
    with guard.attached(model):
        guarded = model(tokens)
        with dsg.suspended(model):
            plain = model(tokens)
    assert torch.equal(plain, model(tokens)) and not torch.equal(guarded, plain)


def test_suspended_owner_turns_off_only_its_hooks_and_gate_scores_read_the_unedited_activation(planted):
    """A guardrail's gate scores are the same whether it is attached or not (its own edit would otherwise hide the
    latents it reads: a fine-tuning loop with the guardrail attached measured 4% firing instead of 47%); another
    guardrail attached at the same hook stays on."""
    model, sae = planted
    texts = ["cat dog fox cat dog", "w1 w2 cat w3", "w1 w2 w3 w4"]
    guard = _guard(sae, PrefixGate(0.1, min_tokens=1))
    other = _guard(sae, PrefixGate(0.1, min_tokens=1))
    other.label = "other"
    detached = guard.gate_scores(model, texts)
    tokens = model.to_tokens(texts[0])
    with guard.attached(model):
        torch.testing.assert_close(guard.gate_scores(model, texts), detached)
        guarded = model(tokens)
        with dsg.suspended(model, owner=guard):
            plain = model(tokens)
        assert torch.equal(model(tokens), guarded)  # the owner's suspension ended with its block
    assert torch.equal(plain, model(tokens)) and not torch.equal(guarded, plain)
    with other.attached(model), dsg.suspended(model, owner=guard):
        assert not torch.equal(model(tokens), plain)  # not the owner: still on
        assert not torch.allclose(guard.gate_scores(model, texts), detached)  # reads other's edited activation


def test_hooks_module_is_importable_by_name():
    """Finding 9: ``dsg_lens.hooks`` is the module, not a function that shadows it."""
    import dsg_lens

    assert inspect.ismodule(dsg_lens.hooks)


# --------------------------------------------------------------------------- HookedSAETransformer, add_sae
@pytest.mark.parametrize("use_error_term", [False, True])
def test_attached_sae_is_edited_in_latent_space(tiny_tokenizer, use_error_term):
    """Finding 2: with ``add_sae(sae)`` the guardrail edits the SAE's latents of the model's activation; the
    reference is a plain model whose hook runs SAELens encode -> clamp -> decode (+ error)."""
    from sae_lens import HookedSAETransformer

    model = make_model("llama", tiny_tokenizer, cls=HookedSAETransformer)
    sae, _ = planted_setup(model)
    guard = _guard(sae, PrefixGate(0.2, min_tokens=1))
    tokens = model.to_tokens(["w1 cat w2 dog w3", "w1 w2 w3 w4 w5"])
    name = "blocks.0.hook_resid_pre"
    real = RealTokenRule.for_model(model).mask(tokens)

    def reference(resid, hook):
        acts = sae.encode(resid)
        fired = (acts[..., [5]] > 0).any(-1) & real
        on = guard.gate.decisions(fired, real) & fired
        edited = acts.clone()
        edited[..., 5] = torch.where(on, torch.full_like(acts[..., 5], -20.0), acts[..., 5])
        out = sae.decode(edited)
        return out + (resid - sae.decode(acts)) if use_error_term else out

    expected = model.run_with_hooks(tokens, fwd_hooks=[(name, reference)])
    model.add_sae(sae, use_error_term=use_error_term)
    try:
        with guard.attached(model):
            got = model(tokens)
    finally:
        model.reset_saes()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_batches_and_hook_use_the_same_rule(planted):
    model, sae = planted
    batch = next(iter_batches(model, to_sequences(model, texts(3, 4, False)), batch_size=4))
    seen = {}
    tracker = dsg.token_tracker(model)
    spec = dsg.HookSpec("blocks.1.hook_resid_pre", lambda a, hook: seen.update(real=tracker.context(a.shape[1]).real),
                        needs_tokens=True)
    with dsg.scoped_hooks(model, spec):
        model(batch.tokens)
    assert torch.equal(seen["real"], batch.real)


def test_package_exports_what_users_call():
    import dsg_lens

    for name in ("score_mcq", "run_sweep", "StaticClamp", "rmu_unlearn", "DynamicSAEGuardrail", "WindowGate",
                 "PrefixGate", "PaperGate", "scoped_hooks", "suspended", "adapter_for", "reference_edit"):
        assert name in dsg_lens.__all__ and hasattr(dsg_lens, name)
    assert all(hasattr(dsg_lens, name) for name in dsg_lens.__all__)


def test_attaching_does_not_keep_the_model_alive(tiny_tokenizer):
    import gc
    import weakref

    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    with _guard(sae, PrefixGate(0.3)).attached(model):
        model(model.to_tokens("w1 cat w2"))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_completion_scoring_refuses_a_non_causal_gate(planted):
    """Leaky numbers are refused, not returned: completion scores under the paper's per-sequence gate would let
    each candidate answer switch the guardrail on for the positions that predict it."""
    from tiny_mcq import word_mcqs

    model, sae = planted
    questions = word_mcqs(3, 2, True)
    with _guard(sae, PaperGate(0.1)).attached(model), pytest.raises(ValueError, match="non-causal PaperGate"):
        dsg.score_mcq(model, questions, "completion", progress=False)
    with _guard(sae, PrefixGate(0.1)).attached(model):
        assert dsg.score_mcq(model, questions, "completion", progress=False).n == 2
