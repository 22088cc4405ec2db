"""Multiple-choice scoring: rigged models with hand-computable answers, batching, base-correct filtering, cache."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dsg_lens.data import MCQ
from dsg_lens.eval import mcq
from dsg_lens.eval.mcq import base_correct_ids, filter_base_correct, score_mcq, wilson_interval
from dsg_lens.hooks import HookSpec, scoped_hooks

SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>"]
VOCAB = SPECIALS + list("ABCD") + [".", ":", "(", "?"] + ["Answer", "is", "called", "It", "a", "an"] + [
    "cat", "dog", "fox", "owl", "big", "small", "furry", "animal", "pet", "wild"]
CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<bos>{% endif %}")
ANIMALS = ["cat", "dog", "fox", "owl"]


def _make_tokenizer(folder, chat_template: str | None):
    """A whitespace/punctuation word-level tokenizer, saved to ``folder`` (TransformerLens reloads it by path)."""
    raw = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _make_tokenizer(tmp_path_factory.mktemp("mcq_tok"), CHAT_TEMPLATE)


def _model(tokenizer, normalization="RMS", seed=0) -> HookedTransformer:
    rotary = dict(positional_embedding_type="rotary", rotary_dim=4) if normalization == "RMS" else {}
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_mlp=32,
                                  d_vocab=len(VOCAB), act_fn="gelu", normalization_type=normalization,
                                  device="cpu", seed=seed, default_prepend_bos=True, **rotary)
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def _rig(model: HookedTransformer, token: str, bias: float = 40.0) -> HookedTransformer:
    """Make ``token`` the overwhelming next-token prediction everywhere."""
    with torch.no_grad():
        model.unembed.b_U[model.tokenizer.convert_tokens_to_ids(token)] += bias
    return model


ANSWERS = [0, 1, 2, 3, 1, 3, 2, 0]  # answer letters A B C D B D C A; answer words cat fox cat fox dog cat cat owl


def _questions(n: int = 8, varied: bool = True) -> list[MCQ]:
    """Questions with contexts of 3 lengths; ``varied``: candidates of 2 or 3 tokens, else all " a <word>"."""
    out = []
    for i in range(n):
        choices = tuple(ANIMALS[(i + k) % 4] for k in range(4))
        answer = ANSWERS[i % 8]
        out.append(MCQ(f"q{i}", "which big furry animal is a pet ?" if i % 2 else "which animal ?", choices, answer,
                       subject="even" if i % 2 == 0 else "odd",
                       context="a small wild animal is called" if i % 3 else "It is a big pet called",
                       candidates=tuple(f" an {c} pet" if varied and k % 2 else f" a {c}" for k, c in enumerate(choices)),
                       neutral_context="It is called"))
    return out


@pytest.mark.parametrize("protocol", ["chat", "lm_eval"])
def test_letter_protocols_follow_a_rigged_letter(tokenizer, protocol):
    model = _rig(_model(tokenizer), "C")
    questions = _questions(8)
    result = score_mcq(model, questions, protocol, progress=False, batch_size=3)
    assert [r.prediction for r in result.records] == [2] * 8
    assert result.accuracy == sum(q.answer == 2 for q in questions) / 8 == 0.25
    assert [r.correct for r in result.records] == [q.answer == 2 for q in questions]
    # a letter that always wins is never right under all 24 orderings
    assert base_correct_ids(model, questions, protocol, progress=False, use_cache=False) == []


def test_chat_protocol_needs_a_chat_template(tmp_path):
    model = _model(_make_tokenizer(tmp_path, None))
    with pytest.raises(ValueError, match="chat template.*lm_eval"):
        score_mcq(model, _questions(1), "chat", progress=False)


def _sum_log_prob(model, context: str, continuation: str) -> float:
    """log p(continuation | context), one sequence at a time, by hand."""
    ctx = model.to_tokens(context)[0]
    cont = model.to_tokens(continuation, prepend_bos=False)[0]
    with torch.no_grad():
        logits = model(torch.cat([ctx, cont])[None])[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(log_probs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont.tolist()))


@pytest.mark.parametrize("normalization", ["RMS", "LN"])
@pytest.mark.parametrize("score", ["sum", "norm", "pmi"])
def test_completion_scores_match_one_at_a_time_by_hand(tokenizer, normalization, score):
    model = _model(tokenizer, normalization)
    questions = _questions(6)
    batched = score_mcq(model, questions, "completion", completion_score=score, batch_size=5, progress=False)
    for q, record in zip(questions, batched.records):
        context, candidates, neutral = q.cloze()
        expected = []
        for cand in candidates:
            value = _sum_log_prob(model, context, cand)
            if score == "pmi":
                value -= _sum_log_prob(model, neutral, cand)
            elif score == "norm":
                value /= len(cand.encode())
            expected.append(value)
        assert record.scores == pytest.approx(expected, abs=1e-5)
        assert record.prediction == max(range(4), key=expected.__getitem__)


@pytest.mark.parametrize("protocol", ["chat", "lm_eval"])
def test_letter_scores_do_not_depend_on_batching(tokenizer, protocol):
    model = _model(tokenizer, seed=3)
    questions = _questions(7)
    one = score_mcq(model, questions, protocol, batch_size=1, progress=False)
    many = score_mcq(model, questions, protocol, batch_size=4, progress=False)
    for a, b in zip(one.records, many.records):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_completion_follows_a_rigged_word_and_filters_by_margin(tokenizer, tmp_path):
    model = _rig(_model(tokenizer), "dog")
    questions = _questions(8, varied=False)
    result = score_mcq(model, questions, "completion", completion_score="sum", progress=False)
    assert [q.choices[r.prediction] for q, r in zip(questions, result.records)] == ["dog"] * 8
    kept = base_correct_ids(model, questions, "completion", completion_score="sum", progress=False,
                            cache_dir=tmp_path)
    assert kept == [q.id for q in questions if q.choices[q.answer] == "dog"]
    # an unreachable margin keeps nothing
    assert base_correct_ids(model, questions, "completion", completion_score="sum", margin=1e6, progress=False,
                            cache_dir=tmp_path) == []


def test_letter_base_correct_requires_all_orderings(tokenizer, monkeypatch):
    """A scorer that prefers "dog" wherever it is placed is right under all 24 orderings iff the answer is dog."""
    seen = []

    def fake_score(model, questions, protocol, **kwargs):
        seen.extend(questions)
        records = tuple(mcq.QuestionResult(q.id, q.subject, q.answer, q.choices.index("dog"),
                                           tuple(1.0 if c == "dog" else 0.0 for c in q.choices)) for q in questions)
        return mcq.MCQResult(protocol, records)

    monkeypatch.setattr(mcq, "score_mcq", fake_score)
    questions = _questions(8)
    kept = filter_base_correct(_model(tokenizer), questions, "chat", progress=False, use_cache=False)
    assert [q.id for q in kept] == [q.id for q in questions if q.choices[q.answer] == "dog"]
    assert len(seen) == 24 * 8
    assert {q.choices for q in seen if q.id == "q0"} == set(itertools.permutations(ANIMALS))


def test_base_correct_cache_is_keyed_by_data_and_honours_env(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DSG_LENS_CACHE", str(tmp_path))
    model = _rig(_model(tokenizer), "dog")
    questions = _questions(8, varied=False)
    kept = base_correct_ids(model, questions, "completion", completion_score="sum", progress=False)
    files = list((tmp_path / "base_correct").rglob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["kept_ids"] == kept

    def must_not_score(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(mcq, "score_mcq", must_not_score)
    assert base_correct_ids(model, questions, "completion", completion_score="sum", progress=False) == kept
    with pytest.raises(AssertionError, match="cache was not used"):  # other data -> other cache entry
        base_correct_ids(model, questions[:4], "completion", completion_score="sum", progress=False)


def test_base_correct_refuses_a_hooked_model(tokenizer):
    model = _model(tokenizer)
    with scoped_hooks(model, HookSpec("blocks.0.hook_resid_pre", lambda act, hook: act)):
        with pytest.raises(ValueError, match="hooks are attached"):
            base_correct_ids(model, _questions(2), progress=False, use_cache=False)


def test_scoring_sees_hooks_so_it_works_under_a_guardrail(tokenizer):
    model = _model(tokenizer)
    questions = _questions(4)
    base = score_mcq(model, questions, "completion", progress=False)
    with scoped_hooks(model, HookSpec("blocks.1.hook_resid_pre", lambda act, hook: act * 0)):
        hooked = score_mcq(model, questions, "completion", progress=False)
    assert base.records != hooked.records


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    z = 1.959964
    p, n = 0.5, 100
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(50, 100) == pytest.approx((0.5 - half, 0.5 + half))
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_result_summary_and_bad_input(tokenizer):
    model = _rig(_model(tokenizer), "C")
    result = score_mcq(model, _questions(8), "lm_eval", progress=False)
    summary = result.to_dict()
    assert summary["n"] == 8 and summary["by_subject"]["even"]["accuracy"] == 0.5
    assert summary["by_subject"]["odd"]["accuracy"] == 0.0
    assert json.loads(json.dumps(summary))["records"][0]["correct"] is False
    with pytest.raises(ValueError, match="unknown protocol"):
        score_mcq(model, _questions(1), "letters", progress=False)
    with pytest.raises(ValueError, match="no questions"):
        score_mcq(model, [], progress=False)


@pytest.mark.slow
def test_embedded_model_is_perfect_on_its_own_base_correct_set(tmp_path):
    from dsg_lens.data import load_embedded_benchmark
    from dsg_lens.models import load_model

    model = load_model("smollm2-135m-instruct", dtype=torch.float32)
    questions = load_embedded_benchmark("forget")[:24] + load_embedded_benchmark("retain")[:24]
    kept = filter_base_correct(model, questions, "completion", progress=False, cache_dir=tmp_path)
    assert len(kept) >= len(questions) // 2  # the model knows most common words
    result = score_mcq(model, kept, "completion", progress=False)
    assert result.accuracy == 1.0
    assert all(r.margin > mcq.DEFAULT_MARGIN["completion"] for r in result.records)
