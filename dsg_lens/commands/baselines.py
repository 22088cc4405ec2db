"""`dsg-lens compare`: base / static clamping / RMU / DSG (paper gate) / DSG (window gate) side by side."""

from __future__ import annotations

import argparse

from dsg_lens.commands.pipeline import _add_config_args, _config


def add_rmu_args(parser: argparse.ArgumentParser) -> None:
    """RMU settings (None = the defaults of dsg_lens.studies.runners.default_rmu)."""
    group = parser.add_argument_group("RMU")
    group.add_argument("--rmu-layer", type=int, default=None, help="(default: the SAE's layer)")
    group.add_argument("--rmu-update-layers", type=int, nargs="+", default=None, help="(default: layer-2..layer)")
    group.add_argument("--rmu-steering-coef", type=float, default=None,
                       help="(default: --rmu-steering-scale x mean residual norm)")
    group.add_argument("--rmu-steering-scale", type=float, default=None, help="(default: 4)")
    group.add_argument("--rmu-alpha", type=float, default=None, help="(default: 100)")
    group.add_argument("--rmu-lr", type=float, default=None, help="(default: 5e-5)")
    group.add_argument("--rmu-steps", type=int, default=None, help="(default: 100)")
    group.add_argument("--rmu-batch-size", type=int, default=None, help="(default: 4)")
    group.add_argument("--rmu-seed", type=int, default=None, help="(default: 0)")


def rmu_overrides(args: argparse.Namespace) -> dict:
    names = ("layer", "update_layers", "steering_coef", "steering_scale", "alpha", "lr", "steps", "batch_size", "seed")
    values = {name: getattr(args, f"rmu_{name}") for name in names}
    if values["update_layers"] is not None:
        values["update_layers"] = tuple(values["update_layers"])
    return values


def add_setup_args(parser: argparse.ArgumentParser) -> None:
    _add_config_args(parser)
    parser.add_argument("--device", default=None, help="model device (default: TransformerLens's choice)")
    parser.add_argument("--out", required=True, help="output folder")


def _compare(args: argparse.Namespace) -> None:
    from dsg_lens.baselines.compare import format_table
    from dsg_lens.studies.common import load_setup
    from dsg_lens.studies.runners import default_rmu, run_compare

    setup = load_setup(_config(args), device=args.device, progress=not args.quiet)
    result = run_compare(setup, args.out, window=args.window, rmu=default_rmu(setup, **rmu_overrides(args)),
                         methods=args.methods, progress=not args.quiet)
    print(format_table(result))


def register(subparsers: argparse._SubParsersAction) -> None:
    from dsg_lens.baselines.compare import METHODS

    parser = subparsers.add_parser("compare", help="DSG vs static clamping vs RMU on the same model and data",
                                   description=__doc__)
    add_setup_args(parser)
    parser.add_argument("--window", type=int, default=32, help="window of the robust gate (real tokens)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add_rmu_args(parser)
    parser.set_defaults(func=_compare)
