"""`dsg-lens demo | fit | eval | sweep`: the DSG pipeline from the command line (logic lives in dsg_lens.pipeline)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from dsg_lens.eval.mcq import PROTOCOLS
from dsg_lens.gate import GATES
from dsg_lens.pipeline import CALIBRATION_SOURCES, PipelineConfig

DEMO_MAX_QUESTIONS = 300
"""The demo evaluates the first 300 base-correct questions of each side (keeps it under 15 min on 2 CPU cores)."""


_TYPES = {"int": int, "float": float, "str": str}
CHOICES = {"gate": sorted(GATES), "calibration": list(CALIBRATION_SOURCES), "protocol": list(PROTOCOLS)}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    defaults = PipelineConfig()
    for field in fields(PipelineConfig):
        default = getattr(defaults, field.name)
        kind = _TYPES[str(field.type).split(" | ")[0]]
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=default,
                            choices=CHOICES.get(field.name), help=f"(default: {default})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(**{f.name: getattr(args, f.name) for f in fields(PipelineConfig)})


def _load(cfg: PipelineConfig):
    from dsg_lens.models import load_model
    from dsg_lens.pipeline import load_sae

    model = load_model(cfg.model, device=cfg.device)
    return model, load_sae(cfg.sae, device=model.cfg.device)


def _demo(args: argparse.Namespace) -> None:
    from dsg_lens.demo import run_demo

    report = run_demo(args.out, config_from_args(args), progress=not args.quiet)
    print(json.dumps({k: report[k] for k in ("base", "dsg", "timing_s")}, indent=2))


def _fit(args: argparse.Namespace) -> None:
    from dsg_lens.pipeline import fit_guardrail, load_texts

    cfg = config_from_args(args)
    model, sae = _load(cfg)
    fitted = fit_guardrail(model, sae, load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus), cfg,
                           progress=not args.quiet)
    fitted.guard.save(args.out)
    print(f"saved {fitted.guard} to {args.out} ({fitted.seconds:.1f} s)")


def _eval(args: argparse.Namespace) -> None:
    from dsg_lens.guardrail import DynamicSAEGuardrail
    from dsg_lens.pipeline import base_correct_questions, evaluate_questions

    cfg = config_from_args(args)
    model, sae = _load(cfg)
    forget_q, retain_q = base_correct_questions(model, cfg, progress=not args.quiet)
    if args.guardrail:
        with DynamicSAEGuardrail.load(args.guardrail, sae=sae).attached(model):
            result = evaluate_questions(model, forget_q, retain_q, cfg.protocol, cfg.batch_size, not args.quiet)
    else:
        result = evaluate_questions(model, forget_q, retain_q, cfg.protocol, cfg.batch_size, not args.quiet)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"guardrail": args.guardrail, **result}, indent=2))
    print(json.dumps(result, indent=2))


def _sweep(args: argparse.Namespace) -> None:
    from dsg_lens.demo import sweep_embedded

    result = sweep_embedded(config_from_args(args), args.out, n_values=args.n_values, clamp_values=args.clamp_values,
                            p_ratio_values=args.p_ratio_values, p_dyn_values=args.p_dyn_values,
                            relative=args.relative, naive=args.naive, progress=not args.quiet)
    print(json.dumps({"score": result.score(), "pareto": result.pareto()}, indent=2))


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="whole pipeline offline on the embedded default: report + figures")
    add_config_args(demo)
    demo.add_argument("--out", default="dsg_out")
    demo.set_defaults(func=_demo, max_questions=DEMO_MAX_QUESTIONS)

    fit = subparsers.add_parser("fit", help="statistics, selection and calibration; writes a guardrail folder")
    add_config_args(fit)
    fit.add_argument("--out", required=True, help="guardrail folder to write")
    fit.set_defaults(func=_fit)

    evaluate = subparsers.add_parser("eval", help="forget/retain accuracy of the base model or with a guardrail")
    add_config_args(evaluate)
    evaluate.add_argument("--guardrail", default=None, help="guardrail folder (omit for the base model)")
    evaluate.add_argument("--out", default="dsg_out/eval.json")
    evaluate.set_defaults(func=_eval)

    sweep = subparsers.add_parser("sweep", help="sweep N, clamp, p_ratio, p_dyn; table + Pareto front + score")
    add_config_args(sweep)
    sweep.add_argument("--n-values", type=int, nargs="+", default=[10, 20, 40])
    sweep.add_argument("--clamp-values", type=float, nargs="+", default=[50.0, 200.0, 500.0])
    sweep.add_argument("--p-ratio-values", type=float, nargs="+", default=[95.0])
    sweep.add_argument("--p-dyn-values", type=float, nargs="+", default=[90.0, 95.0, 99.0])
    sweep.add_argument("--relative", action="store_true", help="clamp values are multiples of the residual norm")
    sweep.add_argument("--naive", action="store_true",
                       help="re-score every question under every configuration (the reference; default: only the "
                            "questions each configuration's guardrail clamps)")
    sweep.add_argument("--out", default="dsg_out/sweep")
    sweep.set_defaults(func=_sweep)
