"""The whole pipeline on a TransformerBridge (TransformerLens 4 has no HookedTransformer): statistics, selection,
calibration (pipeline.fit_guardrail), evaluation (pipeline.evaluate_questions, score_mcq), generation, the fast
sweep and the lm-eval model give on a Bridge what they give on a HookedTransformer with the same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import planted_setup, texts
from tiny_bridge import make_llama_pair
from tiny_mcq import word_mcqs

import dsg_lens as dsg
from dsg_lens.config import PipelineConfig
from dsg_lens.eval.mcq import score_mcq
from dsg_lens.pipeline import evaluate_questions, fit_guardrail

CFG = PipelineConfig(n=2, p_ratio=50.0, p_dyn=90.0, clamp=20.0, batch_size=4, gate="window", window=6,
                     min_tokens=2, calibration="corpus")
FORGET, RETAIN = texts(41, 10, True), texts(42, 10, False)
FORGET_Q, RETAIN_Q = word_mcqs(43, 8, forget=True), word_mcqs(44, 8, forget=False)


@pytest.fixture(scope="module")
def pair(tiny_tokenizer, tmp_path_factory):
    """(HookedTransformer, TransformerBridge, SAE): same weights; SAE latent 5 fires only on forget words."""
    hooked, bridge = make_llama_pair(tiny_tokenizer, tmp_path_factory.mktemp("bridge"), plant_forget_direction=True)
    sae, _ = planted_setup(hooked)
    return hooked, bridge, sae


@pytest.fixture(scope="module")
def fitted(pair):
    hooked, bridge, sae = pair
    return {name: fit_guardrail(model, sae, FORGET, RETAIN, CFG, progress=False)
            for name, model in (("hooked", hooked), ("bridge", bridge))}


def test_fit_is_the_same_on_the_bridge(fitted):
    hooked, bridge = fitted["hooked"], fitted["bridge"]
    assert bridge.features.ids == hooked.features.ids and 5 in bridge.features.ids
    assert bridge.guard.gate.tau == hooked.guard.gate.tau
    for side in ("forget", "retain"):
        torch.testing.assert_close(getattr(bridge, side).mean_act, getattr(hooked, side).mean_act,
                                   rtol=1e-4, atol=1e-5)
    assert bridge.guard.resid_norm == pytest.approx(hooked.guard.resid_norm, rel=1e-5)


def test_evaluation_is_the_same_on_the_bridge(pair, fitted):
    hooked, bridge, _ = pair
    results = {}
    for name, model in (("hooked", hooked), ("bridge", bridge)):
        base = evaluate_questions(model, FORGET_Q, RETAIN_Q, "completion", 4, False)
        with fitted[name].guard.attached(model):
            guarded = evaluate_questions(model, FORGET_Q, RETAIN_Q, "completion", 4, False)
            scores = score_mcq(model, FORGET_Q, "completion", progress=False)
        results[name] = (base, guarded, scores)
    (base_h, guarded_h, scores_h), (base_b, guarded_b, scores_b) = results["hooked"], results["bridge"]
    assert base_b == base_h and guarded_b == guarded_h  # accuracies and intervals
    assert guarded_h != base_h  # the guardrail does something here
    for record_b, record_h in zip(scores_b.records, scores_h.records):  # Bridge: full passes; HT: KV cache
        assert record_b.scores == pytest.approx(record_h.scores, abs=1e-4)


def test_generation_is_the_same_on_the_bridge(pair, fitted):
    hooked, bridge, _ = pair
    prompt = hooked.to_tokens("w3 cat dog w4 fox cat")
    outputs = {}
    for name, model in (("hooked", hooked), ("bridge", bridge)):
        with fitted[name].guard.attached(model):
            outputs[name] = model.generate(prompt, max_new_tokens=5, do_sample=False, use_past_kv_cache=False,
                                           verbose=False)
    assert torch.equal(outputs["bridge"], outputs["hooked"])


def test_fast_sweep_is_the_same_on_the_bridge(pair, fitted):
    hooked, bridge, sae = pair
    rows = {}
    for name, model in (("hooked", hooked), ("bridge", bridge)):
        fit = fitted[name]
        result = dsg.run_question_sweep(model, sae, fit.forget, fit.retain, RETAIN, FORGET_Q, RETAIN_Q, "completion",
                                        n_values=[1, 2], clamp_values=[20.0], p_ratio_values=[50.0],
                                        p_dyn_values=[80.0, 95.0], gate=CFG.make_gate(), batch_size=4,
                                        progress=False)
        rows[name] = [{k: v for k, v in row.items() if not k.endswith("_s")} for row in result.rows]
    assert rows["bridge"] == rows["hooked"] and len(rows["hooked"]) == 4


def test_lm_eval_model_is_the_same_on_the_bridge(pair, fitted):
    pytest.importorskip("lm_eval", reason='lm-eval is an optional extra: pip install "dsg-lens[lm-eval]"')
    from lm_eval.api.instance import Instance

    from dsg_lens.lm_eval_model import DSGLM

    hooked, bridge, _ = pair
    requests = [Instance("loglikelihood", {}, (q.context, c), 0) for q in FORGET_Q[:4] for c in q.candidates]
    generate = [Instance("generate_until", {}, ("w3 cat dog w4 fox", {"until": ["w9"], "max_gen_toks": 4}), 0)]
    got = {}
    for name, model in (("hooked", hooked), ("bridge", bridge)):
        lm = DSGLM(model=model, guardrail=fitted[name].guard, batch_size=3, progress=False)
        got[name] = (lm.loglikelihood(requests), lm.generate_until(generate))
    (ll_h, gen_h), (ll_b, gen_b) = got["hooked"], got["bridge"]
    assert [g for _, g in ll_b] == [g for _, g in ll_h] and gen_b == gen_h
    assert [v for v, _ in ll_b] == pytest.approx([v for v, _ in ll_h], abs=1e-4)
