"""`dsg-lens study relearn | sequential | efficiency | zeroshot | attacks | gate-shapes`: robustness studies, each writing
<out>/<name>.json (schemas in the dsg_lens.studies module docstrings)."""

from __future__ import annotations

import argparse
import json

from dsg_lens.commands.baselines import add_rmu_args, add_setup_args, rmu_overrides
from dsg_lens.commands.fit_eval import config_from_args


def _run(args: argparse.Namespace) -> None:
    from dsg_lens.studies import runners
    from dsg_lens.studies.common import load_setup

    setup = load_setup(config_from_args(args), progress=not args.quiet)
    progress = not args.quiet
    if args.study == "relearn":
        result = runners.run_relearn(setup, args.out, n_examples=args.examples, steps=args.steps, lr=args.lr,
                                     with_rmu=not args.no_rmu, rmu=runners.default_rmu(setup, **rmu_overrides(args)),
                                     progress=progress)
        summary = {"first": result["curve"][0], "last": result["curve"][-1]}
    elif args.study == "sequential":
        result = runners.run_sequential(setup, args.out, topics=tuple(args.topics), progress=progress)
        summary = {"steps": [{k: s[k] for k in ("added", "retain_acc", "forget_acc")} for s in result["steps"]]}
    elif args.study == "efficiency":
        result = runners.run_efficiency(setup, args.out, fractions=tuple(args.fractions), progress=progress)
        summary = [{k: r[k] for k in ("fraction", "forget_acc", "retain_acc", "jaccard_vs_largest")}
                   for r in result["rows"]]
    elif args.study == "zeroshot":
        result = runners.run_zeroshot(setup, args.out, taus=tuple(args.taus), progress=progress)
        summary = {"base": result["base"], "best": result["best"]}
    elif args.study == "gate-shapes":
        from dsg_lens.studies.gate_shapes import GateShapesConfig, best_rows

        config = GateShapesConfig(n_values=tuple(args.n_values), p_ratio=args.p_ratio, p_dyn=args.p_dyn)
        result = runners.run_gate_shapes(setup, args.out, config, progress=progress)
        summary = [{k: r[k] for k in ("n", "gate", "calibration", "tau", "by_shape")} for r in best_rows(result)[:5]]
    else:
        result = runners.run_attacks(setup, args.out, window=setup.config.window,
                                     filler_tokens=tuple(args.filler_tokens), turns=tuple(args.turns),
                                     progress=progress)
        summary = {"retain": {k: {m: v[m] for m in ("fpr", "retain_acc")} for k, v in result["retain"].items()},
                   "attacks": {a: [{"strength": r["strength"], "base_acc": r["base_acc"], **r["guards"]} for r in rows]
                               for a, rows in result["attacks"].items()}}
    print(json.dumps(summary, indent=2))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="robustness studies of DSG (relearn, sequential, ...)",
                                   description=__doc__)
    studies = parser.add_subparsers(dest="study", required=True)
    relearn = studies.add_parser("relearn", help="fine-tune on a few forget examples: DSG vs RMU")
    relearn.add_argument("--examples", type=int, default=8, help="forget-corpus texts to fine-tune on")
    relearn.add_argument("--steps", type=int, default=8)
    relearn.add_argument("--lr", type=float, default=1e-5)
    relearn.add_argument("--no-rmu", action="store_true", help="skip the RMU arm")
    add_rmu_args(relearn)
    sequential = studies.add_parser("sequential", help="remove several WordNet domains one after another")
    sequential.add_argument("--topics", nargs="+", default=["noun.animal", "noun.food", "noun.plant"])
    efficiency = studies.add_parser("efficiency", help="selection from a fraction of the forget corpus")
    efficiency.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2, 1.0])
    zeroshot = studies.add_parser("zeroshot", help="selection from a topic description, tau from a grid")
    zeroshot.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6, 0.8])
    attacks = studies.add_parser("attacks", help="dilution, split turns, paraphrase: paper gate vs window gate")
    attacks.add_argument("--filler-tokens", type=int, nargs="+", default=[0, 32, 128, 512])
    attacks.add_argument("--turns", type=int, nargs="+", default=[1, 2, 3, 4])
    shapes = studies.add_parser("gate-shapes", help="gate TPR/FPR on questions as cloze, plain text and chat turns")
    shapes.add_argument("--n-values", type=int, nargs="+", default=[10, 20, 40], help="numbers of features N")
    for sub in (relearn, sequential, efficiency, zeroshot, attacks, shapes):
        add_setup_args(sub)
        sub.set_defaults(func=_run)
