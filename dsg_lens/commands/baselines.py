"""`dsg-lens compare | static-clamp-sweep | rmu-grid`: the baselines (static SAE clamping, RMU) swept on the same
model and data as DSG, and every method side by side (at its best sweep point with --best-from)."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from dsg_lens.commands.fit_eval import add_config_args, config_from_args


RMU_FLAGS: dict[str, tuple[type, str]] = {
    "layer": (int, "(default: the SAE's layer)"),
    "update_layers": (int, "(default: layer-2..layer)"),
    "steering_coef": (float, "(default: --rmu-steering-scale x mean residual norm)"),
    "steering_scale": (float, "(default: 4)"),
    "alpha": (float, "(default: 100)"),
    "lr": (float, "(default: 5e-5)"),
    "steps": (int, "(default: 100)"),
    "batch_size": (int, "(default: 4)"),
    "max_len": (int, "tokens per training window (default: min(128, n_ctx))"),
    "param_set": (str, "trained weights: w_out (the WMDP reference's down_proj), mlp, block (default: w_out)"),
    "seed": (int, "(default: 0)"),
}
"""RMUConfig fields settable from the command line as ``--rmu-<field>`` (type, help)."""


def add_rmu_args(parser: argparse.ArgumentParser) -> None:
    """RMU settings (None = the defaults of dsg_lens.studies.runners.default_rmu)."""
    group = parser.add_argument_group("RMU")
    for name, (kind, help_text) in RMU_FLAGS.items():
        nargs = "+" if name == "update_layers" else None
        group.add_argument(f"--rmu-{name.replace('_', '-')}", type=kind, nargs=nargs, default=None, help=help_text)


def rmu_overrides(args: argparse.Namespace) -> dict:
    """The ``--rmu-*`` values as RMUConfig overrides (None: not given)."""
    values = {name: getattr(args, f"rmu_{name}") for name in RMU_FLAGS}
    if values["update_layers"] is not None:
        values["update_layers"] = tuple(values["update_layers"])
    return values


BASELINE_FIELDS = ("model", "sae", "forget_corpus", "retain_corpus", "forget_questions", "retain_questions",
                   "protocol", "batch_size", "max_questions", "calibration", "device")
"""The settings a baseline sweep uses (no DSG selection, gate or clamp; ``calibration``: whether the held-out
retain questions are left out of the evaluation, as for DSG)."""


def add_setup_args(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    add_config_args(parser, only=only)
    parser.add_argument("--out", required=True, help="output folder")


def _compare(args: argparse.Namespace) -> None:
    from dsg_lens.baselines.compare import format_table
    from dsg_lens.studies.common import load_setup
    from dsg_lens.studies.runners import default_rmu, run_compare, run_compare_best

    setup = load_setup(config_from_args(args), progress=not args.quiet)
    if args.best_from:
        methods = tuple(m for m in args.methods if m in ("dsg_window", "static_clamp", "rmu"))
        result = run_compare_best(setup, args.best_from, args.out, min_retain=args.min_retain, methods=methods,
                                  progress=not args.quiet)
    else:
        result = run_compare(setup, args.out, window=setup.config.window,
                             rmu=default_rmu(setup, **rmu_overrides(args)), methods=args.methods,
                             progress=not args.quiet)
    print(format_table(result))
    print(f"written: {Path(args.out) / 'compare.json'}")


def _static_sweep(args: argparse.Namespace) -> None:
    from dsg_lens.studies.common import load_setup
    from dsg_lens.studies.runners import run_static_sweep

    setup = load_setup(config_from_args(args), progress=not args.quiet)
    result = run_static_sweep(setup, args.out, retain_thresholds=tuple(args.retain_thresholds),
                              n_values=tuple(args.n_values), multipliers=tuple(args.multipliers),
                              min_retain=args.min_retain, naive=args.naive, progress=not args.quiet)
    print(json.dumps({"best": result["best"], "pareto": [
        {k: r[k] for k in ("retain_threshold", "n", "multiplier", "forget_acc", "retain_acc")}
        for r in result["pareto"]]}, indent=2))
    written = [Path(args.out) / "static_clamp_sweep.json"]
    dsg_sweep = Path(args.dsg_sweep)
    if dsg_sweep.is_file():
        from dsg_lens.viz.figures import pareto_plot

        dsg = json.loads(dsg_sweep.read_text())
        written += pareto_plot({"dsg": dsg, "static_clamp": result},
                               Path(args.out) / "pareto_static_vs_dsg",
                               title=f"{len(dsg['rows'])} DSG vs {len(result['rows'])} static-clamping configurations")
    else:
        print(f"no DSG sweep at {dsg_sweep}: the Pareto figure with DSG's front is drawn by `dsg-lens figures`")
    print("written:", ", ".join(str(p) for p in written))


def _rmu_grid(args: argparse.Namespace) -> None:
    from dsg_lens.baselines.rmu import RMUConfig
    from dsg_lens.studies.common import load_setup
    from dsg_lens.studies.runners import run_rmu_grid

    setup = load_setup(config_from_args(args), progress=not args.quiet)
    configs = [RMUConfig(layer=layer, steering_scale=scale, alpha=alpha, lr=lr, steps=steps,
                         batch_size=args.rmu_batch_size, max_len=args.max_len, param_set=args.param_set,
                         seed=args.seed)
               for layer, scale, alpha, lr, steps in itertools.product(args.layers, args.steering_scales, args.alphas,
                                                                       args.lrs, args.steps)]
    result = run_rmu_grid(setup, args.out, configs, min_retain=args.min_retain, resume=not args.no_resume,
                          progress=not args.quiet)
    keys = ("layer", "steering_scale", "alpha", "lr", "steps", "forget_acc", "retain_acc")
    for row in result["rows"]:
        print({**{k: row[k] for k in keys}, "seconds": round(row["cost"]["seconds"], 1),
               "peak_mib": round(row["cost"]["peak_mib"])})
    print(json.dumps({"best": None if result["best"] is None else {k: result["best"][k] for k in keys}}))
    print(f"written: {Path(args.out) / 'rmu_grid.json'}")


def _min_retain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-retain", type=float, default=0.95,
                        help="a best point keeps retain accuracy >= this (default: 0.95)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from dsg_lens.config import COMPARE_METHODS as METHODS

    parser = subparsers.add_parser(
        "compare", help="DSG vs static clamping vs RMU on the same model and data", description=__doc__,
        epilog="With --best-from DIR each method runs at its best point of the sweeps under DIR (sweep/sweep.json, "
               "static_clamp/static_clamp_sweep.json, rmu/rmu_grid.json; see dsg_lens.baselines.best).")
    add_setup_args(parser)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to compare (default: all)")
    parser.add_argument("--best-from", default=None, metavar="DIR",
                        help="results folder whose sweeps give each method's best point (methods dsg_window, "
                             "static_clamp, rmu); without it: the settings given here")
    _min_retain(parser)
    add_rmu_args(parser)
    parser.set_defaults(func=_compare)

    static = subparsers.add_parser(
        "static-clamp-sweep", help="static SAE clamping (Farrell et al.) over SAEBench's grid, with a Pareto front",
        description="Select latents by retain firing frequency <= threshold ranked by forget frequency, clamp each "
                    "to -multiplier where it fires (real tokens only); forget/retain accuracy per configuration. "
                    "Writes OUT/static_clamp_sweep.json and, beside DSG's sweep, OUT/pareto_static_vs_dsg.png/svg.")
    add_setup_args(static, only=BASELINE_FIELDS)
    static.add_argument("--retain-thresholds", type=float, nargs="+", default=[0.001, 0.01],
                        help="retain firing-frequency thresholds (default: 0.001 0.01, SAEBench)")
    static.add_argument("--n-values", type=int, nargs="+", default=[10, 20], help="numbers of latents (default: 10 20)")
    static.add_argument("--multipliers", type=float, nargs="+", default=[25.0, 50.0, 100.0, 200.0],
                        help="clamp multipliers (default: 25 50 100 200, SAEBench)")
    static.add_argument("--naive", action="store_true", help="re-score every question under every configuration")
    static.add_argument("--dsg-sweep", default="figures/results/sweep/sweep.json",
                        help="DSG's sweep JSON for the Pareto figure (default: figures/results/sweep/sweep.json)")
    _min_retain(static)
    static.set_defaults(func=_static_sweep)

    grid = subparsers.add_parser(
        "rmu-grid", help="RMU (Li et al.) over a grid: accuracy, wall time and peak memory of each run",
        description="Train RMU (the WMDP reference's update: mlp.W_out of layers l-2..l) for every combination of "
                    "the values given, measure each run's wall time and peak memory, evaluate it; writes "
                    "OUT/rmu_grid.json after every run (rerunning skips the configurations already there).")
    add_setup_args(grid, only=BASELINE_FIELDS)
    grid.add_argument("--layers", type=int, nargs="+", default=[6], help="RMU layers l (default: 6)")
    grid.add_argument("--steering-scales", type=float, nargs="+", default=[10.0],
                      help="steering coefficient as a multiple of the mean residual norm at l (default: 10)")
    grid.add_argument("--alphas", type=float, nargs="+", default=[100.0], help="retain-loss weights (default: 100)")
    grid.add_argument("--lrs", type=float, nargs="+", default=[1e-3], help="learning rates (default: 1e-3)")
    grid.add_argument("--steps", type=int, nargs="+", default=[50], help="training steps (default: 50)")
    grid.add_argument("--rmu-batch-size", type=int, default=4, help="forget and retain texts per step (default: 4)")
    grid.add_argument("--max-len", type=int, default=None, help="tokens per training window (default: min(128, n_ctx))")
    grid.add_argument("--param-set", choices=["w_out", "mlp", "block"], default="w_out",
                      help="trained weights (default: w_out, the reference's down_proj)")
    grid.add_argument("--seed", type=int, default=0, help="random seed of every run (default: 0)")
    grid.add_argument("--no-resume", action="store_true", help="start a new grid instead of extending OUT's")
    _min_retain(grid)
    grid.set_defaults(func=_rmu_grid)
