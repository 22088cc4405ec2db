"""The question sweep re-scores only the questions a configuration's guardrail clamps, and equals the naive sweep
(every question re-scored under every configuration) row for row."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, planted_setup, texts
from tiny_mcq import NEUTRAL, word_mcqs

import dsg_lens as dsg
import dsg_lens.eval.sweep as sweep_module
import dsg_lens.pipeline as pipeline
from dsg_lens.data.loaders import MCQ
from dsg_lens.eval import mcq
from dsg_lens.eval.sweep import question_metrics, run_question_sweep, run_sweep
from dsg_lens.selection import select_features

GRID = dict(n_values=[1, 2], p_dyn_values=[50.0, 95.0], clamp_values=[5.0, 300.0])
FAST_ONLY = ("n_tripped", "n_rescored")


def _questions() -> tuple[list[MCQ], list[MCQ]]:
    """Forget questions whose contexts are full of forget words; questions whose forget words are only in the
    candidates, at the (unread) last token or at a read one; retain questions without any."""
    gen = torch.Generator().manual_seed(7)
    neutral = [" ".join(NEUTRAL[int(i)] for i in torch.randint(0, 44, (6,), generator=gen)) for _ in range(6)]
    last = [MCQ(f"last{i}", text, ("cat", "dog", "fox"), i % 3, context=text,
                candidates=(" cat", " dog", " fox"), neutral_context="w0") for i, text in enumerate(neutral[:3])]
    read = [MCQ(f"read{i}", text, ("cat", "w2", "dog"), i % 3, context=text,
                candidates=(" cat w1 w9", " w2 w3", " dog dog w4"), neutral_context="w0")
            for i, text in enumerate(neutral[3:])]
    return word_mcqs(30, 6, forget=True) + last + read, word_mcqs(31, 6, forget=False)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    forget = dsg.collect_latent_stats(model, sae, texts(20, 10, True), progress=False)
    retain = dsg.collect_latent_stats(model, sae, texts(21, 20, False), progress=False)
    return model, sae, forget, retain, texts(24, 20, False)


def _naive(model, sae, forget, retain, calibration, fq, rq, protocol, gate, monkeypatch):
    """run_sweep with evaluate_questions (the reference), and the per-question results each evaluation saw."""
    seen: list[mcq.MCQResult] = []
    real = pipeline.score_mcq
    monkeypatch.setattr(pipeline, "score_mcq", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])

    def evaluate(m):
        return pipeline.evaluate_questions(m, fq, rq, protocol, 4, progress=False)

    result = run_sweep(model, sae, forget, retain, calibration, evaluate, gate=gate, batch_size=4, progress=False,
                       **GRID)
    monkeypatch.setattr(pipeline, "score_mcq", real)
    assert len(seen) == 2 * (1 + len(result.rows))  # base, then every question under every configuration
    return result, [{"forget": f, "retain": r} for f, r in zip(seen[0::2], seen[1::2])]


def _assert_same_as_naive(fast, naive, naive_results):
    assert fast.base == naive.base
    assert fast.base == question_metrics(naive_results[0])  # the metrics schema of evaluate_questions
    assert len(fast.rows) == len(naive.rows) == 8
    for row, expected, results, expected_results in zip(fast.rows, naive.rows, fast.question_results,
                                                        naive_results[1:]):
        assert {k: v for k, v in row.items() if k not in FAST_ONLY} == expected  # accuracies, CIs, tau, parameters
        for side in ("forget", "retain"):
            for got, want in zip(results[side].records, expected_results[side].records):
                assert (got.id, got.prediction) == (want.id, want.prediction)
                torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(want.scores), atol=1e-5, rtol=0)
    base_predictions = [r.prediction for r in naive_results[0]["forget"].records]
    assert any([r.prediction for r in results["forget"].records] != base_predictions
               for results in fast.question_results)  # the guardrails change answers: the comparison can fail


def _guard(sae, forget, retain, row, gate):
    features = select_features(forget, retain, n=max(GRID["n_values"]), p_ratio=row["p_ratio"])
    return dsg.DynamicSAEGuardrail(sae, features.top(row["n"]), gate.with_tau(row["tau"]), clamp=row["clamp"])


def _clamped_by_hand(model, guard, questions, protocol) -> int:
    """Questions whose guarded logits differ from the unguarded ones at a position their scores read: each scored
    sequence cut after that position, one full pass with and without the guardrail (no scan involved)."""
    touched = set()
    with torch.no_grad():
        for seq in mcq.scored_sequences(model, questions, protocol):
            tokens = torch.tensor(seq.tokens[: seq.last_read + 1])[None]
            plain = model(tokens)
            with guard.attached(model):
                guarded = model(tokens)
            if not torch.equal(plain, guarded):
                touched.add(seq.question)
    return len(touched)


def test_scored_sequences_are_what_score_mcq_runs(setup, monkeypatch):
    model = setup[0]
    forget_q, _ = _questions()
    pairs_seen = []
    real = mcq._continuation_log_probs_cached
    monkeypatch.setattr(mcq, "_continuation_log_probs_cached",
                        lambda m, pairs, *a: pairs_seen.extend(pairs) or real(m, pairs, *a))
    mcq.score_mcq(model, forget_q, "completion", completion_score="sum", progress=False)
    listed = mcq.scored_sequences(model, forget_q, "completion")
    assert sorted(set(seq.tokens for seq in listed)) == sorted(set(ctx + cont for ctx, cont in pairs_seen))
    assert all(seq.last_read == len(seq.tokens) - 2 for seq in listed if seq.question < 6)  # one-token candidates
    assert {seq.question for seq in listed} == set(range(len(forget_q)))


def test_fast_sweep_equals_the_naive_sweep_and_rescores_only_clamped_questions(setup, monkeypatch):
    model, sae, forget, retain, calibration = setup
    forget_q, retain_q = _questions()
    gate = dsg.WindowGate(window=4, min_tokens=2)
    naive, naive_results = _naive(model, sae, forget, retain, calibration, forget_q, retain_q, "completion", gate,
                                  monkeypatch)
    rescored: list[int] = []
    real = sweep_module.score_mcq
    monkeypatch.setattr(sweep_module, "score_mcq",
                        lambda m, qs, *a, **k: rescored.append(len(qs)) or real(m, qs, *a, **k))
    fast = run_question_sweep(model, sae, forget, retain, calibration, forget_q, retain_q, "completion", gate=gate,
                              batch_size=4, progress=False, **GRID)
    _assert_same_as_naive(fast, naive, naive_results)

    total = len(forget_q) + len(retain_q)
    assert rescored[:2] == [len(forget_q), len(retain_q)]  # the base scores, once
    assert sum(rescored[2:]) == sum(row["n_rescored"] for row in fast.rows) < len(fast.rows) * total
    assert any(0 < row["n_tripped"] < total for row in fast.rows)  # some questions trip, some do not
    assert any(row["n_rescored"] < row["n_tripped"] for row in fast.rows)  # clamped alike: scored once
    for row in fast.rows:
        guard = _guard(sae, forget, retain, row, gate)
        by_hand = sum(_clamped_by_hand(model, guard, qs, "completion") for qs in (forget_q, retain_q))
        assert row["n_tripped"] == by_hand, row
    n1 = [row for row in fast.rows if row["n"] == 1]  # the planted latent: the contexts full of forget words trip,
    assert all(row["n_tripped"] == 6 + 3 for row in n1)  # and those with one in a read candidate; never "last"


def test_the_paper_gate_is_refused_for_completion_by_both_paths(setup, monkeypatch):
    """Completion scores under the non-causal PaperGate would be leaky: the fast sweep refuses it up front, and the
    naive sweep's evaluation (score_mcq) refuses it at the first guarded question."""
    model, sae, forget, retain, calibration = setup
    forget_q, retain_q = _questions()
    gate = dsg.PaperGate()
    with pytest.raises(ValueError, match="non-causal"):
        run_question_sweep(model, sae, forget, retain, calibration, forget_q, retain_q, "completion", gate=gate,
                           batch_size=4, progress=False, **GRID)
    with pytest.raises(ValueError, match="non-causal"):
        _naive(model, sae, forget, retain, calibration, forget_q, retain_q, "completion", gate, monkeypatch)


def test_the_paper_gate_under_a_letter_protocol_uses_whole_prompt_clamps(setup, monkeypatch):
    model, sae, forget, retain, calibration = setup
    monkeypatch.setattr(mcq, "_letter_ids", lambda model, n, spaced: list(range(3, 3 + n)))  # word-level vocab
    forget_q, retain_q = _questions()
    gate = dsg.PaperGate()
    naive, naive_results = _naive(model, sae, forget, retain, calibration, forget_q, retain_q, "lm_eval", gate,
                                  monkeypatch)
    fast = run_question_sweep(model, sae, forget, retain, calibration, forget_q, retain_q, "lm_eval", gate=gate,
                              batch_size=4, progress=False, **GRID)
    _assert_same_as_naive(fast, naive, naive_results)
    total = len(forget_q) + len(retain_q)
    assert any(row["n_tripped"] < total for row in fast.rows)
    for row in fast.rows:
        guard = _guard(sae, forget, retain, row, gate)
        by_hand = sum(_clamped_by_hand(model, guard, qs, "lm_eval") for qs in (forget_q, retain_q))
        assert row["n_tripped"] == by_hand, row
