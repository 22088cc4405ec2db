"""`dsg-lens lm-eval ...`: lm-evaluation-harness's own command line with the `dsg` model registered.

Everything after `lm-eval` goes to lm-eval unchanged, e.g.

    dsg-lens lm-eval run --model dsg --model_args model=smollm2-135m-instruct,sae=embedded,guardrail=guard/ \\
        --tasks wmdp_bio,mmlu --batch_size 16 --output_path results/

`dsg` model_args: model (name, default smollm2-135m-instruct), kind (hooked | sae | bridge), dtype (float32 |
bfloat16 | float16), device, sae (embedded | SAELens folder | release:sae_id), guardrail (a folder written by
`dsg-lens fit`; omit for the base model), batch_size, max_length, max_gen_toks. lm-eval's options:
`dsg-lens lm-eval run --help`. Needs the optional extra: pip install "dsg-lens[lm-eval]".
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

NAME = "lm-eval"


def run(argv: Sequence[str]) -> None:
    """Hand ``argv`` to lm-eval's command line after registering ``dsg`` (``--help`` alone: this help)."""
    if not argv or list(argv) in (["-h"], ["--help"]):
        print(f"usage: dsg-lens {NAME} [lm-eval arguments ...]\n\n{__doc__}")
        return
    try:
        from dsg_lens.lm_eval_model import main
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith("lm_eval"):
            raise
        raise ValueError('lm-eval is not installed: pip install "dsg-lens[lm-eval]" (or pip install lm-eval)') from None
    main(argv)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(NAME, help="lm-evaluation-harness with the `dsg` model (arguments go to lm-eval)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="passed to lm-eval unchanged")
    parser.set_defaults(func=lambda args: run(args.lm_eval_args))
