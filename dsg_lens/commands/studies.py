"""`dsg-lens study relearn | sequential | efficiency | zeroshot | latent-ablation | attacks | gate-shapes`: studies, each writing
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
        from dsg_lens.studies.relearn import RelearnConfig

        overrides = {k: v for k, v in rmu_overrides(args).items() if v is not None}
        config = RelearnConfig(steps=args.steps, lr=args.lr, n_texts=args.examples, batch_size=args.ft_batch_size,
                               eval_steps=tuple(args.eval_steps) if args.eval_steps else None)
        result = runners.run_relearn(setup, args.out, config, arms=tuple(args.arms), best_from=args.best_from,
                                     min_retain=args.min_retain,
                                     rmu=runners.default_rmu(setup, **overrides) if overrides else None,
                                     with_retain=args.with_retain, progress=progress)
        summary = {"first": result["curve"][0], "last": result["curve"][-1]}
    elif args.study == "sequential":
        result = runners.run_sequential(setup, args.out, topics=tuple(args.topics),
                                        max_questions=args.topic_questions or None, progress=progress)
        summary = {"steps": [{k: s[k] for k in ("added", "retain_acc", "forget_acc")} for s in result["steps"]]}
    elif args.study == "efficiency":
        result = runners.run_efficiency(setup, args.out, fractions=tuple(args.fractions), progress=progress)
        summary = [{k: r[k] for k in ("fraction", "forget_acc", "retain_acc", "jaccard_vs_largest")}
                   for r in result["rows"]]
    elif args.study == "zeroshot":
        seeds = {"seed_words": tuple(args.seed_words)} if args.seed_words else {}
        result = runners.run_zeroshot(setup, args.out, n_generic=args.n_generic, taus=tuple(args.taus),
                                      progress=progress, **seeds)
        summary = {"features": result["features"], "best": result["best"],
                   "rows": [{k: r[k] for k in ("tau", "forget_acc", "retain_acc", "tpr", "fpr")}
                            for r in result["rows"]]}
    elif args.study == "latent-ablation":
        from dsg_lens.studies.latent_ablation import LatentAblationConfig

        config = LatentAblationConfig(n_texts=args.texts, batch_size=setup.config.batch_size)
        result = runners.run_latent_ablation(setup, args.out, config, progress=progress)
        summary = {"latents": result["latents"], "effects": result["effects"], "all": result["all"]}
    elif args.study == "gate-shapes":
        from dsg_lens.studies.gate_shapes import GateShapesConfig, best_rows

        config = GateShapesConfig(n_values=tuple(args.n_values), p_ratio=args.p_ratio, p_dyn=args.p_dyn)
        result = runners.run_gate_shapes(setup, args.out, config, progress=progress)
        summary = [{k: r[k] for k in ("n", "gate", "calibration", "tau", "by_shape")} for r in best_rows(result)[:5]]
    else:
        from dsg_lens.pipeline import load_texts

        result = runners.run_attacks(
            setup, args.out, gates=tuple(args.gates), filler_tokens=tuple(args.filler_tokens),
            filler_after=tuple(args.filler_after), turns=tuple(args.turns), system_tokens=tuple(args.system_tokens),
            neighbours=not args.no_neighbours, error_term=not args.no_error_term,
            measure_accuracy=not args.no_accuracy, max_retain_attacked=args.max_retain_attacked,
            filler_texts=load_texts(args.filler_corpus) if args.filler_corpus else None, progress=progress)
        summary = {"retain": {k: {m: v[m] for m in ("fpr", "retain_acc")} for k, v in result["retain"].items()},
                   "attacks": {a: [{"strength": r["strength"], **{g: {m: v[m] for m in ("firing_rate", "retain_fpr")}
                                                                  for g, v in r["guards"].items()}} for r in rows]
                               for a, rows in result["attacks"].items()}}
    print(json.dumps(summary, indent=2))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="robustness studies of DSG (relearn, sequential, ...)",
                                   description=__doc__)
    studies = parser.add_subparsers(dest="study", required=True)
    relearn = studies.add_parser(
        "relearn", help="fine-tune on forget texts: base vs static clamping vs DSG (attached) vs RMU",
        description="Full fine-tuning on the first --examples forget-corpus texts; forget accuracy of every arm at "
                    "the same steps. DSG and static clamping stay attached while the model is fine-tuned.")
    relearn.add_argument("--examples", type=int, default=32, help="forget-corpus texts to fine-tune on (default: 32)")
    relearn.add_argument("--steps", type=int, default=16, help="fine-tuning steps (default: 16)")
    relearn.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (default: 1e-4)")
    relearn.add_argument("--ft-batch-size", type=int, default=4, help="texts per fine-tuning step (default: 4)")
    relearn.add_argument("--eval-steps", type=int, nargs="+", default=None,
                         help="steps at which to measure (default: 0, 1, 2, 4, ... and --steps)")
    relearn.add_argument("--arms", nargs="+", default=["static_clamp", "dsg", "rmu"],
                         choices=["static_clamp", "dsg", "rmu"], help="methods attacked (the base model always is)")
    relearn.add_argument("--best-from", default=None, metavar="DIR",
                         help="results folder: each method at its best sweep point (dsg_lens.baselines.best)")
    relearn.add_argument("--min-retain", type=float, default=0.95,
                         help="retain accuracy a best point keeps (default: 0.95)")
    relearn.add_argument("--with-retain", action="store_true", help="also measure retain accuracy at every step")
    add_rmu_args(relearn)
    sequential = studies.add_parser("sequential", help="remove several WordNet domains one after another")
    sequential.add_argument("--topics", nargs="+", default=["noun.animal", "noun.food", "noun.artifact"],
                            help="WordNet domains to unlearn, in order; the others are retained (default: "
                                 "noun.animal noun.food noun.artifact)")
    sequential.add_argument("--topic-questions", type=int, default=60,
                            help="evaluation questions per topic, twice that for retain (0: all; default: 60)")
    efficiency = studies.add_parser("efficiency", help="selection from a fraction of the forget corpus")
    efficiency.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0],
                            help="fractions of the forget corpus to select from (default: 0.1 0.25 0.5 1)")
    zeroshot = studies.add_parser("zeroshot", help="latents from a few seed words, tau from a grid")
    zeroshot.add_argument("--seed-words", nargs="+", default=None,
                          help="words naming the forget topic (default: animal category words, "
                               "dsg_lens.studies.zeroshot.ANIMAL_SEEDS)")
    zeroshot.add_argument("--n-generic", type=int, default=100,
                          help="retain-corpus texts the seed words are ranked against (default: 100)")
    zeroshot.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8],
                          help="gate thresholds tau to try (default: 0.1 0.2 0.3 0.4 0.5 0.6 0.8)")
    ablation = studies.add_parser("latent-ablation",
                                  help="each selected latent zero-ablated: next-token loss on forget / retain text")
    ablation.add_argument("--texts", type=int, default=32, help="corpus texts per side (default: 32)")
    attacks = studies.add_parser("attacks", help="dilution, split turns, paraphrase, system prompt, benign "
                                 "neighbours, error-term steering: the paper gate vs robust gates")
    attacks.add_argument("--gates", nargs="+", default=["paper", "window", "count", "count_turn", "probe", "count|probe"],
                         help="gates to attack: paper, window, count, count_turn, probe, or several joined by '|' "
                              "(on when any is on)")
    attacks.add_argument("--filler-tokens", type=int, nargs="*", default=[0, 64, 256, 1024, 1600],
                         help="benign filler tokens before the question (none: skip)")
    attacks.add_argument("--filler-after", type=int, nargs="*", default=[0, 64, 256, 1024, 1600],
                         help="benign filler tokens between the question and the answer cue (none: skip)")
    attacks.add_argument("--turns", type=int, nargs="*", default=[1, 2, 3, 5], help="user turns to split over")
    attacks.add_argument("--system-tokens", type=int, nargs="*", default=[0, 256, 1024],
                         help="filler tokens as the chat template's system prompt")
    attacks.add_argument("--max-retain-attacked", type=int, default=None,
                         help="retain questions rewritten by each attack for its false-positive rate (default: all)")
    attacks.add_argument("--filler-corpus", default=None, metavar="SOURCE",
                         help="benign filler texts (a corpus source as --retain-corpus; default: the retain corpus)")
    attacks.add_argument("--no-accuracy", action="store_true", help="gate rates only (no MCQ scoring: much faster)")
    attacks.add_argument("--no-neighbours", action="store_true", help="skip the benign-neighbour false-fire rate")
    attacks.add_argument("--no-error-term", action="store_true", help="skip the error-term steering attack")
    shapes = studies.add_parser("gate-shapes", help="gate TPR/FPR on questions as cloze, plain text and chat turns")
    shapes.add_argument("--n-values", type=int, nargs="+", default=[10, 20, 40], help="numbers of features N")
    for sub in (relearn, sequential, efficiency, zeroshot, ablation, attacks, shapes):
        add_setup_args(sub)
        sub.set_defaults(func=_run)
