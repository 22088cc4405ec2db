"""`dsg-lens bench`: time the guardrail against a plain forward, the reference full-SAE formulation, static
clamping, KV-cached generation and latent statistics, optionally evaluation and sweep cost (logic in
dsg_lens.bench); prints a table, writes JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_DTYPES = ("float32", "bfloat16", "float16")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and SAE named by ``args`` (the SAE cast once to the model's device)."""
    import torch

    from dsg_lens.bench import random_sae
    from dsg_lens.models import load_embedded_sae, load_model

    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    if args.random_sae:
        sae = random_sae(int(model.cfg.d_model), args.d_sae, args.hook)
    elif args.sae is not None:
        from sae_lens import SAE

        sae = SAE.load_from_disk(str(args.sae), device="cpu")
    else:
        sae = load_embedded_sae()
    return model, sae.to(model.cfg.device)


def _bench(args: argparse.Namespace) -> None:
    from dsg_lens.bench import default_guard, format_report, run_benchmark
    from dsg_lens.guardrail import DynamicSAEGuardrail

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    model, sae = _load(args)
    guard = DynamicSAEGuardrail.load(args.guard, sae=sae) if args.guard else default_guard(sae, args.n_latents)
    result = run_benchmark(
        model, sae, guard, batch=args.batch, seq_len=args.seq_len, repeats=args.repeats, warmup=args.warmup,
        gen_tokens=args.gen_tokens, gen_prompt_len=args.gen_prompt_len, stats_batches=args.stats_batches,
        memory_scale=args.memory_scale, progress=not args.no_progress, eval_questions=args.eval_questions,
        sweep_configs=args.sweep_configs, naive_sweep=args.naive_sweep,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(format_report(result))
    print(f"\nwritten: {args.out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from dsg_lens.config import EMBEDDED_MODEL

    parser = subparsers.add_parser("bench", help="overhead benchmark of the guardrail (table + JSON)")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON output (default: bench.json)")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help=f"model name (default: {EMBEDDED_MODEL})")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="model dtype (default: float32)")
    parser.add_argument("--device", default=None, help="device (default: TransformerLens's choice)")
    parser.add_argument("--sae", type=Path, default=None, help="SAELens folder (default: the shipped SAE)")
    parser.add_argument("--random-sae", action="store_true",
                        help="use a random StandardSAE of d_in=d_model, --d-sae latents at --hook (timing only)")
    parser.add_argument("--d-sae", type=int, default=4096, help="latents of the random SAE (default: 4096)")
    parser.add_argument("--hook", default="blocks.6.hook_resid_post",
                        help="hook of the random SAE (default: blocks.6.hook_resid_post, the shipped SAE's)")
    parser.add_argument("--guard", type=Path, default=None, help="saved guardrail folder (default: random latents)")
    parser.add_argument("--n-latents", type=int, default=20, help="latents of the default guardrail (default: 20)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per pass (default: 8)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after warm-up (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default: 1)")
    parser.add_argument("--gen-tokens", type=int, default=32, help="generated tokens, 0 skips (default: 32)")
    parser.add_argument("--gen-prompt-len", type=int, default=32, help="prompt tokens for generation (default: 32)")
    parser.add_argument("--stats-batches", type=int, default=2, help="batches for statistics, 0 skips (default: 2)")
    parser.add_argument("--memory-scale", type=int, default=10, help="x more tokens for the memory check (default: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 avoids thread stalls on a busy machine)")
    parser.add_argument("--eval-questions", type=int, default=0,
                        help="K > 0 adds the evaluation and sweep cost section: one evaluation of K base-correct "
                             "forget + retain questions of the embedded benchmark is the unit (default: 0, off)")
    parser.add_argument("--sweep-configs", type=int, default=20,
                        help="configurations of the timed sweep, N in (5, 10, 20, 40, 80) x p_dyn in "
                             "(80, 90, 95, 99), clamp 500 (default: 20)")
    parser.add_argument("--naive-sweep", action="store_true",
                        help="also time the naive sweep (every question under every configuration; slow)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_bench)
