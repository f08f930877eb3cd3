"""The ``lastlayer`` command line: train, validate, ls, env, eval, choose-k, probe, embed,
export, serve, push.

A thin dispatcher: each command is one module of this package (``lastlayer/cli/eval.py``
for ``lastlayer eval``, ...) holding its help line (``HELP``), its examples (``EXAMPLES``),
its options dataclass (``Options``, from :mod:`lastlayer.config.commands`, whose fields
become the flags: :mod:`lastlayer.cli.flags`) and ``run(options) -> exit status``. This
module builds the parser from them, dispatches, and turns user errors into exit status 2.

The commands that load a model import torch when they run; ``--help``, ``validate``, ``ls``
and ``env`` start at once. Before a command runs, the C allocator is set to keep freed
memory for reuse (:func:`lastlayer.core.allocator.keep_freed_memory`: the process is the
command's own; ``LASTLAYER_KEEP_FREED_MEMORY=0`` leaves it alone).
Configuration and data errors exit with status 2 and a one-line message, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from lastlayer._version import __version__
from lastlayer.cli import choose_k, embed, env, export, ls, probe, push, serve, train, validate
from lastlayer.cli import eval as eval_
from lastlayer.cli.flags import add_options, to_options
from lastlayer.config import ConfigError
from lastlayer.core.allocator import keep_freed_memory

COMMANDS: dict[str, ModuleType] = {
    "train": train, "validate": validate, "ls": ls, "env": env, "eval": eval_,
    "choose-k": choose_k, "probe": probe, "embed": embed, "export": export, "serve": serve,
    "push": push,
}
# the order of the examples in `lastlayer --help` (as before the commands had modules)
EXAMPLES_ORDER = ("train", "validate", "ls", "env", "eval", "embed", "choose-k", "probe",
                  "export", "serve", "push")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job, flags generated from the options."""
    parser = argparse.ArgumentParser(
        prog="lastlayer",
        description="Self-supervised top-k adapters that make text embeddings better in your "
        "domain.",
        epilog="\n\n".join(COMMANDS[name].EXAMPLES for name in EXAMPLES_ORDER),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lastlayer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP,
                                 epilog=module.EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(command, module.Options)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lastlayer`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "validate":
        argv = validate.prepare_argv(argv)
    args = build_parser().parse_args(argv)
    module = COMMANDS[args.command]
    keep_freed_memory()
    try:
        return module.run(to_options(module.Options, args))
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"lastlayer {args.command}: error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input (recipe, data, model name), not a bug: exit 2, no traceback."""
    from lastlayer.artifact import ArtifactError
    from lastlayer.core.layers import LayerStackError
    from lastlayer.core.resolve import ModelNotFoundError
    from lastlayer.corpus import DataError
    from lastlayer.extras import MissingExtraError

    return (ConfigError, DataError, LayerStackError, ModelNotFoundError, ArtifactError,
            MissingExtraError,
            FileNotFoundError)
