"""`dsg-lens` command line: one subcommand per module in `dsg_lens.commands` (each exposes `register`)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence

import dsg_lens.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsg-lens", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in sorted(pkgutil.iter_modules(dsg_lens.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"dsg_lens.commands.{module.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
