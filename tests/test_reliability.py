"""Reliability: bad input gets a clear ValueError, faults leave nothing attached, the statistics pass checkpoints
and resumes exactly, long and large inputs stay bounded, and guardrails on several models do not interfere."""

from __future__ import annotations

import copy
import resource
import threading

import jaxtyping
import pytest
import torch
from conftest import FORGET_WORDS, make_model, make_sae, planted_setup, texts
from reliability_helpers import hook_counts, make_bridge
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import TransformerLensKeyValueCache as KVCache

import dsg_lens as dsg
import dsg_lens.activations
from dsg_lens.sae_adapters import SAEAdapter

HOOK = "blocks.1.hook_resid_pre"


def _fit(model, sae, ids=(0, 3, 7, 11), **kw):
    return dsg.DynamicSAEGuardrail.fit(model, sae, list(ids), texts(3, 10, False), p_dyn=50, clamp=5.0,
                                       progress=False, **kw)


# ------------------------------------------------------------------------------------------------ bad input
def _stats_pair():
    d = 8
    base = torch.arange(1.0, d + 1)
    forget = dsg.LatentStats(base * 10, base * 20, torch.full((d,), 5.0), 10, HOOK)
    retain = dsg.LatentStats(base.flip(0) * 10, base * 20, torch.full((d,), 5.0), 10, HOOK)
    return forget, retain


def _nan_model(tokenizer):
    model = make_model("gpt2", tokenizer)
    with torch.no_grad():
        model.W_E[5] = float("nan")
    return model


def _no_tokenizer_model():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_vocab=50, act_fn="gelu",
                                  d_mlp=32, device="cpu", seed=0)
    return HookedTransformer(cfg)


def _sae_for(model_name):
    sae = make_sae()
    sae.cfg.metadata.model_name = model_name
    return sae


def _nan_sae():
    sae = make_sae()
    with torch.no_grad():
        sae.W_enc[:, 3] = float("nan")
    return sae


BAD_INPUTS = {
    # name: (call(model, tokenizer), message regex)
    "sae d_in != d_model": (lambda m, t: dsg.collect_latent_stats(m, make_sae(d_in=8), ["w1"]), "d_in=8.*d_model=16"),
    "hook not on model": (lambda m, t: dsg.collect_latent_stats(m, make_sae(hook_name="blocks.7.hook_resid_pre"),
                                                                ["w1"]), "not a HookPoint"),
    "sae metadata for another model": (lambda m, t: dsg.collect_latent_stats(m, _sae_for("gemma-2-2b"), ["w1"]),
                                       "trained for model 'gemma-2-2b'"),
    "attention hook_z sae": (lambda m, t: dsg.collect_latent_stats(m, make_sae(d_in=4, hook_name="blocks.0.attn.hook_z"),
                                                                   ["w1"]), "hook_z.*not supported"),
    "1-D token tensor": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), torch.tensor([0, 5, 6])),
                         r"1-D.*tokens\[None\]"),
    "float tensor as tokens": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), torch.randn(2, 5)),
                               "float32 tensor: token ids must be an integer tensor"),
    "list of token lists": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), [[0, 5, 6], [0, 7]]),
                            r"texts\[0\] is a list.*integer tensor"),
    "token id outside vocabulary": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), torch.tensor([[0, 99]])),
                                    r"vocabulary is \[0, 50\)"),
    "empty token tensor": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), torch.zeros(2, 0, dtype=torch.long)),
                           "empty"),
    "single string": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), "w1 w2"), r"wrap it as \[text\]"),
    "empty list": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), []), "texts is empty"),
    "whitespace text": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["w1", "  "]), r"texts\[1\] is empty"),
    "only special tokens (stats)": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["<eos> <pad>"]),
                                    "no real tokens"),
    "only special tokens (fit)": (lambda m, t: dsg.DynamicSAEGuardrail.fit(m, make_sae(), [0], ["<eos> <pad>"],
                                                                           progress=False), "no real tokens"),
    "model without tokenizer given texts": (lambda m, t: dsg.collect_latent_stats(_no_tokenizer_model(), make_sae(),
                                                                                   ["w1"]), "no tokenizer"),
    "max_len > n_ctx": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["w1"], max_len=65), "max_len=65.*n_ctx=64"),
    "batch_size 0": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["w1"], batch_size=0), "batch_size"),
    "stats features out of range": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["w1"], features=[64]),
                                    r"features \[64\] are not latent ids"),
    "stats duplicate features": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["w1"], features=[1, 1]),
                                 "duplicate"),
    "checkpoint_every 0": (lambda m, t: dsg.collect_latent_stats(m, make_sae(), ["w1"], checkpoint_dir="/nonexistent",
                                                                 checkpoint_every=0), "checkpoint_every"),
    "n > candidates": (lambda m, t: dsg.select_features(*_stats_pair(), n=3, p_ratio=90), "fewer than n=3"),
    "n > d_sae": (lambda m, t: dsg.select_features(*_stats_pair(), n=9), "between 1 and d_sae=8"),
    "p_ratio 101": (lambda m, t: dsg.select_features(*_stats_pair(), n=1, p_ratio=101), "p_ratio=101.*percentile"),
    "p_ratio NaN": (lambda m, t: dsg.select_features(*_stats_pair(), n=1, p_ratio=float("nan")), "percentile"),
    "farrell retain_threshold 2": (lambda m, t: dsg.select_features(*_stats_pair(), n=1, rule="farrell",
                                                                    retain_threshold=2), "firing frequency"),
    "p_dyn -1": (lambda m, t: dsg.DynamicSAEGuardrail.fit(m, make_sae(), [0], ["w1"], p_dyn=-1), "p_dyn=-1"),
    "top(n) beyond selection": (lambda m, t: dsg.FeatureSet([1, 2], "dsg", {}).top(3), "n=3 must be between 1"),
    "latent id out of range": (lambda m, t: dsg.DynamicSAEGuardrail(make_sae(), [64], dsg.PaperGate(0.1)),
                               "out of range"),
    "duplicate latent ids": (lambda m, t: dsg.DynamicSAEGuardrail(make_sae(), [1, 1], dsg.PaperGate(0.1)),
                             "duplicates"),
    "no latent ids": (lambda m, t: dsg.DynamicSAEGuardrail(make_sae(), [], dsg.PaperGate(0.1)), "no latents"),
    "NaN tau": (lambda m, t: dsg.DynamicSAEGuardrail(make_sae(), [1], dsg.PaperGate(float("nan"))), "tau=nan"),
    "negative clamp": (lambda m, t: dsg.DynamicSAEGuardrail(make_sae(), [1], dsg.PaperGate(0.1), clamp=-1), "clamp=-1"),
    "clamp_scale without resid_norm": (lambda m, t: dsg.DynamicSAEGuardrail(make_sae(), [1], dsg.PaperGate(0.1),
                                                                            clamp_scale=1.0), "resid_norm"),
    "clamp_scale with NaN resid_norm": (lambda m, t: dsg.DynamicSAEGuardrail(
        make_sae(), [1], dsg.PaperGate(0.1), clamp_scale=1.0, resid_norm=float("nan")), "resid_norm"),
    "NaN SAE weights": (lambda m, t: dsg.DynamicSAEGuardrail(_nan_sae(), [3], dsg.PaperGate(0.1)), "W_enc has NaN"),
    "non-finite activations": (lambda m, t: dsg.collect_latent_stats(_nan_model(t), make_sae(), ["w2 w3"]),
                               "non-finite activations"),
    "fp16 SAE on fp32 model": (lambda m, t: dsg.collect_latent_stats(m, make_sae().to(torch.float16), ["w1"]),
                               r"Cast the SAE: sae.to\(dtype=torch.float32\)"),
    "stats from different SAEs": (lambda m, t: dsg.select_features(_stats_pair()[0], dsg.LatentStats(
        torch.ones(4), torch.ones(4), torch.ones(4), 1, HOOK), n=1), "d_sae"),
    "unknown rule": (lambda m, t: dsg.select_features(*_stats_pair(), n=1, rule="magic"), "unknown selection rule"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_value_error(case, tiny_gpt2, tiny_tokenizer, monkeypatch):
    """What a user sees: the test-time type checker is off (it would reject some of these cases first)."""
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call(tiny_gpt2, tiny_tokenizer)


def test_upcast_to_sae_dtype_warns_and_returns_model_dtype(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="upcast to torch.float32") as caught:
        dsg.collect_latent_stats(model, make_sae(), ["w1 w2"], progress=False)
    assert caught[0].filename == __file__  # attributed to the user's call, not to dsg_lens or a type checker


def test_guardrail_on_model_without_token_tracking_target_raises(tiny_gpt2):
    guard = _fit(tiny_gpt2, make_sae())

    class NoEmbed(torch.nn.Module):
        cfg = tiny_gpt2.cfg
        hook_dict = tiny_gpt2.hook_dict

    with pytest.raises(ValueError, match="no `embed` module"):
        with guard.attached(NoEmbed()):
            pass


# ---------------------------------------------------------------------------------------------------- faults
def _model(kind, tokenizer):
    if kind == "hooked":
        return make_model("gpt2", tokenizer)
    if kind == "hooked_sae":
        model = make_model("gpt2", tokenizer, cls=HookedSAETransformer)
        model.add_sae(make_sae(), use_error_term=True)
        return model
    return make_bridge(tokenizer)


MODEL_KINDS = ["hooked", "hooked_sae", "bridge"]


class Boom(Exception):
    pass


def _raise_on_call(k, exc):
    calls = {"n": 0}

    def hook(act, hook):
        calls["n"] += 1
        if calls["n"] == k:
            raise exc
    return hook


def _assert_clean(model, guard, counts_before, guard_state_before):
    assert dsg.attached_hooks(model) == []
    assert hook_counts(model) == counts_before
    assert {k: id(v) for k, v in vars(guard).items()} == guard_state_before


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("where", ["guardrail_hook", "user_hook", "generate", "persistent_attach"])
@pytest.mark.parametrize("exc", [Boom("injected"), KeyboardInterrupt()], ids=["exception", "keyboard_interrupt"])
def test_fault_leaves_no_hook_and_no_state(kind, where, exc, tiny_tokenizer, monkeypatch):
    model = _model(kind, tiny_tokenizer)
    guard = _fit(model, make_sae())
    guard.gate = guard.gate.with_tau(-1.0)  # always trips: the guardrail really edits
    tokens = model.to_tokens(texts(5, 2, False), padding_side="right")
    base = model(tokens)
    with guard.attached(model):
        guarded = model(tokens)
    before, state = hook_counts(model), {k: id(v) for k, v in vars(guard).items()}
    with pytest.raises(type(exc)):
        if where == "guardrail_hook":
            fault = lambda self, *args: (_ for _ in ()).throw(exc)  # noqa: E731
            monkeypatch.setattr(SAEAdapter, "encode", fault)  # the hook's encode (plain models) ...
            monkeypatch.setattr(type(guard.gate), "decisions", fault)  # ... and its gate (SAE-attached ones too)
            with guard.attached(model):
                model(tokens)
        elif where == "user_hook":
            with guard.attached(model), dsg.scoped_hooks(model, dsg.HookSpec("blocks.1.hook_resid_post", _raise_on_call(1, exc))):
                model(tokens)
        elif where == "generate":  # fails in the 3rd pass: inside KV-cached decoding
            with guard.attached(model), dsg.scoped_hooks(model, dsg.HookSpec("blocks.1.hook_resid_post", _raise_on_call(3, exc))):
                model.generate(tokens[:1, :4], max_new_tokens=5, do_sample=False, verbose=False)
        else:
            handle = guard.attach(model)
            try:
                with dsg.scoped_hooks(model, dsg.HookSpec("blocks.1.hook_resid_post", _raise_on_call(2, exc))):
                    model.generate(tokens[:1, :4], max_new_tokens=5, do_sample=False, verbose=False)
            finally:
                handle.remove()
    monkeypatch.undo()
    _assert_clean(model, guard, before, state)
    assert torch.equal(model(tokens), base)
    with guard.attached(model):  # and the guardrail still works afterwards, with fresh state
        assert torch.equal(model(tokens), guarded)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_interrupted_fit_and_stats_leave_no_hook(kind, tiny_tokenizer, monkeypatch):
    model = _model(kind, tiny_tokenizer)
    sae = make_sae()
    warm_up = model.to_tokens(["w1 w2"])
    model(warm_up), model.run_with_cache(warm_up)  # TransformerBridge installs its internal hooks once, lazily
    before = hook_counts(model)
    original = type(sae).encode
    calls = {"n": 0}

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, x)

    original_adapter = SAEAdapter.encode

    def flaky_adapter(self, x):  # scans encode through the SAE's adapter (an exact slice here, not sae.encode)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original_adapter(self, x)

    monkeypatch.setattr(type(sae), "encode", flaky)
    monkeypatch.setattr(SAEAdapter, "encode", flaky_adapter)
    with pytest.raises(KeyboardInterrupt):
        dsg.collect_latent_stats(model, sae, texts(1, 8, False), batch_size=2, progress=False)
    assert hook_counts(model) == before and dsg.attached_hooks(model) == []
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        dsg.DynamicSAEGuardrail.fit(model, sae, [0, 1], texts(1, 8, False), batch_size=2, progress=False)
    assert hook_counts(model) == before and dsg.attached_hooks(model) == []


def test_persistent_guardrail_state_does_not_leak_across_an_interrupted_generation(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], texts(11, 12, False), p_dyn=95, clamp=20.0, progress=False)
    forget_prompt, retain_prompt = model.to_tokens(texts(12, 1, True)), model.to_tokens(texts(13, 1, False))
    expected = model.generate(retain_prompt, max_new_tokens=6, do_sample=False, verbose=False)
    handle = guard.attach(model)
    try:
        with pytest.raises(KeyboardInterrupt):  # the forget prompt trips the gate, then decoding is interrupted
            with dsg.scoped_hooks(model, dsg.HookSpec("blocks.1.hook_resid_post", _raise_on_call(3, KeyboardInterrupt()))):
                model.generate(forget_prompt, max_new_tokens=6, do_sample=False, verbose=False)
        got = model.generate(retain_prompt, max_new_tokens=6, do_sample=False, verbose=False)
    finally:
        handle.remove()
    assert torch.equal(got, expected)
    assert not model.embed._forward_pre_hooks


# ----------------------------------------------------------------------------------------- checkpoint/resume
def _counting_encode(monkeypatch, sae, fail_at=None):
    original = type(sae).encode
    calls = {"n": 0}

    def encode(self, x):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(type(sae), "encode", encode)
    return calls


def _assert_same_stats(a, b):
    for name in ("act_sum", "act_sq_sum", "fire_count", "rho", "tokens_per_text"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_tokens, a.resid_norm_sum, a.rho_features) == (b.n_tokens, b.resid_norm_sum, b.rho_features)


def test_resumed_stats_equal_uninterrupted(tiny_gpt2, tmp_path, monkeypatch):
    sae, corpus = make_sae(), texts(20, 13, False)  # 13 texts, batch 2 -> 7 batches
    kwargs = dict(features=[1, 2, 3], batch_size=2, progress=False)
    reference = dsg.collect_latent_stats(tiny_gpt2, sae, corpus, **kwargs)
    _counting_encode(monkeypatch, sae, fail_at=6)  # dies in batch 6; the checkpoint holds batches 1-4
    with pytest.raises(KeyboardInterrupt):
        dsg.collect_latent_stats(tiny_gpt2, sae, corpus, checkpoint_dir=tmp_path, checkpoint_every=2, **kwargs)
    assert '"batches_done": 4' in (tmp_path / "checkpoint.json").read_text()
    assert len(list(tmp_path.glob("partial-*.safetensors"))) == 1
    monkeypatch.undo()
    calls = _counting_encode(monkeypatch, sae)
    resumed = dsg.collect_latent_stats(tiny_gpt2, sae, corpus, checkpoint_dir=tmp_path, checkpoint_every=2, **kwargs)
    assert calls["n"] == 3  # only batches 5-7 ran
    _assert_same_stats(resumed, reference)
    again = dsg.collect_latent_stats(tiny_gpt2, sae, corpus, checkpoint_dir=tmp_path, checkpoint_every=2, **kwargs)
    assert calls["n"] == 3  # a finished checkpoint is reused
    _assert_same_stats(again, reference)


@pytest.mark.parametrize("change", ["texts", "sae", "batch_size", "features", "model"])
def test_resume_with_other_inputs_is_refused(change, tiny_gpt2, tiny_tokenizer, tmp_path):
    sae, corpus = make_sae(), texts(20, 5, False)
    kwargs = dict(features=[1], batch_size=2, progress=False)
    dsg.collect_latent_stats(tiny_gpt2, sae, corpus, checkpoint_dir=tmp_path, **kwargs)
    model = tiny_gpt2
    if change == "texts":
        corpus = corpus[:-1] + ["w1 w2"]
    elif change == "sae":
        sae = make_sae(seed=3)
    elif change == "batch_size":
        kwargs["batch_size"] = 3
    elif change == "features":
        kwargs["features"] = [2]
    else:
        model = make_model("gpt2", tiny_tokenizer)
        with torch.no_grad():
            model.W_E[7, 0] += 1.0
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        dsg.collect_latent_stats(model, sae, corpus, checkpoint_dir=tmp_path, **kwargs)


def test_tampered_checkpoint_refused(tiny_gpt2, tmp_path):
    sae, corpus = make_sae(), texts(20, 5, False)
    dsg.collect_latent_stats(tiny_gpt2, sae, corpus, checkpoint_dir=tmp_path, progress=False)
    meta = tmp_path / "checkpoint.json"
    meta.write_text(meta.read_text().replace('"schema_version": 1', '"schema_version": 99'))
    with pytest.raises(ValueError, match="unsupported statistics checkpoint schema_version 99"):
        dsg.collect_latent_stats(tiny_gpt2, sae, corpus, checkpoint_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------------------- long/large inputs
def _record_batches(monkeypatch, module):
    shapes = []
    original = module.hook_activations
    monkeypatch.setattr(module, "hook_activations", lambda m, h, t: shapes.append(tuple(t.shape)) or original(m, h, t))
    return shapes


def test_4096_token_text_and_batch_64_stay_bounded(tiny_gpt2, monkeypatch):
    sae = make_sae()
    long_text = " ".join(f"w{i % 44}" for i in range(4096))
    many = texts(30, 64, False, length=(40, 60))
    shapes = _record_batches(monkeypatch, dsg_lens.activations)  # statistics and the gate scan read here
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = dsg.collect_latent_stats(tiny_gpt2, sae, [long_text] + many, features=[0, 1], batch_size=64,
                                     progress=False)
    guard = dsg.DynamicSAEGuardrail(sae, [0, 1], dsg.PaperGate(0.5))
    scores = guard.gate_scores(tiny_gpt2, [long_text] + many, batch_size=64)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert stats.tokens_per_text[0] == 4096 and scores.shape == (65,)
    assert shapes and max(b * p for b, p in shapes) <= 64 * tiny_gpt2.cfg.n_ctx
    assert grown_mib < 500, f"peak RSS grew by {grown_mib:.0f} MiB"
    torch.testing.assert_close(scores, stats.rho)  # the same rho, computed by two code paths


def test_long_text_gate_is_independent_of_batching_and_windowing(tiny_tokenizer):
    """With a position-independent hook (embeddings of a rotary model), the gate's score of a long text is the
    fraction of forget words whatever the window and batch size, and the attached hook decides the same."""
    cfg = make_model("llama", tiny_tokenizer).cfg
    cfg.n_ctx = 1024
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer).eval()
    sae, _ = planted_setup(model)
    gen = torch.Generator().manual_seed(0)
    words = [FORGET_WORDS[i % 3] if r < 0.3 else f"w{i % 44}"
             for i, r in enumerate(torch.rand(1000, generator=gen).tolist())]
    long_text = " ".join(words)
    expected = sum(w in FORGET_WORDS for w in words) / len(words)
    guard = dsg.DynamicSAEGuardrail(sae, [5], dsg.PaperGate(tau=expected - 0.01), clamp=20.0)
    for max_len, batch_size in [(1024, 1), (64, 1), (64, 16), (17, 5), (7, 64)]:
        score = guard.gate_scores(model, [long_text, "w1 w2"], max_len=max_len, batch_size=batch_size)
        assert score[0].item() == pytest.approx(expected, abs=1e-6), (max_len, batch_size)
    tokens = model.to_tokens(long_text)
    seen = {}
    with guard.attached(model), dsg.scoped_hooks(model, dsg.HookSpec("blocks.0.hook_resid_pre",
                                                              lambda a, hook: seen.update(after=a.clone()))):
        model(tokens, stop_at_layer=1)
    clamped_positions = (seen["after"] != model.embed(tokens)).any(-1)[0]
    assert clamped_positions.sum().item() == sum(w in FORGET_WORDS for w in words)  # tripped: every fired token


# ----------------------------------------------------------------------------------------------- concurrency
def _planted_pair(tokenizer):
    model_a, model_b = make_model("llama", tokenizer), make_model("llama", tokenizer)
    sae, _ = planted_setup(model_a)
    planted_setup(model_b)
    return model_a, model_b, sae


def test_two_guardrails_on_two_models_do_not_interfere(tiny_tokenizer):
    model_a, _, sae_a = _planted_pair(tiny_tokenizer)
    model_b = make_model("gpt2", tiny_tokenizer)
    guard_a = dsg.DynamicSAEGuardrail.fit(model_a, sae_a, [5], texts(11, 12, False), clamp=20.0, progress=False)
    guard_b = _fit(model_b, make_sae())
    guard_b.gate = guard_b.gate.with_tau(-1.0)
    tok_a, tok_b = model_a.to_tokens(texts(12, 2, True)), model_b.to_tokens(texts(4, 2, False))
    with guard_a.attached(model_a):
        alone_a = model_a(tok_a)
    with guard_b.attached(model_b):
        alone_b = model_b(tok_b)
    results = {}

    def run(name, model, guard, tokens):
        with guard.attached(model):
            results[name] = [model(tokens) for _ in range(5)]

    threads = [threading.Thread(target=run, args=("a", model_a, guard_a, tok_a)),
               threading.Thread(target=run, args=("b", model_b, guard_b, tok_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(out, alone_a) for out in results["a"])
    assert all(torch.equal(out, alone_b) for out in results["b"])
    assert dsg.attached_hooks(model_a) == [] and dsg.attached_hooks(model_b) == []


def _step(model, tokens, cache):
    return model(tokens, past_kv_cache=cache)[:, -1]


def test_one_guardrail_on_two_models_keeps_separate_state(tiny_tokenizer):
    """Interleave KV-cached passes of two models sharing one guardrail object: model A's prompt trips the gate,
    model B's does not; each continuation is judged by its own model's state."""
    model_a, model_b, sae = _planted_pair(tiny_tokenizer)
    guard = dsg.DynamicSAEGuardrail(sae, [5], dsg.PaperGate(tau=0.5), clamp=20.0)
    prompt_a = model_a.to_tokens("cat dog fox cat w1")  # rho 0.8 > 0.5: tripped
    prompt_b = model_b.to_tokens("w1 w2 w3 w4 w5")  # rho 0: not tripped
    fox = model_a.to_tokens("fox", prepend_bos=False)  # fires: clamped only where the row is tripped

    def run(model, prompt, cache_kw):
        cache = KVCache.init_cache(model.cfg, "cpu", 1)
        return [_step(model, prompt, cache), _step(model, fox, cache)] if cache_kw else cache

    with guard.attached(model_a):
        alone_a = run(model_a, prompt_a, True)
    alone_b = run(model_b, prompt_b, True)  # B unguarded: rho(B + fox) = 1/6 < tau, so guarded B equals it
    handles = [guard.attach(model_a), guard.attach(model_b)]
    try:
        cache_a = KVCache.init_cache(model_a.cfg, "cpu", 1)
        cache_b = KVCache.init_cache(model_b.cfg, "cpu", 1)
        a0 = _step(model_a, prompt_a, cache_a)
        b0 = _step(model_b, prompt_b, cache_b)
        a1 = _step(model_a, fox, cache_a)
        b1 = _step(model_b, fox, cache_b)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(a0, alone_a[0]) and torch.equal(a1, alone_a[1])
    assert torch.equal(b0, alone_b[0]) and torch.equal(b1, alone_b[1])
    with torch.no_grad():
        unguarded_a = run(model_a, prompt_a, True)
    assert not torch.allclose(a1, unguarded_a[1])  # A's fox was clamped: the test can fail
    assert copy.copy(dsg.attached_hooks(model_a)) == [] and dsg.attached_hooks(model_b) == []


def test_first_decoded_token_is_judged_with_its_prompt(tiny_tokenizer):
    """KV-cached decoding at a layer-0 hook: the first generated token continues the prompt's gate state (it is
    not judged alone), exactly as without the cache."""
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    guard = dsg.DynamicSAEGuardrail(sae, [5], dsg.PaperGate(tau=0.5), clamp=20.0)
    fox = model.tokenizer.convert_tokens_to_ids("fox")
    with torch.no_grad():
        model.b_U[fox] = 1e4  # always generates "fox"; rho of the prompt + 1 fox = 1/6 < tau
    prompt = model.to_tokens("w1 w2 w3 w4 w5")
    expected = model.generate(prompt, max_new_tokens=2, do_sample=False, verbose=False, use_past_kv_cache=False)
    with guard.attached(model):
        for use_cache in (True, False):
            got = model.generate(prompt, max_new_tokens=2, do_sample=False, verbose=False, use_past_kv_cache=use_cache)
            assert torch.equal(got, expected), use_cache
    seen = []
    with guard.attached(model), dsg.scoped_hooks(model, dsg.HookSpec("blocks.0.hook_resid_pre",
                                                              lambda a, hook: seen.append(a.clone()))):
        model.generate(prompt, max_new_tokens=3, do_sample=False, verbose=False)
    assert all(torch.equal(a, model.embed(b)) for a, b in zip(seen[1:], [torch.tensor([[fox]])] * 2))
