"""`dsg-lens compare`: base / static clamping / RMU / DSG (paper gate) / DSG (window gate) side by side."""

from __future__ import annotations

import argparse

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


def add_setup_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--out", required=True, help="output folder")


def _compare(args: argparse.Namespace) -> None:
    from dsg_lens.baselines.compare import format_table
    from dsg_lens.studies.common import load_setup
    from dsg_lens.studies.runners import default_rmu, run_compare

    setup = load_setup(config_from_args(args), progress=not args.quiet)
    result = run_compare(setup, args.out, window=setup.config.window, rmu=default_rmu(setup, **rmu_overrides(args)),
                         methods=args.methods, progress=not args.quiet)
    print(format_table(result))


def register(subparsers: argparse._SubParsersAction) -> None:
    from dsg_lens.baselines.compare import METHODS

    parser = subparsers.add_parser("compare", help="DSG vs static clamping vs RMU on the same model and data",
                                   description=__doc__)
    add_setup_args(parser)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add_rmu_args(parser)
    parser.set_defaults(func=_compare)
