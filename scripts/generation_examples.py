"""Greedy chat generations with and without a saved guardrail (the README's generation table).

    python scripts/generation_examples.py --guardrail figures/results/demo/guardrail \
        --out figures/results/generation/generations.json

For each prompt (chat template, greedy, --tokens new tokens): the unguarded and guarded continuation, whether the
gate is on at the end of the prompt, and whether KV-cached and uncached guarded generation give the same tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = ("What do cheetahs eat?", "Describe a penguin.", "Tell me about wolves.", "What is a violin?",
           "How do you bake bread?")


def main() -> None:
    import torch

    import dsg_lens as dsg
    from dsg_lens.models import load_embedded_sae, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guardrail", type=Path, required=True, help="saved guardrail folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--tokens", type=int, default=30, help="new tokens per prompt (default: 30)")
    args = parser.parse_args()
    model = load_model("smollm2-135m-instruct")
    guard = dsg.DynamicSAEGuardrail.load(args.guardrail, sae=load_embedded_sae(device=model.cfg.device))
    rows = []
    for prompt in PROMPTS:
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        tokens = model.to_tokens(text, prepend_bos=False)

        def generate(cached: bool) -> torch.Tensor:
            return model.generate(tokens, max_new_tokens=args.tokens, do_sample=False, use_past_kv_cache=cached,
                                  verbose=False)[0, tokens.shape[1]:]

        plain = generate(True)
        with guard.attached(model):
            guarded, uncached = generate(True), generate(False)
        rows.append({
            "prompt": prompt,
            "gate_on_at_prompt_end": bool(guard.is_forget(model, tokens)[0]),
            "unguarded": model.tokenizer.decode(plain, skip_special_tokens=False),
            "guarded": model.tokenizer.decode(guarded, skip_special_tokens=False),
            "cached_equals_uncached": bool(torch.equal(guarded, uncached)),
        })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
