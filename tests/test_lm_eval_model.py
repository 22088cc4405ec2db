"""The lm-eval model ``dsg`` (dsg_lens.lm_eval_model): a local task YAML gives the accuracy of score_mcq under
the same protocol, request by request; loglikelihoods equal one full forward pass; rolling loglikelihoods and
generation equal hand-computed references; non-causal gates are refused; the embedded model with lm-eval's MMLU
template equals score_mcq(protocol="lm_eval")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_model, planted_setup, texts
from distributed_worker import CLOZE_TASK, write_task
from tiny_mcq import word_mcqs

pytest.importorskip("lm_eval", reason='lm-eval is an optional extra: pip install "dsg-lens[lm-eval]"')

import lm_eval  # noqa: E402
from lm_eval import utils as lm_utils  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

import dsg_lens as dsg  # noqa: E402
from dsg_lens.eval.mcq import score_mcq  # noqa: E402
from dsg_lens.lm_eval_model import DSGLM  # noqa: E402

MMLU_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
"""
"""lm-eval's own MMLU / WMDP template (lm_eval/tasks/mmlu/default/_default_template_yaml), over local data."""


def evaluate(lm, task: str, manager) -> tuple[dict, list[dict]]:
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True,
                                  bootstrap_iters=0)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return out["results"][task], samples


@pytest.fixture(scope="module")
def planted(tiny_tokenizer):
    """A tiny Llama whose SAE latent 5 fires on forget words, and a guardrail with a causal gate on it."""
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], texts(11, 12, False), p_dyn=90, clamp=20.0,
                                        gate=dsg.WindowGate(window=6, min_tokens=2), progress=False)
    return model, sae, guard


QUESTIONS = word_mcqs(31, 10, forget=True) + word_mcqs(32, 8, forget=False)


@pytest.mark.parametrize("guarded", [False, True], ids=["base", "guarded"])
def test_local_task_equals_score_mcq(planted, tmp_path, guarded):
    model, _, guard = planted
    rows = [{"context": q.context, "choices": list(q.choices), "answer": q.answer} for q in QUESTIONS]
    manager = write_task(tmp_path, "dsg_tiny_cloze", CLOZE_TASK, rows)
    lm = DSGLM(model=model, guardrail=guard if guarded else None, batch_size=3, progress=False)
    results, samples = evaluate(lm, "dsg_tiny_cloze", manager)
    if guarded:
        with guard.attached(model):
            expected = score_mcq(model, QUESTIONS, "completion", completion_score="sum", batch_size=5,
                                 progress=False)
    else:
        expected = score_mcq(model, QUESTIONS, "completion", completion_score="sum", batch_size=5, progress=False)
    assert results["acc,none"] == expected.accuracy
    got = [[resp[0][0] for resp in sample["resps"]] for sample in samples]
    for row, record in zip(got, expected.records):
        assert row == pytest.approx(record.scores, abs=1e-4)  # each request = score_mcq's continuation sum
    norm = [max(range(3), key=lambda i: r.scores[i] / len(q.choices[i])) == q.answer
            for q, r in zip(QUESTIONS, expected.records)]
    assert results["acc_norm,none"] == pytest.approx(sum(norm) / len(norm))  # lm-eval: sum / len(choice)


def test_guardrail_changes_the_scores(planted):
    model, _, guard = planted
    requests = [Instance("loglikelihood", {}, (q.context, c), 0) for q in QUESTIONS[:4] for c in q.candidates]
    base = DSGLM(model=model, progress=False).loglikelihood(requests)
    guarded = DSGLM(model=model, guardrail=guard, progress=False).loglikelihood(requests)
    assert base != guarded  # forget questions are clamped ...
    assert dsg.attached_hooks(model) == []  # ... and nothing stays attached


def _one_pass(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """log p of the last ``n_cont`` tokens of ``ids`` and greedy-ness, from one plain forward pass."""
    tokens = torch.tensor([ids], device=model.cfg.device)
    with torch.no_grad():
        logits = model(tokens)[0].float()
    log_probs = torch.log_softmax(logits, -1)[len(ids) - n_cont - 1 : len(ids) - 1]
    target = tokens[0, len(ids) - n_cont :]
    return float(log_probs.gather(1, target[:, None]).sum()), bool((log_probs.argmax(-1) == target).all())


@pytest.mark.parametrize("guarded", [False, True], ids=["base", "guarded"])
def test_loglikelihood_equals_one_full_pass(planted, guarded):
    model, _, guard = planted
    pairs = [("w1 cat dog w2 fox", " w3 w4"), ("w5 w6", " cat"), ("", "w7 w8"), ("dog fox cat w9 ", "w10")]
    lm = DSGLM(model=model, guardrail=guard if guarded else None, batch_size=2, progress=False)
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, 0) for pair in pairs])
    tok = model.tokenizer

    def ids(words: str) -> list[int]:  # the word-level vocabulary, word by word
        return [tok.convert_tokens_to_ids(w) for w in words.split()]

    bos = [tok.bos_token_id]  # the tiny model prepends BOS (cfg.default_prepend_bos); an empty context is BOS
    encoded = [(bos + ids("w1 cat dog w2 fox"), ids("w3 w4")), (bos + ids("w5 w6"), ids("cat")),
               (bos, ids("w7 w8")), (bos + ids("dog fox cat w9"), ids("w10"))]  # trailing space moved
    assert [lm._encode_pair(*pair) for pair in pairs] == [(list(c), list(t)) for c, t in encoded]
    with guard.attached(model) if guarded else torch.no_grad():
        expected = [_one_pass(model, ctx + cont, len(cont)) for ctx, cont in encoded]
    assert [g for _, g in got] == [g for _, g in expected]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in expected], abs=1e-4)


def test_loglikelihood_rolling_equals_window_passes(planted):
    model, _, guard = planted
    text = " ".join(f"w{i % 40}" for i in range(23)) + " cat dog fox"
    lm = DSGLM(model=model, guardrail=guard, batch_size=2, max_length=8, progress=False)
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    tokens = model.to_tokens(text, prepend_bos=False)[0].tolist()
    windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
        tokens, prefix_token=model.tokenizer.bos_token_id, max_seq_len=8, context_len=1)]
    assert sum(len(cont) for _, cont in windows) == len(tokens) and len(windows) > 2
    with guard.attached(model):
        expected = sum(_one_pass(model, ctx + cont, len(cont))[0] for ctx, cont in windows)
    assert got == pytest.approx(expected, abs=1e-3)


def test_generate_until_equals_uncached_generation(planted):
    model, _, guard = planted
    prompt = "w1 cat dog fox w2 cat"
    lm = DSGLM(model=model, guardrail=guard, progress=False)
    (got,) = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["w7"], "max_gen_toks": 6}), 0)])
    tokens = model.to_tokens(prompt)
    with guard.attached(model):
        ids = model.generate(tokens, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False)
    expected = model.tokenizer.decode(ids[0, tokens.shape[1]:].tolist(), skip_special_tokens=True).split("w7")[0]
    assert got == expected
    unguarded = model.generate(tokens, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False)
    assert not torch.equal(ids, unguarded)  # the guardrail is what made this continuation


def test_non_causal_gate_is_refused(planted):
    model, sae, _ = planted
    paper = dsg.DynamicSAEGuardrail(sae, [5], dsg.PaperGate(tau=0.1), clamp=20.0)
    lm = DSGLM(model=model, guardrail=paper, progress=False)
    with pytest.raises(ValueError, match="non-causal"):
        lm.loglikelihood([Instance("loglikelihood", {}, ("w1 cat", " dog"), 0)])
    assert dsg.attached_hooks(model) == []


def test_registered_and_bad_arguments(planted, tmp_path):
    from lm_eval.api.registry import get_model

    model, _, _ = planted
    assert get_model("dsg") is DSGLM
    with pytest.raises(ValueError, match="no guardrail.json"):
        DSGLM(model=model, guardrail=str(tmp_path))
    with pytest.raises(ValueError, match="not options of the dsg model"):
        DSGLM(model=model, guardrails="x")


# ------------------------------------------------------------------ the embedded model, lm-eval's MMLU template
EMBEDDED_GUARD = Path(__file__).parents[1] / "figures" / "results" / "demo" / "guardrail"


def _embedded_rows(n: int):
    from dsg_lens.data.loaders import load_embedded_benchmark

    questions = load_embedded_benchmark("forget")[:n] + load_embedded_benchmark("retain")[:n]
    assert all(q.question == q.question.strip() for q in questions)  # MMLU's template strips: no-op here
    return questions, [{"question": q.question, "choices": list(q.choices), "answer": q.answer} for q in questions]


@pytest.mark.slow
def test_embedded_mmlu_template_equals_score_mcq_lm_eval_protocol(tmp_path):
    """`--model dsg --model_args model=...,sae=embedded,guardrail=...` by name, lm-eval's MMLU template over the
    embedded benchmark: the same accuracy (and predictions) as score_mcq(protocol="lm_eval"), base and guarded."""
    from dsg_lens.models import load_embedded_sae

    questions, rows = _embedded_rows(12)
    manager = write_task(tmp_path, "dsg_embedded_mmlu", MMLU_TASK, rows)
    guarded_lm = lm_eval.api.registry.get_model("dsg").create_from_arg_string(
        f"model=smollm2-135m-instruct,sae=embedded,guardrail={EMBEDDED_GUARD},batch_size=8,progress=False")
    model = guarded_lm.model
    guard = dsg.DynamicSAEGuardrail.load(EMBEDDED_GUARD, sae=load_embedded_sae())
    for lm, attached in ((DSGLM(model=model, progress=False), False), (guarded_lm, True)):
        results, samples = evaluate(lm, "dsg_embedded_mmlu", manager)
        with guard.attached(model) if attached else torch.no_grad():
            expected = score_mcq(model, questions, "lm_eval", batch_size=8, progress=False)
        assert results["acc,none"] == expected.accuracy, attached
        predictions = [max(range(4), key=lambda i: s["resps"][i][0][0]) for s in samples]
        assert predictions == [r.prediction for r in expected.records]
        got = [[resp[0][0] for resp in s["resps"]] for s in samples]
        assert all(row == pytest.approx(r.scores, abs=2e-4) for row, r in zip(got, expected.records))


@pytest.mark.slow
def test_dsg_lens_lm_eval_command_line(tmp_path):
    """`dsg-lens lm-eval run --model dsg ...` end to end in a fresh process (registration, model_args, output)."""
    _, rows = _embedded_rows(6)
    write_task(tmp_path / "tasks", "dsg_cli_mmlu", MMLU_TASK, rows)
    command = [sys.executable, "-m", "dsg_lens.cli", "lm-eval", "run", "--model", "dsg", "--model_args",
               f"model=smollm2-135m-instruct,sae=embedded,guardrail={EMBEDDED_GUARD}", "--tasks", "dsg_cli_mmlu",
               "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results*.json")).read_text())
    assert 0.0 <= results["results"]["dsg_cli_mmlu"]["acc,none"] <= 1.0
    assert "dsg" in results["config"]["model"]
