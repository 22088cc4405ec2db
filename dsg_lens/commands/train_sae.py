"""`dsg-lens train-sae`: train a residual SAE on a JSONL corpus and record its quality (logic in dsg_lens.sae_training).

The shipped SAE was made with::

    python -m dsg_lens.data.build_sae_corpus /tmp/sae_corpus.jsonl
    OMP_NUM_THREADS=1 dsg-lens train-sae --corpus /tmp/sae_corpus.jsonl \\
        --out dsg_lens/assets/smollm2-135m-instruct-res-12 --dtype bfloat16 --training-tokens 1200000 \\
        --train-batch-size-tokens 2048 --sparsity-coefficient 12 --lr 0.0005 --quality-tokens 6144
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

_DTYPES = ("float32", "bfloat16")


def _train(args: argparse.Namespace) -> None:
    import torch

    from dsg_lens.models import load_model
    from dsg_lens.sae_training import SAETrainingConfig, load_corpus, train_and_measure

    cfg = SAETrainingConfig(**{f.name: getattr(args, f.name) for f in fields(SAETrainingConfig)})
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    quality = train_and_measure(
        model, load_corpus(args.corpus), cfg, args.out, n_heldout=args.n_heldout,
        quality_tokens=args.quality_tokens, progress=not args.quiet,
    )
    print(json.dumps(quality["heldout"], indent=2))


def register(subparsers: argparse._SubParsersAction) -> None:
    from dsg_lens.models import EMBEDDED_MODEL
    from dsg_lens.sae_training import SAETrainingConfig

    parser = subparsers.add_parser("train-sae", help="train a residual-stream SAE with SAELens on a local corpus")
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL corpus (python -m dsg_lens.data.build_sae_corpus)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (SAELens layout + quality.json)")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help=f"model name (default: {EMBEDDED_MODEL})")
    parser.add_argument("--device", default=None, help="device (default: TransformerLens's choice)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32",
                        help="model dtype for training and measuring (bfloat16 is ~3x faster on CPU)")
    parser.add_argument("--n-heldout", type=int, default=200, help="held-out corpus records (default: 200)")
    parser.add_argument("--quality-tokens", type=int, default=50_000, help="held-out tokens measured (default: 50000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    defaults = SAETrainingConfig()
    for field in fields(SAETrainingConfig):
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default,
                            help=f"(default: {default})")
    parser.set_defaults(func=_train)
