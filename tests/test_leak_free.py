"""Leak-free evaluation (issue 13): context once + candidates as KV continuations (equal to one full pass per
sequence, with and without a causal guardrail), a candidate's own forget tokens never reach the positions that
predict it under a causal gate (they do under the paper's gate), the PMI reference is computed without the
guardrail and once per model, and the gate's firing rates per question shape."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import FORGET_WORDS, WORDS, _llama_cfg, make_model, planted_setup, texts
from tiny_bridge import make_llama_pair
from tiny_mcq import word_mcqs
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import dsg_lens as dsg
from dsg_lens.data import MCQ
from dsg_lens.eval import mcq
from dsg_lens.eval.batching import supports_kv_cache
from dsg_lens.eval.gate_stats import gate_rates_by_shape, question_inputs
from dsg_lens.eval.mcq import continuation_log_probs, reference_log_probs, score_mcq
from dsg_lens.hooks import HookSpec, scoped_hooks
from dsg_lens.real_tokens import RealTokenRule

ATOL = 1e-4

# contexts of several token lengths, one shared by several candidates, candidates of 1-3 tokens with and
# without forget words; "cat dog fox w1" trips every gate below on its own
PAIRS = [(ctx, cand) for ctx in ("w1 w2 w3", "cat dog fox w1", "w5 w6 w7 w8 w9 w10 cat", "w3 w4 w5")
         for cand in (" w1 w2", " cat w3", " fox", " w4 dog fox", " w9")] + [("w2", " cat dog"), ("w2", " w3")]


def _model(kind: str, tokenizer) -> HookedTransformer:
    model = make_model(kind, tokenizer)
    planted_setup(model)  # forget words share embedding direction 0 (what the planted SAE reads)
    return model


def _guard(model, gate):
    sae, _ = planted_setup(model)
    return dsg.DynamicSAEGuardrail(sae, [5], gate, clamp=20.0)


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    same = (x.shape == y.shape and torch.allclose(x, y, atol=ATOL, rtol=0) for x, y in zip(a, b))
    return len(a) == len(b) and all(same)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_kv_continuations_equal_full_passes_without_hooks(tiny_tokenizer, kind, batch_size):
    model = _model(kind, tiny_tokenizer)
    assert supports_kv_cache(model)
    full = continuation_log_probs(model, PAIRS, use_kv_cache=False, batch_size=batch_size)
    cached = continuation_log_probs(model, PAIRS, use_kv_cache=True, batch_size=batch_size)
    assert _close(cached, full)
    # and both equal one sequence at a time, by hand
    for (context, cand), got in zip(PAIRS, cached):
        ctx, cont = model.to_tokens(context)[0], model.to_tokens(cand, prepend_bos=False)[0]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.cat([ctx, cont])[None])[0], dim=-1)
        expected = log_probs[len(ctx) - 1 : -1].gather(1, cont[:, None])[:, 0]
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("gate", [dsg.PrefixGate(tau=0.2, min_tokens=4),
                                  dsg.WindowGate(tau=0.2, window=4, min_tokens=4)], ids=["prefix", "window"])
def test_kv_continuations_equal_full_passes_under_a_causal_guardrail(tiny_tokenizer, kind, gate):
    model = _model(kind, tiny_tokenizer)
    guard = _guard(model, gate)
    unguarded = continuation_log_probs(model, PAIRS, batch_size=3)
    with guard.attached(model):
        full = continuation_log_probs(model, PAIRS, use_kv_cache=False, batch_size=3)
        cached = continuation_log_probs(model, PAIRS, use_kv_cache=True, batch_size=3)
    assert _close(cached, full)
    assert not _close(full, unguarded)  # the guardrail acted on these pairs: the comparison can fail


def test_one_token_contexts_of_a_model_without_bos(tiny_tokenizer):
    """No BOS and a one-token context: nothing to cache, the continuation starts a fresh sequence."""
    model = _model("llama", tiny_tokenizer)
    model.cfg.default_prepend_bos = False
    pairs = [("w1", " w2 w3"), ("w1", " cat"), ("cat", " dog fox w1 w2"), ("w4 w5", " w6")]
    guard = _guard(model, dsg.PrefixGate(tau=0.2, min_tokens=1))
    for attached in (False, True):
        with guard.attached(model) if attached else contextlib.nullcontext():
            full = continuation_log_probs(model, pairs, use_kv_cache=False)
            cached = continuation_log_probs(model, pairs, use_kv_cache=True, batch_size=2)
        assert _close(cached, full)


def _cloze_questions() -> list[MCQ]:
    """Forget and retain cloze questions with multi-token candidates (forget words inside some), 3 or 5 choices,
    contexts of several lengths, two questions sharing a context."""
    out = []
    contexts = ["cat dog w1 fox w2", "w1 w2 w3 w4", "w7 w8 cat w9 dog fox w10", "w1 w2 w3 w4", "w11"]
    for i, context in enumerate(contexts):
        n = 5 if i % 2 else 3
        cands = tuple(f" w{10 + k}" + (" cat" if k == 1 else "") + (" dog fox" if k == 2 else "") for k in range(n))
        out.append(MCQ(f"c{i}", context, tuple(c.strip() for c in cands), i % n, subject="s", context=context,
                       candidates=cands, neutral_context="w0 cat" if i % 2 else "w0"))
    return out + word_mcqs(5, 4, forget=True) + word_mcqs(6, 4, forget=False)


@pytest.mark.parametrize("score", ["sum", "pmi", "norm"])
def test_score_mcq_equals_per_sequence_scoring_under_a_causal_guardrail(tiny_tokenizer, monkeypatch, score):
    model = _model("llama", tiny_tokenizer)
    guard = _guard(model, dsg.WindowGate(tau=0.2, window=6, min_tokens=4))
    questions = _cloze_questions()
    with guard.attached(model):
        cached = score_mcq(model, questions, "completion", completion_score=score, batch_size=3, progress=False)
        with monkeypatch.context() as patch:
            patch.setattr(mcq, "supports_kv_cache", lambda model: False)
            mcq.clear_reference_cache(model)
            full = score_mcq(model, questions, "completion", completion_score=score, batch_size=4, progress=False)
    for a, b in zip(cached.records, full.records):
        assert a.scores == pytest.approx(b.scores, abs=ATOL)
    # by hand for the summed log-probs: one full pass per (context, candidate), the guardrail attached
    if score == "sum":
        with guard.attached(model):
            for q, record in zip(questions, cached.records):
                context, cands, _ = q.cloze()
                expected = [float(lp.sum()) for lp in continuation_log_probs(
                    model, [(context, c) for c in cands], use_kv_cache=False, batch_size=1)]
                assert record.scores == pytest.approx(expected, abs=ATOL)


def test_bridge_scores_by_full_passes_like_the_hooked_transformer(tiny_tokenizer, tmp_path):
    hooked, bridge = make_llama_pair(tiny_tokenizer, tmp_path, plant_forget_direction=True)
    sae, _ = planted_setup(hooked)
    assert supports_kv_cache(hooked) and not supports_kv_cache(bridge)
    guard = dsg.DynamicSAEGuardrail(sae, [5], dsg.WindowGate(tau=0.2, window=6, min_tokens=4), clamp=20.0)
    questions = _cloze_questions()
    results = []
    for model in (hooked, bridge):
        with guard.attached(model):
            results.append(score_mcq(model, questions, "completion", batch_size=4, progress=False))
    for a, b in zip(*[r.records for r in results]):
        assert a.scores == pytest.approx(b.scores, abs=ATOL)


# ------------------------------------------------------------------------------------------------- the leak
LEAK_CONTEXT = "w1 w2 w3 w4 w5 w6 cat w7"  # one forget word: 1/8 of the real tokens, below tau = 0.15
LEAK_CANDIDATES = (" w1 w2", " cat w3", " w4 w5", " w6")


@pytest.mark.parametrize("gate", [dsg.PrefixGate(tau=0.15, min_tokens=4),
                                  dsg.WindowGate(tau=0.15, window=8, min_tokens=4)], ids=["prefix", "window"])
def test_a_candidates_forget_token_does_not_reach_its_first_token_under_a_causal_gate(tiny_tokenizer, gate):
    """The guardrail edits fired tokens only, so a first candidate token could change only through the context's
    forget word, which the gate must leave alone: the context alone keeps the gate off."""
    model = _model("llama", tiny_tokenizer)
    guard = _guard(model, gate)
    pairs = [(LEAK_CONTEXT, cand) for cand in LEAK_CANDIDATES]
    assert not guard.is_forget(model, [LEAK_CONTEXT]).any()
    assert guard.is_forget(model, [LEAK_CONTEXT + LEAK_CANDIDATES[1]]).all()  # the candidate trips the gate...
    for use_kv_cache in (True, False):
        unguarded = continuation_log_probs(model, pairs, use_kv_cache=use_kv_cache)
        with guard.attached(model):
            guarded = continuation_log_probs(model, pairs, use_kv_cache=use_kv_cache)
        for before, after in zip(unguarded, guarded):
            torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)  # ... but not before its first token
        assert not torch.allclose(guarded[1][1], unguarded[1][1])  # w3 after the tripping cat is edited (causal)


def test_the_paper_gate_leaks_a_candidates_forget_token_into_its_first_token(tiny_tokenizer):
    """The paper's per-sequence rho (non-causal): the candidate " cat w3" raises rho over tau for the whole
    sequence, the context's own forget word is clamped, the prediction of "cat" itself changes. This is why
    continuations must not be scored under PaperGate (and why pass shapes then disagree)."""
    model = _model("llama", tiny_tokenizer)
    guard = _guard(model, dsg.PaperGate(tau=0.15))
    pairs = [(LEAK_CONTEXT, cand) for cand in LEAK_CANDIDATES]
    assert not guard.is_forget(model, [LEAK_CONTEXT]).any()
    unguarded = continuation_log_probs(model, pairs, use_kv_cache=False)
    with guard.attached(model):
        full = continuation_log_probs(model, pairs, use_kv_cache=False)
        cached = continuation_log_probs(model, pairs, use_kv_cache=True)
    assert not torch.allclose(full[1][0], unguarded[1][0], atol=ATOL)  # the leak
    for k in (0, 2, 3):  # candidates without a forget word keep rho below tau: untouched
        torch.testing.assert_close(full[k], unguarded[k], atol=0, rtol=0)
    assert not _close(full, cached)  # a non-causal gate makes the score depend on how the passes are cut


# --------------------------------------------------------------------------------------- the PMI reference
REFERENCE_PAIRS = [("cat dog fox w1", cand) for cand in (" cat w3", " w1 w2", " fox")] + [("w0", " dog w5")]


def test_pmi_reference_is_computed_without_the_guardrail(tiny_tokenizer):
    model = _model("llama", tiny_tokenizer)
    guard = _guard(model, dsg.PrefixGate(tau=0.2, min_tokens=4))
    mcq.clear_reference_cache(model)
    with guard.attached(model):
        guarded_reference = reference_log_probs(model, REFERENCE_PAIRS)
        guarded_sums = [float(lp.sum()) for lp in continuation_log_probs(model, REFERENCE_PAIRS)]
    mcq.clear_reference_cache(model)
    unguarded_reference = reference_log_probs(model, REFERENCE_PAIRS)
    unguarded_sums = [float(lp.sum()) for lp in continuation_log_probs(model, REFERENCE_PAIRS)]
    assert guarded_reference == pytest.approx(unguarded_reference, abs=1e-6)
    assert unguarded_reference == pytest.approx(unguarded_sums, abs=ATOL)
    assert guarded_sums != pytest.approx(unguarded_sums, abs=ATOL)  # the guardrail would have changed them
    # so under a guardrail: pmi = guarded sum - unguarded reference
    q = MCQ("q", "cat dog fox w1", ("cat w3", "w1 w2", "fox"), 0, context="cat dog fox w1",
            candidates=(" cat w3", " w1 w2", " fox"), neutral_context="cat dog fox w1")
    with guard.attached(model):
        pmi = score_mcq(model, [q], "completion", completion_score="pmi", progress=False).records[0].scores
        total = score_mcq(model, [q], "completion", completion_score="sum", progress=False).records[0].scores
    assert pmi == pytest.approx([t - r for t, r in zip(total, unguarded_reference[:3])], abs=ATOL)


def test_pmi_reference_is_computed_once_per_model_and_weights(tiny_tokenizer, monkeypatch):
    model = _model("llama", tiny_tokenizer)
    mcq.clear_reference_cache(model)
    questions = _cloze_questions()
    neutral_pairs = {(q.cloze()[2], c) for q in questions for c in q.cloze()[1]}
    seen: list[tuple[str, str]] = []
    real = mcq.continuation_log_probs

    def counting(model, pairs, **kwargs):
        seen.extend(p for p in pairs if kwargs.get("desc") == "PMI reference (no guardrail)")
        return real(model, pairs, **kwargs)

    monkeypatch.setattr(mcq, "continuation_log_probs", counting)
    sae, _ = planted_setup(model)  # (re-planting writes the weights in place: a new reference, rightly)
    results = []
    for tau in (0.1, 0.2, 0.3):  # a sweep of guardrail configurations
        guard = dsg.DynamicSAEGuardrail(sae, [5], dsg.WindowGate(tau=tau, window=6, min_tokens=4), clamp=20.0)
        with guard.attached(model):
            results.append(score_mcq(model, questions, "completion", progress=False))
    assert sorted(seen) == sorted(neutral_pairs)  # every reference pair once, for the whole sweep
    seen.clear()
    with torch.no_grad():
        model.unembed.b_U[-1] += 1.0  # an in-place edit far from the first values of the parameter
    score_mcq(model, questions, "completion", progress=False)
    assert sorted(seen) == sorted(neutral_pairs)  # new weights, new reference
    seen.clear()
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda act, hook: act * 0.5)]):  # not dsg-lens's
        score_mcq(model, questions, "completion", progress=False)
        score_mcq(model, questions, "completion", progress=False)
    assert len(seen) == 2 * len(neutral_pairs)  # cannot be suspended: computed each time, never cached
    seen.clear()
    score_mcq(model, questions, "completion", progress=False)
    assert seen == []  # the cache was not poisoned by the foreign hook


def test_letter_protocols_read_only_the_answer_position(tiny_tokenizer, monkeypatch):
    model = _model("llama", tiny_tokenizer)
    spans_seen = []
    real = mcq._forward_log_probs

    def recording(model, sequences, spans, *args):
        spans_seen.extend(zip(sequences, spans))
        return real(model, sequences, spans, *args)

    monkeypatch.setattr(mcq, "_letter_ids", lambda model, n, spaced: list(range(3, 3 + n)))
    monkeypatch.setattr(mcq, "_forward_log_probs", recording)
    score_mcq(model, word_mcqs(1, 3, forget=True), "lm_eval", progress=False)
    assert spans_seen and all(span == (len(seq) - 1, len(seq)) for seq, span in spans_seen)


def test_hooks_that_are_not_a_guardrail_still_change_the_scores(tiny_tokenizer):
    model = _model("llama", tiny_tokenizer)
    questions = _cloze_questions()
    base = score_mcq(model, questions, "completion", progress=False)
    with scoped_hooks(model, HookSpec("blocks.1.hook_resid_pre", lambda act, hook: act * 0)):
        hooked = score_mcq(model, questions, "completion", progress=False)
    assert base.records != hooked.records


# ------------------------------------------------------------------------------- gate rates by question shape
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\ncat dog fox cat<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chat_model(folder, template: str, pad_token: str = "<pad>") -> HookedTransformer:
    """The llama of conftest with a ChatML tokenizer (markers are special tokens, "\\n" a token of its own) whose
    default system prompt is made of forget words."""
    specials = ["<bos>", "<eos>", "<pad>", "<|im_start|>", "<|im_end|>"]
    sentinels = ["QQSYSQQ", "QQUSRQQ", "QQASTQQ"]  # the real-token rule renders the template with these words
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + ["system", "user", "assistant", "\n"] + sentinels)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"),
                                                 pre_tokenizers.Split(Regex("\n"), "isolated")])
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token=pad_token,
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = template
    fast.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    cfg = _llama_cfg()
    cfg.d_vocab = cfg.d_vocab_out = len(vocab)
    model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
    return model


@pytest.fixture(scope="module")
def shape_questions():
    return word_mcqs(21, 6, forget=True), word_mcqs(22, 8, forget=False)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return _chat_model(tmp_path_factory.mktemp("chatml"), CHAT_TEMPLATE)


def test_question_inputs_by_shape(chat_model, shape_questions):
    forget_q, _ = shape_questions
    q = forget_q[0]
    assert question_inputs(chat_model, [q], "cloze") == [q.cloze()[0]]
    assert question_inputs(chat_model, [q], "plain") == [q.question]
    assert question_inputs(chat_model, [q], "chat") == [
        f"<|im_start|>system\ncat dog fox cat<|im_end|>\n<|im_start|>user\n{q.question}<|im_end|>\n"
        "<|im_start|>assistant\n"]
    assert question_inputs(chat_model, [q], "chat_no_system") == [
        f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{q.question}<|im_end|>\n<|im_start|>assistant\n"]
    with pytest.raises(ValueError, match="unknown question shape"):
        question_inputs(chat_model, [q], "turns")


def test_chat_shapes_need_a_chat_template(tiny_tokenizer, shape_questions, tmp_path):
    model = make_model("llama", tiny_tokenizer)
    for shape in ("chat", "chat_no_system"):
        with pytest.raises(ValueError, match="chat template.*'cloze' or 'plain'"):
            question_inputs(model, shape_questions[0], shape)
    no_system = _chat_model(tmp_path, NO_SYSTEM_TEMPLATE)
    with pytest.raises(ValueError, match="refuses a system turn"):
        question_inputs(no_system, shape_questions[0], "chat_no_system")
    assert len(question_inputs(no_system, shape_questions[0], "chat")) == len(shape_questions[0])


def test_gate_rates_by_shape_on_the_tiny_model(tiny_tokenizer, shape_questions):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    forget_q, retain_q = shape_questions
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], texts(31, 12, False), gate=dsg.WindowGate(min_tokens=4),
                                        p_dyn=100, clamp=20.0, progress=False)
    rates = gate_rates_by_shape(guard, model, forget_q, retain_q, shapes=("cloze", "plain"))
    assert set(rates) == {"cloze", "plain"}
    for shape, r in rates.items():
        assert r == {"tpr": 1.0, "fpr": 0.0, "n_forget": len(forget_q), "n_retain": len(retain_q)}, shape
        expected = guard.is_forget(model, question_inputs(model, retain_q, shape)).float().mean()
        assert r["fpr"] == float(expected)
    with pytest.raises(ValueError, match="chat template"):
        gate_rates_by_shape(guard, model, forget_q, retain_q, shapes=("chat",))


def test_gate_rates_by_shape_in_chat_turns(chat_model, shape_questions):
    """The default system prompt is all forget words, but it is the deployer's scaffolding (not real tokens):
    retain questions in a chat turn stay below a gate calibrated on plain retain text, with or without it."""
    sae, _ = planted_setup(chat_model)
    forget_q, retain_q = shape_questions
    assert RealTokenRule.for_model(chat_model).scaffold is not None  # the template's markers were understood
    guard = dsg.DynamicSAEGuardrail.fit(chat_model, sae, [5], texts(31, 12, False),
                                        gate=dsg.WindowGate(min_tokens=4), p_dyn=100, clamp=20.0, progress=False)
    rates = gate_rates_by_shape(guard, chat_model, forget_q, retain_q)
    assert list(rates) == ["cloze", "plain", "chat", "chat_no_system"]
    for shape in ("chat", "chat_no_system"):
        assert rates[shape]["tpr"] == 1.0 and rates[shape]["fpr"] == 0.0, shape
    assert set(FORGET_WORDS) <= set(question_inputs(chat_model, retain_q[:1], "chat")[0].split())


def test_holes_after_short_contexts_are_invisible_to_the_guardrail(tmp_path, monkeypatch):
    """SmolLM2's shape: no BOS, and the pad token is the chat turn end. A hole after a short context inside a
    system turn must not close that turn for the real-token rule (the continuation would become real), so another
    special token fills it; where none can (a one-token context: a present filler would become the sequence's
    first token), contexts of one length run together. Either way KV scoring equals full passes, guarded too."""
    model = _chat_model(tmp_path, CHAT_TEMPLATE, pad_token="<|im_end|>")
    model.cfg.default_prepend_bos = False
    pad = model.tokenizer.pad_token_id
    assert pad == model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    contexts = [*question_inputs(model, word_mcqs(3, 2, forget=False), "chat"), "<|im_start|>system\nw1 w2 cat",
                "w1 w2 w3", "w5 cat w6 w7 w8 w9"]
    # enough real forget words in a candidate to switch the gate on where its tokens (wrongly) count
    pairs = [(ctx, cand) for ctx in contexts for cand in (" cat w3", " w1 w2", " cat dog fox cat w3")]
    with_one_token = pairs + [("cat", " dog fox cat w1"), ("cat", " w5")]  # "cat" is the first token: not real

    def rows_of(pairs):
        tokenized = [(tuple(mcq._ids(model, c, False)), tuple(mcq._ids(model, x, False))) for c, x in pairs]
        contexts = dict.fromkeys(c for c, _ in tokenized)
        return [(ctx, [k for k, (c, _) in enumerate(tokenized) if c == ctx]) for ctx in contexts], tokenized

    assert mcq._hole_filler(model, *rows_of(pairs)) not in (pad, None)  # the pad would close the system turn
    assert mcq._hole_filler(model, *rows_of(with_one_token)) is None
    sae, _ = planted_setup(model)
    guard = dsg.DynamicSAEGuardrail(sae, [5], dsg.WindowGate(tau=0.2, window=6, min_tokens=4), clamp=20.0)
    for case in (pairs, with_one_token):
        results = []
        for attached in (False, True):
            with guard.attached(model) if attached else contextlib.nullcontext():
                full = continuation_log_probs(model, case, use_kv_cache=False)
                cached = continuation_log_probs(model, case, use_kv_cache=True, batch_size=16)
            assert _close(cached, full), attached
            results.append(full)
        assert not _close(*results)  # the guardrail acted on these pairs: the comparison can fail
    # and it would fail with the wrong filler: the pad ends the system turn, a BOS before "cat" makes it real
    for case, wrong in ((pairs, pad), (with_one_token, model.tokenizer.bos_token_id)):
        with guard.attached(model):
            full = continuation_log_probs(model, case, use_kv_cache=False)
            with monkeypatch.context() as patch:
                patch.setattr(mcq, "_hole_filler", lambda *args: wrong)
                assert not _close(continuation_log_probs(model, case, use_kv_cache=True, batch_size=16), full)
