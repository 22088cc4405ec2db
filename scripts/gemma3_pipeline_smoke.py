"""Smoke of the DSG pipeline pieces on the real Gemma 3 270M (issue 16), with a random-init SAELens SAE (d_sae 512
at ``blocks.9.hook_resid_post``): the real-token rule with Gemma's tokenizer, ``collect_latent_stats``, a guardrail
fitted with a fixed and a relative clamp, and completion scoring with and without it; completion scoring (PMI and
summed log-prob) against an independent HF computation on ``--n-check`` questions. A few texts and questions: it
checks that the pieces run and agree with independent references, not what DSG does on Gemma. One JSON to --out.

    OMP_NUM_THREADS=1 python scripts/gemma3_pipeline_smoke.py --out figures/results/gemma3/pipeline_smoke.json

Needs the ``gemma3`` extra (``pip install 'dsg-lens[gemma3]'``).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from dsg_lens.data.loaders import load_embedded_benchmark, load_embedded_corpus
from dsg_lens.eval.mcq import score_mcq
from dsg_lens.gate import make_gate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.models import GEMMA3_MODEL, load_hf_model, load_model
from dsg_lens.real_tokens import RealTokenRule, chat_scaffold
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats

HOOK = "blocks.9.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--n-texts", type=int, default=6)
    parser.add_argument("--n-questions", type=int, default=8)
    parser.add_argument("--n-check", type=int, default=40, help="questions scored against HF")
    args = parser.parse_args()
    report: dict = {"model": GEMMA3_MODEL, "hook": HOOK, "steps": {}, "errors": {}}
    model = load_model(GEMMA3_MODEL, device="cpu", cache_dir=args.cache_dir)
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=512, metadata=SAEMetadata(hook_name=HOOK)))
    forget_texts = load_embedded_corpus("forget")[: args.n_texts]
    retain_texts = load_embedded_corpus("retain")[: args.n_texts]
    questions = load_embedded_benchmark("forget")[: args.n_questions]
    state: dict = {}

    def step(name, fn):
        start = time.perf_counter()
        try:
            report["steps"][name] = fn()
        except Exception as err:  # a smoke: record what breaks and go on
            report["errors"][name] = "".join(traceback.format_exception_only(err)).strip()
            traceback.print_exc()
        report["steps"].setdefault(name, {})["seconds"] = round(time.perf_counter() - start, 2)

    def real_tokens():
        tokenizer = model.tokenizer
        rule = RealTokenRule.for_model(model)
        tokens = model.to_tokens(forget_texts[0])
        mask = rule.mask(tokens)[0]
        expected = tokens[0] != tokenizer.bos_token_id  # independent: everything but the one BOS is text
        return {
            "bos_id": tokenizer.bos_token_id, "n_bos": int((tokens[0] == tokenizer.bos_token_id).sum()),
            "chat_template": tokenizer.chat_template is not None, "scaffold": chat_scaffold(tokenizer) is not None,
            "skip_first": rule.skip_first, "special_ids": rule.special_ids.tolist(),
            "mask_equals_all_but_bos": bool(torch.equal(mask, expected)), "n_tokens": int(tokens.shape[1]),
        }

    def stats():
        state["forget"] = collect_latent_stats(model, sae, forget_texts, features=[0, 1, 2], batch_size=3,
                                               max_len=128, progress=False)
        state["retain"] = collect_latent_stats(model, sae, retain_texts, batch_size=3, max_len=128, progress=False)
        independent = sum(min(len(model.tokenizer(t).input_ids), 128) - 1 for t in forget_texts)
        forget = state["forget"]
        return {
            "n_tokens": forget.n_tokens, "independent_count_if_no_windows": independent,
            "mean_resid_norm": forget.resid_norm_sum / forget.n_tokens,
            "fire_freq_median": forget.fire_freq.median().item(),
            "finite": bool(torch.isfinite(forget.mean_act).all()),
            "rho": forget.rho.tolist() if forget.rho is not None else None,
        }

    def scoring():
        base = score_mcq(model, questions, "completion", batch_size=4, progress=False)
        features = select_features(state["forget"], state["retain"], n=5)
        out = {"base_accuracy": base.accuracy, "features": list(features.ids)}
        for label, clamp in (("fixed_500", {"clamp": 500.0}), ("scale_1", {"clamp_scale": 1.0})):
            guard = DynamicSAEGuardrail.fit(model, sae, features, retain_texts, p_dyn=50.0,
                                            gate=make_gate("window"), batch_size=3, max_len=128, progress=False,
                                            **clamp)
            with guard.attached(model):
                guarded = score_mcq(model, questions, "completion", batch_size=4, progress=False)
            out[label] = {"accuracy": guarded.accuracy, "resid_norm": guard.resid_norm,
                          "clamp_values_median": guard.clamp_values.median().item(), "tau": guard.gate.tau}
        out["hooks_left"] = sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())
        return out

    def completion_vs_hf():
        checked = load_embedded_benchmark("forget")[: args.n_check]
        hf_model, tokenizer = load_hf_model(GEMMA3_MODEL, cache_dir=args.cache_dir)

        def log_prob(context: str, continuation: str) -> float:  # HF alone: context with BOS, continuation without
            ctx = tokenizer(context).input_ids
            cont = tokenizer(continuation, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = hf_model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
            return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))

        reference = {"sum": [], "pmi": []}
        for q in checked:
            context, candidates, neutral = q.cloze()
            summed = [log_prob(context, c) for c in candidates]
            pmi = [s - log_prob(neutral, c) for s, c in zip(summed, candidates)]
            reference["sum"].append(max(range(len(summed)), key=summed.__getitem__))
            reference["pmi"].append(max(range(len(pmi)), key=pmi.__getitem__))
        out = {"n": len(checked)}
        for score, expected in reference.items():
            result = score_mcq(model, checked, "completion", completion_score=score, batch_size=8, progress=False)
            out[score] = {
                "accuracy": result.accuracy,
                "hf_accuracy": sum(p == q.answer for p, q in zip(expected, checked)) / len(checked),
                "predictions_equal_hf": sum(r.prediction == p for r, p in zip(result.records, expected)),
            }
        return out

    step("real_tokens", real_tokens)
    step("collect_latent_stats", stats)
    step("completion_scoring_and_guardrail", scoring)
    step("completion_vs_hf", completion_vs_hf)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
