"""Property-based tests (hypothesis) of the core invariants, on the tiny models. Example counts are explicit
(``max_examples``); run with ``--hypothesis-show-statistics`` to see them."""

from __future__ import annotations

import tempfile

import pytest
import torch
from conftest import WORDS, make_sae
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsg_lens as dsg

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SAE_KINDS = st.sampled_from(["standard", "jumprelu", "topk"])
TEXT = st.lists(st.integers(0, len(WORDS) - 1), min_size=1, max_size=14).map(lambda ids: " ".join(WORDS[i] for i in ids))
TEXTS = st.lists(TEXT, min_size=1, max_size=5)
LATENTS = st.lists(st.integers(0, 63), min_size=1, max_size=8, unique=True)

_SAES = {kind: make_sae(kind, seed=2, bias=-0.1) for kind in ("standard", "jumprelu", "topk")}


@settings(max_examples=25, **SETTINGS)
@given(batch=TEXTS, kind=SAE_KINDS, ids=LATENTS, quantile=st.floats(0, 1))
def test_rows_the_gate_does_not_trip_are_bit_identical(tiny_gpt2, batch, kind, ids, quantile):
    sae = _SAES[kind]
    probe = dsg.DynamicSAEGuardrail(sae, ids, dsg.PaperGate(0.0), clamp=50.0)
    scores = probe.gate_scores(tiny_gpt2, batch)
    tau = float(torch.quantile(scores, quantile))
    guard = dsg.DynamicSAEGuardrail(sae, ids, dsg.PaperGate(tau), clamp=50.0)
    tokens = tiny_gpt2.to_tokens(batch, padding_side="right")
    base = tiny_gpt2(tokens)
    with guard.attached(tiny_gpt2):
        guarded = tiny_gpt2(tokens)
    for row in range(len(batch)):
        if scores[row] <= tau:
            assert torch.equal(guarded[row], base[row])


@settings(max_examples=40, **SETTINGS)
@given(batch=TEXTS, kind=SAE_KINDS, ids=LATENTS, clamp=st.floats(0.0, 500.0))
def test_guardrail_edit_equals_saelens_encode_clamp_decode(tiny_gpt2, batch, kind, ids, clamp):
    """At the hook, the guardrail's output equals SAELens encode -> clamp -> decode + error at fired real tokens
    (reference computed here with SAELens calls), and the input elsewhere."""
    sae = _SAES[kind]
    guard = dsg.DynamicSAEGuardrail(sae, ids, dsg.PaperGate(-1.0), clamp=clamp)  # always on
    tokens = tiny_gpt2.to_tokens(batch, padding_side="right")
    store: dict = {}
    with dsg.scoped_hooks(tiny_gpt2, dsg.cache_spec("blocks.1.hook_resid_pre", store, key="before", order=-1)):
        with guard.attached(tiny_gpt2):
            with dsg.scoped_hooks(tiny_gpt2, dsg.cache_spec("blocks.1.hook_resid_pre", store, key="after")):
                tiny_gpt2(tokens)
    resid = store["before"]
    with torch.no_grad():
        acts = sae.encode(resid)
        real = ~torch.isin(tokens, torch.tensor(tiny_gpt2.tokenizer.all_special_ids))
        on = (acts[..., ids] > 0).any(-1) & real
        edited = acts.clone()
        edited[..., ids] = torch.where(on[..., None], torch.full_like(acts[..., ids], -clamp), acts[..., ids])
        reference = torch.where(on[..., None], sae.decode(edited) + resid - sae.decode(acts), resid)
    torch.testing.assert_close(store["after"], reference, atol=1e-3 * max(1.0, clamp / 50), rtol=1e-4)
    assert torch.equal(store["after"][~on], resid[~on])


@settings(max_examples=15, **SETTINGS)
@given(batch=TEXTS, ids=LATENTS, sizes=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       max_len=st.sampled_from([None, 5, 11]))
def test_batching_and_padding_do_not_change_per_sequence_results(tiny_gpt2, batch, ids, sizes, max_len):
    sae = _SAES["standard"]
    guard = dsg.DynamicSAEGuardrail(sae, ids, dsg.PaperGate(0.5))
    a, b = (guard.gate_scores(tiny_gpt2, batch, batch_size=size, max_len=max_len) for size in sizes)
    assert torch.equal(a, b)
    sa, sb = (dsg.collect_latent_stats(tiny_gpt2, sae, batch, features=ids, batch_size=size, max_len=max_len,
                                       progress=False) for size in sizes)
    assert torch.equal(sa.rho, sb.rho) and torch.equal(sa.tokens_per_text, sb.tokens_per_text)
    assert torch.equal(sa.fire_count, sb.fire_count)
    torch.testing.assert_close(sa.act_sum, sb.act_sum, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sa.rho, a, atol=0, rtol=0)


@settings(max_examples=10, **SETTINGS)
@given(forget=st.lists(TEXT, min_size=2, max_size=6), retain=st.lists(TEXT, min_size=2, max_size=6),
       data=st.data(), p_ratio=st.sampled_from([50, 80, 95]))
def test_selection_is_invariant_to_text_order(tiny_gpt2, forget, retain, data, p_ratio):
    sae = _SAES["jumprelu"]
    perm_f, perm_r = data.draw(st.permutations(range(len(forget)))), data.draw(st.permutations(range(len(retain))))

    def select(f_texts, r_texts):
        f = dsg.collect_latent_stats(tiny_gpt2, sae, f_texts, features=[0, 1], batch_size=3, progress=False)
        r = dsg.collect_latent_stats(tiny_gpt2, sae, r_texts, batch_size=3, progress=False)
        return f, dsg.select_features(f, r, n=3, p_ratio=p_ratio)

    stats, chosen = select(forget, retain)
    stats_p, chosen_p = select([forget[i] for i in perm_f], [retain[i] for i in perm_r])
    assert chosen_p.ids == chosen.ids
    assert torch.equal(stats_p.rho, stats.rho[list(perm_f)])


FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=30, **SETTINGS)
@given(d_sae=st.integers(1, 40), n_tokens=st.integers(0, 10**6), seed=st.integers(0, 2**16), data=st.data())
def test_latent_stats_round_trip_exactly(d_sae, n_tokens, seed, data):
    gen = torch.Generator().manual_seed(seed)
    n_texts = data.draw(st.integers(0, 5))
    rho_features = data.draw(st.lists(st.integers(0, d_sae - 1), max_size=3, unique=True))
    stats = dsg.LatentStats(
        act_sum=torch.randn(d_sae, generator=gen) * 1e3, act_sq_sum=torch.rand(d_sae, generator=gen) * 1e5,
        fire_count=torch.randint(0, n_tokens + 1, (d_sae,), generator=gen).float(), n_tokens=n_tokens,
        hook_name=data.draw(st.text(min_size=1, max_size=20)), resid_norm_sum=data.draw(st.floats(0, 1e9)),
        rho=torch.rand(n_texts, generator=gen) if n_texts else None, rho_features=rho_features,
        tokens_per_text=torch.randint(0, 99, (n_texts,), generator=gen) if n_texts else None,
    )
    with tempfile.TemporaryDirectory() as folder:
        stats.save(folder)
        back = dsg.LatentStats.load(folder)
    for name in ("act_sum", "act_sq_sum", "fire_count", "rho", "tokens_per_text"):
        a, b = getattr(stats, name), getattr(back, name)
        assert (a is None and b is None) or torch.equal(a, b)
    assert (back.n_tokens, back.hook_name, back.resid_norm_sum, back.rho_features) == (
        stats.n_tokens, stats.hook_name, stats.resid_norm_sum, stats.rho_features)


@settings(max_examples=30, **SETTINGS)
@given(ids=LATENTS, kind=SAE_KINDS, tau=st.floats(-1, 2), clamp=st.floats(0, 1e4),
       relative=st.booleans(), scale=st.floats(0.01, 100), resid_norm=st.floats(0.01, 1e4),
       with_features=st.booleans(), seed=st.integers(0, 2**16))
def test_guardrail_round_trips_exactly(ids, kind, tau, clamp, relative, scale, resid_norm, with_features, seed):
    sae = _SAES[kind]
    features = ids
    if with_features:
        gen = torch.Generator().manual_seed(seed)
        scores = {"forget_score": torch.rand(64, generator=gen), "rank_score": torch.randn(64, generator=gen)}
        features = dsg.FeatureSet(ids, "dsg", {"n": len(ids), "p_ratio": 95}, scores)
    guard = dsg.DynamicSAEGuardrail(sae, features, dsg.PaperGate(tau), clamp=clamp,
                                    clamp_scale=scale if relative else None, resid_norm=resid_norm if relative else None)
    with tempfile.TemporaryDirectory() as folder:
        guard.save(folder)
        back = dsg.DynamicSAEGuardrail.load(folder, sae=sae)
    assert back.latent_ids == guard.latent_ids and back.gate == guard.gate
    assert torch.equal(back.clamp_values, guard.clamp_values)
    assert (back.clamp, back.clamp_scale, back.resid_norm, back.hook_name) == (
        guard.clamp, guard.clamp_scale, guard.resid_norm, guard.hook_name)
    if with_features:
        assert back.features.ids == ids and back.features.params == features.params
        assert all(torch.equal(back.features.scores[k], v) for k, v in features.scores.items())


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_property_strategies_exercise_firing_latents(tiny_gpt2, kind):
    """Guard against vacuous properties: the SAEs used above do fire on the tiny model's activations."""
    stats = dsg.collect_latent_stats(tiny_gpt2, _SAES[kind], ["w1 w2 w3 cat dog"], progress=False)
    assert (stats.fire_freq > 0).sum() >= 8 and (stats.fire_freq < 1).sum() >= 8
