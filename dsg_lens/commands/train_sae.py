"""`dsg-lens train-sae`: train residual SAEs with SAELens on a JSONL corpus and record their quality (logic in
dsg_lens.sae_training). Several candidates train on one stream of model activations (one model forward per batch);
a rerun into the same --out resumes from the latest checkpoint.

The shipped SAE and the candidates it was chosen from were made with::

    python -m dsg_lens.data.build_sae_corpus /tmp/sae_corpus.jsonl
    OMP_NUM_THREADS=1 dsg-lens train-sae --corpus /tmp/sae_corpus.jsonl --out sae_runs \\
        --config dsg_lens/assets/smollm2-135m-instruct-res-6/training_config.json --dtype bfloat16 \\
        --quality-tokens 6144
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

_DTYPES = ("float32", "bfloat16")
_CANDIDATE_FLAGS = ("name", "hook_name", "d_sae", "architecture", "sparsity_coefficient", "k", "normalization")


def _config(args: argparse.Namespace):
    from dsg_lens.sae_training import SAECandidate, SAETrainingConfig

    if args.config is not None:
        return SAETrainingConfig.load(args.config)
    candidate = SAECandidate(**{name: getattr(args, name) for name in _CANDIDATE_FLAGS})
    shared = {f.name: getattr(args, f.name) for f in fields(SAETrainingConfig) if f.name != "candidates"}
    return SAETrainingConfig(candidates=(candidate,), **shared)


def _train(args: argparse.Namespace) -> None:
    import torch

    from dsg_lens.models import load_model
    from dsg_lens.sae_training import load_corpus, train_and_measure

    cfg = _config(args)  # a bad config fails here, before the model loads
    texts = load_corpus(args.corpus)
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    rows = train_and_measure(model, texts, cfg, args.out, n_heldout=args.n_heldout,
                             quality_tokens=args.quality_tokens, progress=not args.quiet)
    keys = ("name", "architecture", "layer", "d_sae", "explained_variance", "ce_loss_recovered", "l0",
            "dead_fraction", "run_wall_s")
    print(json.dumps([{k: row.get(k) for k in keys} for row in rows], indent=2))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-sae", help="train residual-stream SAEs with SAELens on a local corpus (resumable)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL corpus (python -m dsg_lens.data.build_sae_corpus)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: <out>/<candidate>/ (SAELens layout + quality.json), candidates.json")
    parser.add_argument("--config", type=Path, default=None,
                        help="a saved training_config.json (several candidates); replaces the options below")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name (default: %(default)s)")
    parser.add_argument("--device", default=None, help="device (default: TransformerLens's choice)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32",
                        help="model dtype for training and measuring (bfloat16 is ~3x faster on CPU)")
    parser.add_argument("--n-heldout", type=int, default=200, help="held-out corpus records (default: 200)")
    parser.add_argument("--quality-tokens", type=int, default=50_000, help="held-out tokens measured (default: 50000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    one = parser.add_argument_group("one candidate (without --config)")
    one.add_argument("--name", default="sae", help="candidate folder name (default: %(default)s)")
    one.add_argument("--hook-name", default="blocks.12.hook_resid_post", help="hook point (default: %(default)s)")
    one.add_argument("--d-sae", type=int, default=4096, help="latents (default: %(default)s)")
    one.add_argument("--architecture", choices=("standard", "jumprelu", "topk", "batchtopk"), default="standard",
                     help="ReLU + L1, JumpReLU + L0, TopK, BatchTopK (saved as JumpReLU) (default: %(default)s)")
    one.add_argument("--sparsity-coefficient", type=float, default=5.0,
                     help="L1 (standard) or L0 (jumprelu) coefficient (default: %(default)s)")
    one.add_argument("--k", type=int, default=32, help="active latents per token, topk / batchtopk (default: %(default)s)")
    one.add_argument("--normalization", choices=("expected_average_only_in", "covariance_whitening"),
                     default="expected_average_only_in",
                     help="rescale activations to norm sqrt(d_in), or PCA-whiten them (default: %(default)s)")
    run = parser.add_argument_group("the run (without --config)")
    run.add_argument("--training-tokens", type=int, default=2_000_000, help="(default: %(default)s)")
    run.add_argument("--context-size", type=int, default=256, help="tokens per chunk (default: %(default)s)")
    run.add_argument("--train-batch-size-tokens", type=int, default=4096, help="(default: %(default)s)")
    run.add_argument("--lr", type=float, default=3e-4, help="(default: %(default)s)")
    run.add_argument("--dead-feature-window", type=int, default=150, help="in steps (default: %(default)s)")
    run.add_argument("--n-batches-for-norm-estimate", type=int, default=20, help="(default: %(default)s)")
    run.add_argument("--first-position", type=int, default=2,
                     help="positions before it are not trained on: BOS, attention sink (default: %(default)s)")
    run.add_argument("--n-checkpoints", type=int, default=10, help="checkpoints during the run (default: %(default)s)")
    run.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    parser.set_defaults(func=_train)
