"""`dsg-lens figures --results DIR --out figures/`: regenerate every paper figure from saved JSON results."""

from __future__ import annotations

import argparse


def _figures(args: argparse.Namespace) -> None:
    from dsg_lens.viz.render import render_figures

    for path in render_figures(args.results, args.out):
        print(path)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("figures", help="draw every figure that a results folder has data for (PNG + SVG)")
    parser.add_argument("--results", required=True, help="folder of results (e.g. the output of `dsg-lens demo`)")
    parser.add_argument("--out", default="figures", help="folder for the figures (default: figures)")
    parser.set_defaults(func=_figures)
