"""`dsg-lens figures --results DIR`: draw every figure a results folder has data for (PNG + SVG), from its JSON.

The figures go to RESULTS/figures/ unless --out names another folder; a folder that already holds figures is
written into only with --force, so the repository's figures/ is never replaced by accident.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _figures(args: argparse.Namespace) -> None:
    results = Path(args.results)
    if not results.is_dir():
        raise ValueError(f"--results {results}: no such folder (write one with `dsg-lens demo --out {results}`)")
    out = Path(args.out) if args.out is not None else results / "figures"
    existing = sorted(p.name for p in out.glob("*") if p.suffix in (".png", ".svg")) if out.is_dir() else []
    if existing and args.out is not None and not args.force:
        raise ValueError(f"--out {out} already holds {len(existing)} figures ({', '.join(existing[:3])}, ...): "
                         "pass --force to replace them, or choose another --out")
    from dsg_lens.viz.render import render_figures

    written = render_figures(results, out)
    for path in written:
        print(path)
    print(f"written: {len(written)} files in {out}/")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("figures", help="draw every figure that a results folder has data for (PNG + SVG)",
                                   description=__doc__)
    parser.add_argument("--results", required=True, metavar="DIR",
                        help="folder of results, e.g. the output of `dsg-lens demo` (searched recursively)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the figures (default: RESULTS/figures)")
    parser.add_argument("--force", action="store_true",
                        help="replace the figures in an --out folder that already holds some")
    parser.set_defaults(func=_figures)
