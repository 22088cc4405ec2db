"""Benchmark models with random weights of a real shape (no download), and the GPU check's bench entry point.

* :func:`gemma2_2b_config`: a ``HookedTransformerConfig`` with Gemma-2-2B's shapes written out (the numbers of
  TransformerLens 3.9's ``convert_hf_model_config("google/gemma-2-2b")``: d_model 2304, 26 layers, 8 query / 4 KV
  heads of 256, d_mlp 9216, vocabulary 256000, context 8192, gated GELU-tanh MLP, RMS norms before *and after*
  attention and MLP, rotary, local (window 4096) / global attention alternating, attention scores soft-capped at
  50 and logits at 30).
* :func:`random_gemma2_2b`: that model with random weights, built directly on ``device`` in ``dtype``;
  ``n_layers`` (and ``d_vocab`` / ``n_ctx``) shrink it for CPU dry runs.
* :func:`random_jumprelu_sae`: a SAELens JumpReLU SAE of random weights at a hook of a model, thresholds set on
  the model's own activations so that a realistic fraction of latents fires per token (default 2%).
* ``python -m dsg_lens.bench_models``: :func:`dsg_lens.bench.run_benchmark` on that model + SAE at batch 1 for each
  sequence length and dtype; one JSON per run, ``summary.json`` and ``table.md`` (ratios to the plain forward next
  to the paper's Table 15). On CUDA it also checks that the guardrail hook makes no host synchronisation
  (``torch.cuda.set_sync_debug_mode("error")`` inside the hook). ``scripts/gpu_check.sh`` runs it (docs/gpu.md).

Timing only: the latents mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig

from dsg_lens.activations import hook_activations
from dsg_lens.bench import (
    TAU_ALWAYS,
    TAU_NEVER,
    default_guard,
    format_report,
    random_tokens,
    run_benchmark,
    with_tau,
)
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.hooks import scoped_hooks
from dsg_lens.sae_view import hook_layer

MODEL_NAME = "gemma-2-2b-shaped-random"
SAE_HOOK = "blocks.3.hook_resid_post"
SAE_D_SAE = 16384
FIRE_RATE = 0.02
DEFAULT_OUT = Path("figures/results/bench/gpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

PAPER_TABLE_15 = {256: 0.073, 1024: 0.036}
"""The paper's Table 15: DSG's added forward time at batch 1 on an A6000 (+7.3% at 256 tokens, +3.6% at 1024)."""
GOAL = {"seq_len": 256, "dtype": "bfloat16", "max_ratio": 1.01}
"""Issue 19's goal: the guarded forward <= 1.01x the plain one at batch 1 x 256 tokens in bf16 on a GPU."""

_CALIBRATION_SEQ_LEN = 32  # random sequences differ in their mean activation: calibrate on many short ones
_LOCAL_GLOBAL = ("local", "global")  # Gemma 2 (as TransformerLens converts it): even layers local, odd global


def gemma2_2b_config(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n_layers: int | None = None,
    *,
    d_vocab: int | None = None,
    n_ctx: int | None = None,
    seed: int = 0,
) -> HookedTransformerConfig:
    """Gemma-2-2B's TransformerLens config, written out (module docstring); ``n_layers`` / ``d_vocab`` / ``n_ctx``
    override the real 26 / 256000 / 8192 (shrunk models for CPU dry runs). Random init (TransformerLens's GPT-2
    scheme at Gemma's initializer_range 0.02), no tokenizer."""
    layers = 26 if n_layers is None else n_layers
    for name, value in (("n_layers", layers), ("d_vocab", d_vocab), ("n_ctx", n_ctx)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    return HookedTransformerConfig(
        model_name=MODEL_NAME,
        original_architecture="Gemma2ForCausalLM",
        d_model=2304,
        n_layers=layers,
        n_heads=8,
        d_head=256,
        n_key_value_heads=4,
        d_mlp=9216,
        d_vocab=256000 if d_vocab is None else d_vocab,
        n_ctx=8192 if n_ctx is None else n_ctx,
        act_fn="gelu_pytorch_tanh",
        gated_mlp=True,
        normalization_type="RMS",
        final_rms=True,
        use_normalization_before_and_after=True,  # Gemma 2's post-attention / post-MLP RMS norms
        eps=1e-6,
        positional_embedding_type="rotary",
        rotary_base=10000.0,
        use_attn_scale=True,
        use_local_attn=True,
        window_size=4096,
        attn_types=[_LOCAL_GLOBAL[i % 2] for i in range(layers)],
        attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0,
        initializer_range=0.02,
        default_prepend_bos=True,
        device=str(device),
        dtype=dtype,
        seed=seed,
    )


def random_gemma2_2b(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n_layers: int | None = None,
    *,
    d_vocab: int | None = None,
    n_ctx: int | None = None,
    seed: int = 0,
) -> HookedTransformer:
    """A Gemma-2-2B-shaped HookedTransformer of random weights on ``device`` in ``dtype``, in eval mode
    (:func:`gemma2_2b_config`). The weights are created and initialised on ``device`` itself (3.2B parameters, as
    TransformerLens keeps the unembedding apart from the embedding: no trip through host memory on a GPU)."""
    cfg = gemma2_2b_config(device, dtype, n_layers, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed)
    try:
        with torch.device(cfg.device):
            model = HookedTransformer(cfg)
    except RuntimeError:  # something in the constructor that must stay on the host: build there, then move
        gc.collect()
        model = HookedTransformer(cfg)
    return model.eval()


def random_jumprelu_sae(
    model: nn.Module,
    hook_name: str = SAE_HOOK,
    d_sae: int = SAE_D_SAE,
    *,
    fire_rate: float = FIRE_RATE,
    calibration_tokens: int = 512,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> JumpReLUSAE:
    """A SAELens JumpReLU SAE (Gemma Scope's layout: ``apply_b_dec_to_input=False``) of random weights at
    ``hook_name`` of ``model``, on the model's device, in ``dtype`` (default: the model's).

    Decoder rows are random unit vectors, the encoder their transpose; ``b_enc`` centres each latent's
    pre-activation on the model's activations for ``calibration_tokens`` random tokens (in sequences of 32: random
    sequences differ in their mean activation), and each threshold is that latent's ``1 - fire_rate`` quantile
    there, so about ``fire_rate`` of the latents fire per token.
    """
    if not 0.0 < fire_rate < 1.0:
        raise ValueError(f"fire_rate={fire_rate} must be in (0, 1)")
    d_in = int(model.cfg.d_model)
    device = torch.device(model.cfg.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    seq_len = min(_CALIBRATION_SEQ_LEN, int(model.cfg.n_ctx))
    n_seqs = max(1, math.ceil(calibration_tokens / seq_len))
    acts = hook_activations(model, hook_name, random_tokens(model, n_seqs, seq_len, seed=seed + 1))
    acts = acts.reshape(-1, d_in).float()
    w_enc = w_dec.T.contiguous().to(device)
    pre = acts @ w_enc
    b_enc = -pre.mean(0)
    pre = pre + b_enc
    k = min(pre.shape[0], max(1, math.ceil((1.0 - fire_rate) * pre.shape[0])))
    threshold = pre.kthvalue(k, dim=0).values.clamp(min=1e-3 * float(pre.std()))
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, device=str(device),
                            metadata=SAEMetadata(hook_name=hook_name))
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.zero_()
        sae.threshold.copy_(threshold)
    return sae.to(dtype=dtype or model.cfg.dtype).eval()


def fire_rate_of(model: nn.Module, sae: JumpReLUSAE, n_tokens: int = 256, seed: int = 7) -> dict[str, float]:
    """The fraction of latents firing per token (and the mean L0) on about ``n_tokens`` fresh random tokens."""
    hook_name = sae.cfg.metadata.hook_name
    seq_len = min(_CALIBRATION_SEQ_LEN, int(model.cfg.n_ctx))
    tokens = random_tokens(model, max(1, math.ceil(n_tokens / seq_len)), seq_len, seed=seed)
    with torch.no_grad():
        fired = sae.encode(hook_activations(model, hook_name, tokens)) > 0
    l0 = float(fired.sum(-1).float().mean())
    return {"l0": l0, "fraction": l0 / int(sae.cfg.d_sae)}


def fit_hook_to_layers(hook_name: str, n_layers: int) -> str:
    """``hook_name`` moved to the second-to-last block when a shrunk model has no block after it (at least one
    block follows the edit, as in the full model, and reading activations there skips the unembedding)."""
    layer = hook_layer(hook_name)
    if layer is None or layer < n_layers - 1:
        return hook_name
    return re.sub(r"^blocks\.\d+\.", f"blocks.{max(n_layers - 2, 0)}.", hook_name)


# --------------------------------------------------------------------------------------- the CUDA-only check
def host_sync_check(model: nn.Module, guards: dict[str, DynamicSAEGuardrail], seq_len: int,
                    seed: int = 0) -> dict[str, str]:
    """Per guard: ``"none"`` if its hook runs under ``torch.cuda.set_sync_debug_mode("error")`` (no host
    synchronisation inside the hook, after one warm-up pass), else the error; ``"skipped"`` off CUDA."""
    if torch.device(model.cfg.device).type != "cuda":
        return {name: "skipped (not on CUDA)" for name in guards}
    tokens = random_tokens(model, 1, seq_len, seed)
    out: dict[str, str] = {}
    for name, guard in guards.items():
        spec = guard.hook_spec(model)
        watching = [False]

        def watched(act: Any, hook: Any, fn: Any = spec.fn) -> Any:
            if not watching[0]:
                return fn(act, hook=hook)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(act, hook=hook)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        with torch.inference_mode(), scoped_hooks(model, dataclasses.replace(spec, fn=watched)):
            model(tokens)
            torch.cuda.synchronize()
            watching[0] = True
            try:
                model(tokens)
                torch.cuda.synchronize()
                out[name] = "none"
            except RuntimeError as err:
                out[name] = f"host sync inside the hook: {str(err).splitlines()[0][:300]}"
    return out


# ------------------------------------------------------------------------------------------------ the table
def _pct(ratio: float) -> str:
    return f"{ratio:.3f}x ({100 * (ratio - 1):+.1f}%)"


def summary_row(result: dict[str, Any], dtype: str) -> dict[str, Any]:
    """One row of the GPU table from one :func:`~dsg_lens.bench.run_benchmark` result."""
    fwd = result["forward"]["variants"]
    seq_len = int(result["config"]["seq_len"])
    return {
        "dtype": dtype,
        "batch": int(result["config"]["batch"]),
        "seq_len": seq_len,
        "plain_ms": 1000 * fwd["plain"]["seconds"]["median"],
        "dsg_fired": fwd["guard_fired"]["ratio_to_plain"]["median"],
        "dsg_not_fired": fwd["guard_not_fired"]["ratio_to_plain"]["median"],
        "dsg_hook_share": fwd["guard_fired"].get("hook_share_of_plain"),
        "reference_full_sae": fwd["reference_full_sae"]["ratio_to_plain"]["median"],
        "static_clamp": fwd["static_clamp"]["ratio_to_plain"]["median"],
        "paper_table_15": PAPER_TABLE_15.get(seq_len),
        "not_fired_bit_identical": result["forward"]["checks"]["not_fired_bit_identical_to_plain"],
        "fast_vs_reference_max_rel_diff": result["forward"]["checks"]["fast_vs_reference_max_rel_diff"],
        "host_sync_in_hook": result.get("host_sync_in_hook"),
    }


def goal_verdict(rows: Sequence[dict[str, Any]], device: str) -> str:
    """Issue 19's goal (:data:`GOAL`) judged on ``rows`` (only on CUDA)."""
    target = [r for r in rows if r["seq_len"] == GOAL["seq_len"] and r["dtype"] == GOAL["dtype"] and r["batch"] == 1]
    head = f"goal: DSG <= {GOAL['max_ratio']:.2f}x plain at 1 x {GOAL['seq_len']} {GOAL['dtype']}"
    if not target:
        return f"{head}: not measured in this run"
    worst = max(target[0]["dsg_fired"], target[0]["dsg_not_fired"])
    if not device.startswith("cuda"):
        return f"{head}: not judged (a {device} dry run; worst DSG ratio {worst:.3f}x)"
    return f"{head}: {'met' if worst <= GOAL['max_ratio'] else 'NOT met'} (worst of fired / not fired {worst:.3f}x)"


def format_table(rows: Sequence[dict[str, Any]], header: str) -> str:
    """A Markdown table of the rows: ratios to the plain forward (median over rounds) next to Table 15."""
    lines = [
        header, "",
        "| dtype | tokens | plain ms | DSG fired | DSG not fired | DSG hook % | full-SAE reference | static clamp | "
        "paper Table 15 (A6000) | not fired == plain | fast vs ref | host sync in hook |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        paper = f"+{100 * r['paper_table_15']:.1f}%" if r["paper_table_15"] is not None else "-"
        share = f"{100 * r['dsg_hook_share']:.2f}" if r["dsg_hook_share"] is not None else "-"
        sync = r["host_sync_in_hook"] or {}
        if sync and all(v == "none" for v in sync.values()):
            sync_s = "none"
        elif sync and all(v.startswith("skipped") for v in sync.values()):
            sync_s = "skipped (not CUDA)"
        else:
            sync_s = "; ".join(f"{k}: {v}" for k, v in sync.items()) or "-"
        lines.append(
            f"| {r['dtype']} | {r['batch']}x{r['seq_len']} | {r['plain_ms']:.2f} | {_pct(r['dsg_fired'])} | "
            f"{_pct(r['dsg_not_fired'])} | {share} | {_pct(r['reference_full_sae'])} | {_pct(r['static_clamp'])} | "
            f"{paper} | {r['not_fired_bit_identical']} | {r['fast_vs_reference_max_rel_diff']:.1e} | {sync_s} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- entry point
def run_gpu_bench(
    out: Path,
    *,
    device: str,
    seq_lens: Sequence[int] = (256, 512, 1024),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    batch: int = 1,
    n_layers: int | None = None,
    d_vocab: int | None = None,
    n_ctx: int | None = None,
    hook_name: str = SAE_HOOK,
    d_sae: int = SAE_D_SAE,
    fire_rate: float = FIRE_RATE,
    calibration_tokens: int = 512,
    sae_dtype: str = "model",
    n_latents: int = 20,
    repeats: int | None = None,
    warmup: int | None = None,
    seed: int = 0,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """The bench of the GPU check (module docstring); writes one JSON per (dtype, length), ``summary.json`` and
    ``table.md`` under ``out`` and returns the summary. ``repeats`` / ``warmup`` default to 30 / 5 on CUDA (a
    batch-1 forward takes milliseconds there) and 3 / 1 elsewhere (dry runs)."""
    on_cuda = torch.device(device).type == "cuda"
    repeats = repeats if repeats is not None else (30 if on_cuda else 3)
    warmup = warmup if warmup is not None else (5 if on_cuda else 1)
    for name in dtypes:
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    if sae_dtype != "model" and sae_dtype not in DTYPES:
        raise ValueError(f"sae_dtype {sae_dtype!r} must be 'model' or one of {sorted(DTYPES)}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    files: list[str] = []
    env: dict[str, Any] = {}
    for dtype_name in dtypes:
        start = time.perf_counter()
        model = random_gemma2_2b(device, DTYPES[dtype_name], n_layers, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed)
        hook = fit_hook_to_layers(hook_name, int(model.cfg.n_layers))
        if hook != hook_name:
            print(f"note: {hook_name} is not followed by a block in the {model.cfg.n_layers}-layer model; the SAE "
                  f"sits at {hook}")
        sae = random_jumprelu_sae(model, hook, d_sae, fire_rate=fire_rate, calibration_tokens=calibration_tokens,
                                  seed=seed, dtype=None if sae_dtype == "model" else DTYPES[sae_dtype])
        rate = fire_rate_of(model, sae, n_tokens=calibration_tokens)
        guard = default_guard(sae, n_latents, seed=seed)
        built_s = time.perf_counter() - start
        print(f"built {MODEL_NAME} ({model.cfg.n_layers} layers, d_vocab {model.cfg.d_vocab}, n_ctx "
              f"{model.cfg.n_ctx}, {dtype_name}) + JumpReLU SAE d_sae={d_sae} at {hook} ({sae.W_dec.dtype}) on "
              f"{device} in {built_s:.1f} s; SAE L0 {rate['l0']:.1f} ({100 * rate['fraction']:.2f}% of latents)")
        for seq_len in seq_lens:
            result = run_benchmark(model, sae, guard, batch=batch, seq_len=seq_len, repeats=repeats, warmup=warmup,
                                   gen_tokens=0, stats_batches=0, seed=seed, progress=progress)
            result["host_sync_in_hook"] = host_sync_check(
                model, {"guard_fired": with_tau(guard, TAU_ALWAYS), "guard_not_fired": with_tau(guard, TAU_NEVER)},
                seq_len, seed)
            result["bench_model"] = {
                "name": MODEL_NAME, "shape_of": "google/gemma-2-2b", "n_layers": int(model.cfg.n_layers),
                "d_model": int(model.cfg.d_model), "d_vocab": int(model.cfg.d_vocab), "n_ctx": int(model.cfg.n_ctx),
                "n_params": int(sum(p.numel() for p in model.parameters())), "build_s": built_s,
                "sae": {"architecture": "jumprelu", "d_sae": d_sae, "hook_name": hook, "dtype": str(sae.W_dec.dtype),
                        "fire_rate_target": fire_rate, "fire_rate_measured": rate["fraction"], "l0": rate["l0"]},
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "command": command,
            }
            path = out / f"gemma2-2b-shaped_{dtype_name}_b{batch}x{seq_len}.json"
            path.write_text(json.dumps(result, indent=2))
            files.append(str(path))
            env = env or result["environment"]
            print(format_report(result))
            print(f"host sync inside the hook: {result['host_sync_in_hook']}\nwritten: {path}\n")
            rows.append(summary_row(result, dtype_name))
        del model, sae, guard
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    header = (f"GPU check bench: {MODEL_NAME} + JumpReLU SAE d_sae={d_sae}, N={n_latents}, on "
              f"{env.get('device_name', device)} (torch {env.get('torch', torch.__version__)}); ratio = guarded / "
              f"plain forward, median of {repeats} rounds after {warmup} warm-up; paper Table 15: DSG on an A6000, "
              f"batch 1")
    verdict = goal_verdict(rows, str(device))
    table = format_table(rows, header) + "\n\n" + verdict + "\n"
    (out / "table.md").write_text(table)
    summary = {"rows": rows, "goal": GOAL, "goal_verdict": verdict, "paper_table_15": PAPER_TABLE_15,
               "device": str(device), "device_name": env.get("device_name"), "files": files, "command": command}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"written: {out / 'table.md'}, {out / 'summary.json'}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsg_lens.bench_models",
        description="Bench the guardrail on a Gemma-2-2B-shaped model of random weights + a 16k JumpReLU SAE "
                    "(batch 1; each sequence length x dtype); JSON per run, summary.json and table.md. "
                    "CPU dry run: --device cpu --n-layers 2 --seq-lens 16 --d-sae 1024.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default: cuda if available, else cpu)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024], help="(default: 256 512 1024)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"],
                        help="model dtypes (default: float32 bfloat16)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per pass (default: 1)")
    parser.add_argument("--n-layers", type=int, default=None, help="shrink the model to this many layers (dry runs)")
    parser.add_argument("--d-vocab", type=int, default=None, help="shrink the vocabulary (dry runs; default 256000)")
    parser.add_argument("--n-ctx", type=int, default=None, help="override the context (default 8192)")
    parser.add_argument("--hook", default=SAE_HOOK, help=f"SAE hook (default: {SAE_HOOK}; moved to the last block "
                                                         "of a shrunk model without it)")
    parser.add_argument("--d-sae", type=int, default=SAE_D_SAE, help=f"SAE latents (default: {SAE_D_SAE})")
    parser.add_argument("--fire-rate", type=float, default=FIRE_RATE,
                        help=f"fraction of latents firing per token (default: {FIRE_RATE})")
    parser.add_argument("--calibration-tokens", type=int, default=512,
                        help="random tokens the SAE thresholds are set on, and the firing rate measured on "
                             "(default: 512)")
    parser.add_argument("--sae-dtype", default="model", choices=["model", *sorted(DTYPES)],
                        help="SAE dtype (default: the model's)")
    parser.add_argument("--n-latents", type=int, default=20, help="guardrail latents N (default: 20)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 30 on CUDA, 3 elsewhere)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed warm-up rounds (default: 5 on CUDA, 1 elsewhere)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    command = "python -m dsg_lens.bench_models " + " ".join(sys.argv[1:] if argv is None else argv)
    return run_gpu_bench(
        args.out, device=args.device, seq_lens=args.seq_lens, dtypes=args.dtypes, batch=args.batch,
        n_layers=args.n_layers, d_vocab=args.d_vocab, n_ctx=args.n_ctx, hook_name=args.hook, d_sae=args.d_sae,
        fire_rate=args.fire_rate, calibration_tokens=args.calibration_tokens, sae_dtype=args.sae_dtype,
        n_latents=args.n_latents, repeats=args.repeats, warmup=args.warmup, seed=args.seed,
        progress=not args.no_progress, command=command.strip(),
    )


if __name__ == "__main__":
    main()
