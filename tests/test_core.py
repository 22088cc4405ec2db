"""Core DSG pipeline on tiny models: stats, selection, gate, guardrail exactness, generation, persistence."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FORGET_WORDS, make_model, make_sae, planted_setup, texts

import dsg_lens as dsg
from dsg_lens.sae_adapters import reference_edit
from dsg_lens.tokens import iter_batches, to_sequences


# ------------------------------------------------------------------------------------------------ statistics
def test_stats_match_dense_computation(tiny_gpt2, any_sae):
    corpus = texts(0, 9, forget=False)
    stats = dsg.collect_latent_stats(tiny_gpt2, any_sae, corpus, batch_size=4, progress=False)
    # dense reference: every text alone, all real tokens
    specials = torch.tensor(tiny_gpt2.tokenizer.all_special_ids)  # by hand: a BOS model, plain text
    rows = []
    for text in corpus:
        tokens = tiny_gpt2.to_tokens(text)
        _, cache = tiny_gpt2.run_with_cache(tokens)
        resid = cache["blocks.1.hook_resid_pre"][0]
        rows.append(any_sae.encode(resid[~torch.isin(tokens, specials)[0]]))
    acts = torch.cat(rows)
    assert stats.n_tokens == acts.shape[0]
    torch.testing.assert_close(stats.mean_act, acts.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats.mean_sq_act, acts.square().mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats.fire_freq, (acts > 0).float().mean(0))


def test_stats_stop_at_layer(tiny_gpt2, monkeypatch):
    sae = make_sae(hook_name="blocks.0.hook_resid_post")
    seen = []
    original = tiny_gpt2.run_with_cache
    monkeypatch.setattr(tiny_gpt2, "run_with_cache", lambda *a, **k: seen.append(k["stop_at_layer"]) or original(*a, **k))
    dsg.collect_latent_stats(tiny_gpt2, sae, ["w1 w2 w3"], progress=False)
    assert seen == [1]


def test_special_tokens_and_padding_excluded(tiny_gpt2):
    seqs = to_sequences(tiny_gpt2, ["w1 w2", "w1 w2 w3 w4 w5"])
    batch = next(iter_batches(tiny_gpt2, seqs, batch_size=2))
    # BOS at position 0 and right padding are not real
    assert batch.real.sum().item() == 2 + 5
    assert not batch.real[:, 0].any()


def test_rho_recorded_per_text_and_batching_invariant(tiny_gpt2):
    sae = make_sae()
    corpus = texts(1, 7, forget=False)
    a = dsg.collect_latent_stats(tiny_gpt2, sae, corpus, features=[1, 2, 3], batch_size=3, progress=False)
    b = dsg.collect_latent_stats(tiny_gpt2, sae, corpus, features=[1, 2, 3], batch_size=1, progress=False)
    torch.testing.assert_close(a.rho, b.rho)
    torch.testing.assert_close(a.act_sum, b.act_sum, atol=1e-4, rtol=1e-5)
    assert a.rho.shape == (7,) and (a.tokens_per_text > 0).all()


def test_long_text_is_windowed(tiny_gpt2):
    sae = make_sae()
    long_text = " ".join(["w3 w4 w5"] * 40)  # 120 words > n_ctx 64
    stats = dsg.collect_latent_stats(tiny_gpt2, sae, [long_text], features=[0], max_len=32, progress=False)
    assert stats.tokens_per_text.tolist() == [120]


@pytest.mark.parametrize("bad, match", [([], "empty"), (["  "], "whitespace"), ("w1 w2", "single string")])
def test_bad_texts(tiny_gpt2, bad, match):
    with pytest.raises(ValueError, match=match):
        dsg.collect_latent_stats(tiny_gpt2, make_sae(), bad, progress=False)


def test_all_special_tokens_rejected(tiny_gpt2):
    with pytest.raises(ValueError, match="no real tokens"):
        dsg.collect_latent_stats(tiny_gpt2, make_sae(), ["<eos> <pad>"], progress=False)


def test_dimension_and_hook_mismatch(tiny_gpt2):
    with pytest.raises(ValueError, match="dimension mismatch"):
        dsg.collect_latent_stats(tiny_gpt2, make_sae(d_in=8, hook_name="blocks.0.hook_resid_post"), ["w1"])
    with pytest.raises(ValueError, match="not a HookPoint.*Close matches"):
        dsg.collect_latent_stats(tiny_gpt2, make_sae(hook_name="blocks.0.hook_resid_postt"), ["w1"])


def test_stats_save_load_roundtrip(tiny_gpt2, tmp_path):
    stats = dsg.collect_latent_stats(tiny_gpt2, make_sae(), texts(2, 3, False), features=[4], progress=False)
    stats.save(tmp_path)
    back = dsg.LatentStats.load(tmp_path)
    assert torch.equal(back.act_sum, stats.act_sum) and torch.equal(back.rho, stats.rho)
    assert back.n_tokens == stats.n_tokens


# ------------------------------------------------------------------------------------------------- selection
def _stats(mean_f, mean_r, fire_f=None, fire_r=None, n=10):
    mean_f, mean_r = torch.tensor(mean_f), torch.tensor(mean_r)
    return (
        dsg.LatentStats(mean_f * n, mean_f.square() * n, (fire_f if fire_f is not None else mean_f > 0) * 1.0 * n, n, "h"),
        dsg.LatentStats(mean_r * n, mean_r.square() * n, (fire_r if fire_r is not None else mean_r > 0) * 1.0 * n, n, "h"),
    )


def test_dsg_rule_by_hand():
    # f = [1, 4, 9, 16, .25, 100], ratios = [1, 4e21, 1, 16, .0625, 1]; the 70th percentile of the ratios is 8.5,
    # so only latents 1 and 3 survive; ranked by f: 3 (16) before 1 (4). At p_ratio=50 (median 1), 5 wins on f.
    forget, retain = _stats([1.0, 2.0, 3.0, 4.0, 0.5, 10.0], [1.0, 0.0, 3.0, 1.0, 2.0, 10.0])
    fs = dsg.select_features(forget, retain, n=2, p_ratio=70)
    assert fs.ids == [3, 1]
    assert dsg.select_features(forget, retain, n=2, p_ratio=50).ids == [5, 3]
    assert fs.scores["ratio"].shape == (6,)
    with pytest.raises(ValueError, match="fewer than n"):
        dsg.select_features(forget, retain, n=5, p_ratio=90)


def test_dsg_rule_warns_when_it_selects_dense_latents():
    """Latent 1 fires on 90% of retain tokens (dense), latent 0 on 10%: selecting 1 warns and names it; selecting
    only 0 does not."""
    forget, retain = _stats([3.0, 5.0, 0.0], [0.1, 0.2, 1.0], fire_f=torch.tensor([0.5, 1.0, 0.0]),
                            fire_r=torch.tensor([0.1, 0.9, 1.0]))
    with pytest.warns(UserWarning, match=r"1 of the 2 selected latents .* \(dense: \[1\]\)") as caught:
        assert dsg.select_features(forget, retain, n=2, p_ratio=0).ids == [1, 0]
    assert caught[0].filename == __file__  # the user's line, not jaxtyping's wrapper
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forget, retain = _stats([3.0, 0.0], [0.1, 1.0], fire_f=torch.tensor([0.5, 0.0]),
                                fire_r=torch.tensor([0.1, 0.9]))
        assert dsg.select_features(forget, retain, n=1, p_ratio=50).ids == [0]


def test_farrell_rule_by_hand():
    forget, retain = _stats([1.0] * 4, [1.0] * 4, fire_f=torch.tensor([0.9, 0.5, 0.8, 0.1]),
                            fire_r=torch.tensor([0.5, 0.0, 0.005, 0.0]))
    fs = dsg.select_features(forget, retain, n=3, rule="farrell", retain_threshold=0.01)
    assert fs.ids == [2, 1, 3]


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "between 1"), ({"n": 99}, "between 1"),
                                           ({"p_ratio": 101}, "percentile"), ({"rule": "nope"}, "unknown")])
def test_selection_bad_input(kwargs, match):
    forget, retain = _stats([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=match):
        dsg.select_features(forget, retain, **{"n": 1, **kwargs})


def test_selection_nan_rejected():
    forget, retain = _stats([float("nan"), 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        dsg.select_features(forget, retain, n=1)


# ---------------------------------------------------------------------------------------- planted feature
@pytest.fixture
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, forget_ids = planted_setup(model)
    return model, sae


def test_planted_feature_end_to_end(planted, tmp_path):
    model, sae = planted
    forget_texts, retain_texts = texts(10, 12, True), texts(11, 24, False)
    forget = dsg.collect_latent_stats(model, sae, forget_texts, progress=False)
    retain = dsg.collect_latent_stats(model, sae, retain_texts, progress=False)
    fs = dsg.select_features(forget, retain, n=1, p_ratio=90)
    assert fs.ids == [5]
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, fs, retain_texts, p_dyn=95, clamp=20.0, gate=SHORT_TEXT_GATE,
                                        progress=False)
    assert guard.gate.tau == 0.0  # the planted latent never fires on retain text
    assert guard.is_forget(model, texts(12, 5, True)).all()
    assert not guard.is_forget(model, texts(13, 5, False)).any()
    f_tok, r_tok = model.to_tokens(texts(12, 1, True)), model.to_tokens(texts(13, 1, False))
    f_base, r_base = model(f_tok), model(r_tok)
    with guard.attached(model):
        f_guard, r_guard = model(f_tok), model(r_tok)
    assert not torch.allclose(f_guard, f_base, atol=1e-3)
    assert torch.equal(r_guard, r_base)


# ------------------------------------------------------------------------------------------ exactness
SHORT_TEXT_GATE = dsg.WindowGate(min_tokens=1)
"""The tiny tests' texts have 4-12 words: a causal gate that decides from the first real token on."""


def _fitted(model, sae, p_dyn=50.0, clamp=5.0, gate=SHORT_TEXT_GATE, **kw):
    return dsg.DynamicSAEGuardrail.fit(model, sae, [0, 3, 7, 11], texts(3, 10, False), p_dyn=p_dyn, clamp=clamp,
                                       gate=gate, progress=False, **kw)


def test_gate_off_is_bit_identical(tiny_gpt2, any_sae):
    guard = _fitted(tiny_gpt2, any_sae, p_dyn=100.0)
    guard.gate = guard.gate.with_tau(2.0)  # rho <= 1 < tau: never fires
    tokens = tiny_gpt2.to_tokens(texts(4, 4, False), padding_side="right")
    base = tiny_gpt2(tokens)
    with guard.attached(tiny_gpt2):
        assert torch.equal(tiny_gpt2(tokens), base)


def test_delta_form_equals_full_form(tiny_gpt2, any_sae):
    guard = _fitted(tiny_gpt2, any_sae, gate=dsg.PaperGate())
    guard.gate = guard.gate.with_tau(-1.0)  # the paper's gate with tau < 0: on at every position of every row
    tokens = tiny_gpt2.to_tokens(texts(5, 3, False), padding_side="right")
    captured = {}

    def capture(name):
        def fn(act, hook):
            captured[name] = act.clone()
        return fn

    with dsg.scoped_hooks(tiny_gpt2, dsg.HookSpec("blocks.1.hook_resid_pre", capture("before"), order=-1)):
        with guard.attached(tiny_gpt2):
            with dsg.scoped_hooks(tiny_gpt2, dsg.HookSpec("blocks.1.hook_resid_pre", capture("after"))):
                tiny_gpt2(tokens)
    specials = torch.tensor(tiny_gpt2.tokenizer.all_special_ids)
    acts = any_sae.encode(captured["before"])[..., guard.latent_ids]
    mask = (acts > 0).any(-1) & ~torch.isin(tokens, specials)
    assert mask.any()
    reference = reference_edit(any_sae, captured["before"], guard.latent_ids, mask, -guard.clamp_values)
    torch.testing.assert_close(captured["after"], reference, atol=1e-4, rtol=1e-4)


def test_batched_equals_one_at_a_time(tiny_gpt2):
    sae = make_sae()
    guard = _fitted(tiny_gpt2, sae)
    batch_texts = texts(6, 5, False) + texts(7, 3, True)
    tokens = tiny_gpt2.to_tokens(batch_texts, padding_side="right")
    lengths = [tiny_gpt2.to_tokens(t).shape[1] for t in batch_texts]
    with guard.attached(tiny_gpt2):
        batched = tiny_gpt2(tokens)
        for row, text in enumerate(batch_texts):
            alone = tiny_gpt2(tiny_gpt2.to_tokens(text))
            torch.testing.assert_close(batched[row, : lengths[row]], alone[0], atol=1e-4, rtol=1e-4)
    scores_batched = guard.gate_scores(tiny_gpt2, batch_texts, batch_size=8)
    scores_single = guard.gate_scores(tiny_gpt2, batch_texts, batch_size=1)
    assert torch.equal(scores_batched, scores_single)


def test_rho_ignores_padding(tiny_gpt2):
    sae = make_sae()
    guard = _fitted(tiny_gpt2, sae)
    short = "w1 w2 w3"
    alone = guard.gate_scores(tiny_gpt2, [short])
    padded = guard.gate_scores(tiny_gpt2, [short, " ".join(["w4"] * 30)])[0]
    assert alone.item() == padded.item()


# ------------------------------------------------------------------------------------------- generation
def test_generation_kv_cache_matches_no_cache_and_state_resets(planted):
    model, sae = planted
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], texts(11, 12, False), p_dyn=95, clamp=20.0,
                                        gate=SHORT_TEXT_GATE, progress=False)
    prompt = model.to_tokens(texts(12, 1, True))
    with guard.attached(model):
        with_cache = model.generate(prompt, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, verbose=False)
        without = model.generate(prompt, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False)
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
    assert torch.equal(with_cache, without)
    assert dsg.attached_hooks(model) == []
    # a retain prompt after a forget prompt: no state leaks, output as without the guardrail
    retain_prompt = model.to_tokens(texts(13, 1, False))
    with guard.attached(model):
        model.generate(prompt, max_new_tokens=3, do_sample=False, verbose=False)
        guarded = model.generate(retain_prompt, max_new_tokens=6, do_sample=False, verbose=False)
    assert torch.equal(guarded, model.generate(retain_prompt, max_new_tokens=6, do_sample=False, verbose=False))
    assert plain.shape == with_cache.shape


def test_generation_row_switches_on_later(planted):
    """A retain prompt whose continuation is forget text trips during KV-cached decoding, not before."""
    model, sae = planted
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], texts(11, 12, False), p_dyn=95, clamp=20.0,
                                        gate=SHORT_TEXT_GATE, progress=False)
    fox = model.tokenizer.convert_tokens_to_ids("fox")
    with torch.no_grad():
        model.b_U[fox] = 1e4  # the model now always generates "fox", a forget word
    before, after = [], []
    name = "blocks.0.hook_resid_pre"
    with dsg.scoped_hooks(model, dsg.HookSpec(name, lambda a, hook: before.append(a.clone()))):
        with guard.attached(model):
            with dsg.scoped_hooks(model, dsg.HookSpec(name, lambda a, hook: after.append(a.clone()))):
                out = model.generate(model.to_tokens("w1 w2 w3"), max_new_tokens=3, do_sample=False, verbose=False)
    assert out[0, -3:].tolist() == [fox] * 3
    changed = [not torch.equal(b, a) for b, a in zip(before, after)]
    assert changed == [False, True, True]  # prompt pass untouched; each generated fox is clamped


# ----------------------------------------------------------------------------------------- model types
def test_hooked_sae_transformer_with_and_without_attached_sae(tiny_tokenizer):
    from sae_lens import HookedSAETransformer

    model = make_model("gpt2", tiny_tokenizer, cls=HookedSAETransformer)
    sae = make_sae()
    guard = _fitted(model, sae)
    guard.gate = guard.gate.with_tau(-1.0)
    tokens = model.to_tokens(texts(8, 2, False), padding_side="right")
    base = model(tokens)
    with guard.attached(model):
        plain_guarded = model(tokens)
    assert not torch.allclose(plain_guarded, base)
    model.add_sae(sae, use_error_term=True)
    try:
        with guard.attached(model):
            sae_guarded = model(tokens)
    finally:
        model.reset_saes()
    torch.testing.assert_close(sae_guarded, plain_guarded, atol=1e-4, rtol=1e-4)


def test_bf16_model_fp32_sae_returns_bf16(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer, dtype=torch.bfloat16)
    sae = make_sae()
    guard = _fitted(model, sae)
    guard.gate = guard.gate.with_tau(-1.0)
    seen = {}
    with guard.attached(model):
        with dsg.scoped_hooks(model, dsg.HookSpec("blocks.1.hook_resid_pre", lambda a, hook: seen.update(dtype=a.dtype))):
            model(model.to_tokens("w1 w2 w3"))
    assert seen["dtype"] == torch.bfloat16


# ---------------------------------------------------------------------------------------- persistence
def test_save_load_roundtrip_and_mismatch(tiny_gpt2, tmp_path):
    sae = make_sae()
    forget = dsg.collect_latent_stats(tiny_gpt2, sae, texts(1, 6, True), progress=False)
    retain = dsg.collect_latent_stats(tiny_gpt2, sae, texts(2, 6, False), progress=False)
    fs = dsg.select_features(forget, retain, n=4, p_ratio=50)
    guard = dsg.DynamicSAEGuardrail.fit(tiny_gpt2, sae, fs, texts(2, 6, False), clamp_scale=2.0, progress=False)
    guard.save(tmp_path / "g")
    back = dsg.DynamicSAEGuardrail.load(tmp_path / "g", sae=sae)
    assert back.latent_ids == guard.latent_ids and back.gate == guard.gate
    assert torch.equal(back.clamp_values, guard.clamp_values) and back.features.ids == fs.ids
    assert not list((tmp_path / "g").glob("*.pkl")) and not list((tmp_path / "g").glob("*.pt"))
    other = make_sae(seed=99)
    with pytest.raises(ValueError, match="not the one the guardrail was fitted on"):
        dsg.DynamicSAEGuardrail.load(tmp_path / "g", sae=other)


def test_relative_clamp_scales_with_resid_norm(tiny_gpt2):
    sae = make_sae()
    guard = _fitted(tiny_gpt2, sae, clamp_scale=1.0)
    expected = guard.resid_norm / sae.W_dec[guard.latent_ids].norm(dim=-1)
    torch.testing.assert_close(guard.clamp_values, expected.detach())


# ------------------------------------------------------------------------------------------- bad input
def test_no_hook_left_after_exception(tiny_gpt2):
    guard = _fitted(tiny_gpt2, make_sae())
    with pytest.raises(RuntimeError):
        with guard.attached(tiny_gpt2):
            raise RuntimeError("boom")
    assert dsg.attached_hooks(tiny_gpt2) == []
    assert all(not hp.fwd_hooks for hp in tiny_gpt2.hook_dict.values())
    assert not tiny_gpt2.embed._forward_pre_hooks


def test_double_attach_rejected(tiny_gpt2):
    guard = _fitted(tiny_gpt2, make_sae())
    with guard.attached(tiny_gpt2):
        with pytest.raises(ValueError, match="already attached"):
            with guard.attached(tiny_gpt2):
                pass
        assert len(dsg.attached_hooks(tiny_gpt2)) == 1
    assert not tiny_gpt2.embed._forward_pre_hooks


@pytest.mark.parametrize("kwargs, match", [({"p_dyn": 120}, "percentile"), ({"clamp": float("nan")}, "finite")])
def test_fit_bad_input(tiny_gpt2, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dsg.DynamicSAEGuardrail.fit(tiny_gpt2, make_sae(), [0], texts(1, 3, False), progress=False, **kwargs)


def test_latent_id_out_of_range(tiny_gpt2):
    with pytest.raises(ValueError, match="out of range"):
        dsg.DynamicSAEGuardrail.fit(tiny_gpt2, make_sae(), [64], texts(1, 3, False), progress=False)


def test_persistent_attach_handle_removes_exactly_ours(tiny_gpt2):
    guard = _fitted(tiny_gpt2, make_sae())
    other = dsg.attach(tiny_gpt2, dsg.HookSpec("blocks.1.hook_resid_pre", lambda a, hook: None, label="other"))
    handle = guard.attach(tiny_gpt2)
    assert [h.label for h in dsg.attached_hooks(tiny_gpt2)] == ["other", "dsg-guardrail"]
    handle.remove()
    assert [h.label for h in dsg.attached_hooks(tiny_gpt2)] == ["other"]
    assert len(tiny_gpt2.hook_dict["blocks.1.hook_resid_pre"].fwd_hooks) == 1
    other.remove()
    assert not tiny_gpt2.hook_dict["blocks.1.hook_resid_pre"].fwd_hooks


def test_runtime_type_checking_is_active():
    """The suite runs with jaxtyping + beartype (pyproject addopts): a float mask where Bool is declared fails."""
    import jaxtyping

    with pytest.raises(jaxtyping.TypeCheckError):
        dsg.PaperGate(tau=0.1).scores(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool))


def test_first_token_is_not_counted_without_bos(tiny_tokenizer):
    """Models that do not prepend BOS (SmolLM2) have their attention sink at the first token: never counted,
    neither by statistics nor by the gate in the hook."""
    model = make_model("llama", tiny_tokenizer)
    model.cfg.default_prepend_bos = False
    batch = next(iter_batches(model, to_sequences(model, ["w1 w2 w3", "w4 w5"]), batch_size=2))
    assert batch.real.sum().item() == 2 + 1 and not batch.real[:, 0].any()
    sae, _ = planted_setup(model)
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], texts(11, 12, False), p_dyn=95, clamp=20.0, gate="paper",
                                        progress=False)
    torch.testing.assert_close(guard.gate_scores(model, ["cat w1 w2 w3", "w1 cat w2 w3"]), torch.tensor([0.0, 1 / 3]))
    first, second = model.to_tokens("cat w1 w2 w3"), model.to_tokens("w1 cat w2 w3")
    base_first, base_second = model(first), model(second)
    with guard.attached(model):
        assert torch.equal(model(first), base_first)  # the forget word sits on the sink: the gate stays off
        assert not torch.equal(model(second), base_second)


def test_reset_hooks_forgets_persistent_attachments(tiny_gpt2):
    """After model.reset_hooks() removed a persistent guardrail, it is not listed and can be attached again."""
    guard = _fitted(tiny_gpt2, make_sae())
    handle = guard.attach(tiny_gpt2)
    tiny_gpt2.reset_hooks()
    assert dsg.attached_hooks(tiny_gpt2) == []
    handle.remove()
    with guard.attached(tiny_gpt2):
        assert len(dsg.attached_hooks(tiny_gpt2)) == 1
