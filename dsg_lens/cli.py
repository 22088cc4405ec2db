"""dsg-lens: Dynamic SAE Guardrails (DSG). Fit a guardrail that makes a TransformerLens model forget a topic
through an SAE's latents, evaluate it, sweep its settings, run lm-eval with it; offline on an embedded model.

One subcommand per module in `dsg_lens.commands` (each exposes `register`). Building the parser imports no torch, TransformerLens or SAELens (the command modules import them inside the
functions that run), so `--help` answers at once. Bad input ends in one line, `dsg-lens COMMAND: error: ...`, and
exit status 2 (set DSG_LENS_TRACEBACK=1 for the traceback). Under `torchrun` with several processes, the commands
that support it (fit, eval) shard their statistics, calibration scan and scoring over the ranks (rank 0 writes).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

import dsg_lens.commands
from dsg_lens.commands import lm_eval as lm_eval_command

TRACEBACK_ENV = "DSG_LENS_TRACEBACK"
USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
"""What bad input raises (dsg-lens's checks raise ValueError naming the problem and the fix; missing files,
unreachable hubs and unwritable folders raise OSError subclasses): printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``<prog>: error: <message> (see <prog> --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (those without subcommands of their own), depth first."""
    subactions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subactions:
        return [parser]
    return [leaf for action in subactions for sub in dict.fromkeys(action.choices.values())
            for leaf in _leaf_parsers(sub)]


ORDER = ("fit_eval", "lm_eval", "baselines", "studies", "bench", "figures", "train_sae")
"""Command modules in the order `dsg-lens --help` lists their commands (others follow, alphabetically)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsg-lens", description=__doc__.split("\n\n")[0],
                     epilog="Start with `dsg-lens demo`. Each command's options: dsg-lens COMMAND --help. "
                            "Docs: README.md, docs/.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(dsg_lens.commands.__path__) if not m.name.startswith("_")]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"dsg_lens.commands.{name}").register(subparsers)
    for leaf in _leaf_parsers(parser):
        leaf.set_defaults(_parser=leaf)
    return parser


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [lm_eval_command.NAME]:  # lm-eval parses its own arguments
        prog, run = f"dsg-lens {lm_eval_command.NAME}", lambda: lm_eval_command.run(argv[1:])
    else:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # named by the command that does not take them, not by the top-level parser
            args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        prog, run = args._parser.prog, lambda: _run(args, prog)
    try:
        run()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except USAGE_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        _fail(prog, " ".join(str(error).split()) or type(error).__name__)


def _run(args: argparse.Namespace, prog: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        _run_distributed(args, prog)
    else:
        args.func(args)


def _run_distributed(args: argparse.Namespace, prog: str) -> None:
    """Run a command on every rank of a ``torchrun`` launch, its heavy passes sharded (:mod:`dsg_lens.distributed`)."""
    if not getattr(args, "distributed", False):
        _fail(prog, "runs in one process; under torchrun with several processes use `dsg-lens fit` or "
                    "`dsg-lens eval` (or launch this command without torchrun)")
    from dsg_lens import distributed

    distributed.init_from_env()
    try:
        with distributed.sharded():
            args.func(args)
    finally:
        distributed.close()


if __name__ == "__main__":
    main()
