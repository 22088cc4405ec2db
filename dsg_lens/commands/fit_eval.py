"""`dsg-lens demo | fit | eval | sweep`: the DSG pipeline from the command line (logic lives in dsg_lens.pipeline).

Options come from :class:`dsg_lens.config.PipelineConfig` (its fields' help and ranges); each command offers only
the fields it uses. Data sources are checked (and local files read) before the model loads.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from dsg_lens.config import CALIBRATION_SOURCES, GATE_KINDS, MODEL_KINDS, PROTOCOLS, PipelineConfig

DEMO_MAX_QUESTIONS = 300
"""The demo evaluates 300 base-correct questions of each side (a seeded sample stratified by subject; keeps it under
15 min on 2 CPU cores)."""

_TYPES = {"int": int, "float": float, "str": str}
CHOICES = {"gate": list(GATE_KINDS), "calibration": list(CALIBRATION_SOURCES), "protocol": list(PROTOCOLS),
           "model_kind": list(MODEL_KINDS)}
METAVARS = {"n": "N", "p_ratio": "P", "p_dyn": "P", "clamp": "C", "clamp_scale": "S", "max_questions": "K",
            "batch_size": "B", "window": "TOKENS", "min_tokens": "TOKENS", "model": "NAME", "sae": "SAE",
            "device": "DEVICE", "forget_corpus": "SOURCE", "retain_corpus": "SOURCE", "forget_questions": "SOURCE",
            "retain_questions": "SOURCE"}

ALL_FIELDS = tuple(f.name for f in fields(PipelineConfig))
FIT_FIELDS = tuple(name for name in ALL_FIELDS if name not in ("forget_questions", "max_questions"))
"""What `fit` uses: no evaluation questions (the retain questions only as the calibration split)."""
EVAL_FIELDS = ("model", "model_kind", "sae", "forget_questions", "retain_questions", "protocol", "batch_size", "max_questions",
               "calibration", "device")
"""What `eval` uses: the guardrail comes fitted (--guardrail); --calibration says which retain questions to hold out."""
SWEEP_FIELDS = tuple(name for name in ALL_FIELDS if name not in ("n", "p_ratio", "p_dyn", "clamp", "clamp_scale"))
"""What `sweep` uses: the swept values replace N, p_ratio, p_dyn and the clamp."""
_HUB_PREFIXES = ("wmdp:", "mmlu:", "wmdp-corpora:")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _number(kind: type, name: str, low: float | None, high: float | None) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` within [low, high], else an error naming the range."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (low is not None and value < low) or (high is not None and value > high) or value != value:
            span = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{name} must be {span}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _option(field: Field, default: Any) -> dict[str, Any]:
    kind = _TYPES[str(field.type).split(" | ")[0]]
    low, high = field.metadata.get("minimum"), field.metadata.get("maximum")
    shown = "unset" if default is None else f"{default:g}" if isinstance(default, float) else default
    return {
        "type": _number(kind, field.name, low, high) if low is not None or high is not None else kind,
        "default": default, "choices": CHOICES.get(field.name), "metavar": METAVARS.get(field.name),
        "help": f"{field.metadata['help']} (default: {shown})",
    }


def add_config_args(parser: argparse.ArgumentParser, only: Iterable[str] | None = None,
                    defaults: Mapping[str, Any] | None = None) -> None:
    """The :class:`PipelineConfig` fields named in ``only`` (default: all) as ``--field-name`` options with their
    help, choices and ranges; ``defaults`` overrides a field's default for this command. Adds ``--quiet``."""
    wanted = set(ALL_FIELDS if only is None else only)
    unknown = wanted - set(ALL_FIELDS)
    if unknown:
        raise ValueError(f"not PipelineConfig fields: {sorted(unknown)}")
    group = parser.add_argument_group("settings (dsg_lens.config.PipelineConfig)")
    for field in fields(PipelineConfig):
        if field.name in wanted:
            default = (defaults or {}).get(field.name, field.default)
            group.add_argument(f"--{field.name.replace('_', '-')}", **_option(field, default))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The :class:`PipelineConfig` of the options given (fields a command does not offer keep their defaults),
    with its data sources checked: embedded names and local files are read now, so a missing file or a
    malformed line fails before the model loads."""
    cfg = PipelineConfig(**{f.name: getattr(args, f.name) for f in fields(PipelineConfig) if hasattr(args, f.name)})
    check_sources(cfg, [f.name for f in fields(PipelineConfig) if hasattr(args, f.name)])
    return cfg


def _is_local(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.exists() or path.suffix.lower() in _LOCAL_SUFFIXES or spec.startswith((".", "/", "~"))


def check_sources(cfg: PipelineConfig, names: Iterable[str]) -> None:
    """Read the embedded and local data sources among the fields ``names`` (hub ids are left for later) and check
    that a local ``--sae`` folder exists: a ValueError naming the option and the problem otherwise."""
    from dsg_lens.pipeline import load_questions, load_texts

    for name in names:
        spec = getattr(cfg, name)
        flag = f"--{name.replace('_', '-')}"
        if name == "sae" and spec != "embedded" and ":" not in spec and not (Path(spec) / "cfg.json").is_file():
            raise ValueError(f"{flag} {spec}: not an SAELens folder (cfg.json + sae_weights.safetensors), "
                             "'embedded', or 'release:sae_id'")
        metadata = next(f.metadata for f in fields(PipelineConfig) if f.name == name)
        if not metadata.get("path") or spec.startswith(_HUB_PREFIXES) or not (
                spec.startswith("embedded:") or _is_local(spec)):
            continue
        try:
            loaded = (load_questions if name.endswith("questions") else load_texts)(spec)
        except (ValueError, OSError) as error:
            raise ValueError(f"{flag} {spec}: {error}") from None
        if not loaded:
            raise ValueError(f"{flag} {spec}: no {'questions' if name.endswith('questions') else 'texts'} in it")


def _load(cfg: PipelineConfig, with_sae: bool = True) -> tuple[Any, Any]:
    """The model (on this rank's device under torchrun) and, with ``with_sae``, the SAE on the model's device."""
    from dsg_lens import distributed
    from dsg_lens.models import load_model
    from dsg_lens.pipeline import load_sae

    model = load_model(cfg.model, kind=cfg.model_kind, device=distributed.device_for(cfg.device))
    return model, load_sae(cfg.sae, device=model.cfg.device, model=cfg.model) if with_sae else None


def _show(metrics: Mapping[str, Any], side: str) -> str:
    low, high = metrics[f"{side}_ci95"]
    return f"{metrics[f'{side}_acc']:.3f} [{low:.3f}, {high:.3f}]"


def accuracy_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Forget and retain accuracy with 95% intervals, one row per model (``{"base": metrics, "dsg": ...}``)."""
    first = next(iter(rows.values()))
    head = (f"{'':6} {'forget acc (n=' + str(first['forget_n']) + ')':<26} "
            f"{'retain acc (n=' + str(first['retain_n']) + ')':<26}")
    return "\n".join([head] + [f"{name:6} {_show(m, 'forget'):<26} {_show(m, 'retain'):<26}"
                               for name, m in rows.items()])


def demo_summary(report: Mapping[str, Any], out: str | Path) -> str:
    """What `dsg-lens demo` prints last: tau, the headline table and the paths it wrote."""
    cfg, features = report["config"], report["features"]
    out = Path(out)
    written = [out / "report.json", out / "guardrail", out / "stats_forget", out / "stats_retain"]
    figures = report.get("figures", [])
    lines = [
        f"tau = {features['tau']:.4g}  ({cfg['gate']} gate, N={cfg['n']}, p_ratio={cfg['p_ratio']:g}, "
        f"p_dyn={cfg['p_dyn']:g}, clamp={cfg['clamp']:g}; calibrated on held-out retain {cfg['calibration']})",
        "",
        accuracy_table({"base": report["base"], "DSG": report["dsg"]}),
        "",
        f"time: {report['timing_s']['total']:.0f} s (fit {report['timing_s']['fit']:.0f} s)",
        "written: " + ", ".join(str(p) + ("/" if p.suffix == "" else "") for p in written)
        + (f", {out / 'figures'}/ ({len(figures)} files)" if figures else ""),
    ]
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> None:
    from dsg_lens.demo import run_demo

    report = run_demo(args.out, config_from_args(args), progress=not args.quiet)
    print(demo_summary(report, args.out))


def _fit(args: argparse.Namespace) -> None:
    from dsg_lens import distributed
    from dsg_lens.pipeline import fit_guardrail, load_texts

    cfg = config_from_args(args)
    forget_texts, retain_texts = load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus)
    model, sae = _load(cfg)
    main = distributed.is_main()
    fitted = fit_guardrail(model, sae, forget_texts, retain_texts, cfg, progress=not args.quiet and main)
    if main:
        fitted.guard.save(args.out)
        print(f"saved {fitted.guard} to {args.out} ({fitted.seconds:.1f} s)")


def _check_guardrail(folder: str | None) -> None:
    if folder is not None and not (Path(folder) / "guardrail.json").is_file():
        raise ValueError(f"--guardrail {folder}: no guardrail.json there (write one with `dsg-lens fit --out "
                         f"{folder}` or guard.save(folder))")


def _eval(args: argparse.Namespace) -> None:
    from dsg_lens import distributed

    cfg = config_from_args(args)
    _check_guardrail(args.guardrail)
    from dsg_lens.guardrail import DynamicSAEGuardrail
    from dsg_lens.pipeline import base_correct_questions, evaluate_questions

    model, sae = _load(cfg, with_sae=args.guardrail is not None)
    main = distributed.is_main()
    progress = not args.quiet and main
    forget_q, retain_q = base_correct_questions(model, cfg, progress=progress)
    if args.guardrail:
        with DynamicSAEGuardrail.load(args.guardrail, sae=sae).attached(model):
            result = evaluate_questions(model, forget_q, retain_q, cfg.protocol, cfg.batch_size, progress)
    else:
        result = evaluate_questions(model, forget_q, retain_q, cfg.protocol, cfg.batch_size, progress)
    if main:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"guardrail": args.guardrail, **result}, indent=2))
        print(accuracy_table({"DSG" if args.guardrail else "base": result}))
        print(f"written: {args.out}")


def _sweep(args: argparse.Namespace) -> None:
    from dsg_lens.demo import sweep_embedded

    result = sweep_embedded(config_from_args(args), args.out, n_values=args.n_values, clamp_values=args.clamp_values,
                            p_ratio_values=args.p_ratio_values, p_dyn_values=args.p_dyn_values,
                            relative=args.relative, naive=args.naive, progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.to_dict().items() if k in ("score", "pareto")}, indent=2))
    print(f"written: {Path(args.out) / 'sweep.json'}, {Path(args.out) / 'sweep.csv'}")


def _percentiles(name: str) -> Callable[[str], float]:
    return _number(float, name, 0, 100)


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole pipeline offline on the embedded default: fit, evaluate, report, figures",
        description="Statistics on the forget and retain corpora, feature selection, calibration of tau, the "
                    "guardrail, forget/retain accuracy with and without it, gate rates, report.json and figures "
                    "(everything offline on the embedded SmolLM2-135M-Instruct, shipped SAE and WordNet "
                    "benchmark unless told otherwise). Ends with tau, the accuracy table and the paths written.")
    add_config_args(demo, defaults={"max_questions": DEMO_MAX_QUESTIONS})
    demo.add_argument("--out", default="dsg_out", help="output folder (default: dsg_out)")
    demo.set_defaults(func=_demo)

    fit = subparsers.add_parser(
        "fit", help="statistics, feature selection and calibration; writes a guardrail folder",
        description="Fit a guardrail: latent statistics on both corpora, the top-N forget features, tau from the "
                    "gate's scores on retain inputs; writes GUARD/guardrail.json + .safetensors. Runs on several "
                    "processes under torchrun (statistics and calibration sharded; rank 0 writes).")
    add_config_args(fit, only=FIT_FIELDS)
    fit.add_argument("--out", required=True, metavar="GUARD", help="guardrail folder to write")
    fit.set_defaults(func=_fit, distributed=True)

    evaluate = subparsers.add_parser(
        "eval", help="forget/retain accuracy of the base model or with a saved guardrail",
        description="Forget and retain accuracy (95% Wilson intervals) on the questions the base model answers "
                    "correctly, without or with a guardrail written by `dsg-lens fit`. Runs on several processes "
                    "under torchrun (scoring sharded; rank 0 writes).")
    add_config_args(evaluate, only=EVAL_FIELDS)
    evaluate.add_argument("--guardrail", default=None, metavar="GUARD",
                          help="guardrail folder from `dsg-lens fit` (default: none, the base model)")
    evaluate.add_argument("--out", default="dsg_out/eval.json", help="JSON to write (default: dsg_out/eval.json)")
    evaluate.set_defaults(func=_eval, distributed=True)

    sweep = subparsers.add_parser(
        "sweep", help="sweep N, clamp, p_ratio, p_dyn; table + Pareto front + unlearning score",
        description="One statistics pass, one gate scan per p_ratio, tau per configuration from the calibration "
                    "inputs; each configuration's forget/retain accuracy (only the questions its guardrail "
                    "clamps are re-scored). Writes OUT/sweep.json and sweep.csv.")
    add_config_args(sweep, only=SWEEP_FIELDS)
    sweep.add_argument("--n-values", type=_number(int, "N", 1, None), nargs="+", default=[10, 20, 40], metavar="N",
                       help="numbers of selected latents N (default: 10 20 40)")
    sweep.add_argument("--clamp-values", type=_number(float, "clamp", 0, None), nargs="+",
                       default=[50.0, 200.0, 500.0], metavar="C", help="clamp values c (default: 50 200 500)")
    sweep.add_argument("--p-ratio-values", type=_percentiles("p_ratio"), nargs="+", default=[95.0], metavar="P",
                       help="p_ratio percentiles (default: 95)")
    sweep.add_argument("--p-dyn-values", type=_percentiles("p_dyn"), nargs="+", default=[90.0, 95.0, 99.0],
                       metavar="P", help="p_dyn percentiles (default: 90 95 99)")
    sweep.add_argument("--relative", action="store_true",
                       help="clamp values are relative: c_j = value x mean residual norm / |W_dec[j]|")
    sweep.add_argument("--naive", action="store_true",
                       help="re-score every question under every configuration (the reference; default: only the "
                            "questions each configuration's guardrail clamps)")
    sweep.add_argument("--out", default="dsg_out/sweep", help="output folder (default: dsg_out/sweep)")
    sweep.set_defaults(func=_sweep)
