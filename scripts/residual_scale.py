"""How large is the residual stream at each model's SAE hook, and how much of it is a constant? Over the real
tokens of the retain corpus (the set ``LatentStats.mean_resid_norm`` uses): the mean token norm, the norm of the
mean vector, the mean norm of the centred residual (x - mean) and the share of the centred variance in the largest
dimension. The README's clamp-transfer section reads these numbers.

    OMP_NUM_THREADS=1 python scripts/residual_scale.py --model smollm2-135m-instruct --model gemma-3-270m \
        --out figures/results/transfer/residual_scale.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def residual_scale(model_name: str, n_texts: int, batch_size: int) -> dict[str, float | int | str]:
    from dsg_lens.activations import iter_activations
    from dsg_lens.models import load_model
    from dsg_lens.pipeline import load_sae, load_texts
    from dsg_lens.sae_view import sae_hook_name
    from dsg_lens.tokens import to_sequences

    model = load_model(model_name)
    hook = sae_hook_name(load_sae("embedded", device=model.cfg.device, model=model_name))
    sequences = to_sequences(model, load_texts("embedded:retain")[:n_texts])
    rows = [act[batch.real].double().cpu() for batch, act in iter_activations(model, hook, sequences, batch_size)]
    x = torch.cat(rows)
    mean = x.mean(0)
    centred = x - mean
    variance = centred.square().mean(0)
    return {"model": model_name, "hook": hook, "n_tokens": int(x.shape[0]),
            "mean_norm": float(x.norm(dim=-1).mean()), "mean_vector_norm": float(mean.norm()),
            "mean_centred_norm": float(centred.norm(dim=-1).mean()),
            "top_dim": int(variance.argmax()), "top_dim_variance_share": float(variance.max() / variance.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a model name; repeat per model")
    parser.add_argument("--texts", type=int, default=128, help="retain-corpus texts (default 128)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [residual_scale(name, args.texts, args.batch_size) for name in args.model]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": {"texts": args.texts}, "models": rows}, indent=2))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
