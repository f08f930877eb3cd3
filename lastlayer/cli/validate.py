"""``lastlayer validate``: check recipes (keys, types, choices) without loading a model."""

from __future__ import annotations

from lastlayer.config import ConfigError, load_recipe
from lastlayer.config.commands import ValidateOptions as Options

HELP = "Check recipes (keys, types, choices) without loading a model."
EXAMPLES = """examples:
  lastlayer validate recipes/**/*.yaml
  lastlayer validate recipes/medical/minilm-l6_lora-top2_crop.yaml adapter.top_k=3"""


def prepare_argv(argv: list[str]) -> list[str]:
    """Allow ``validate a.yaml key=value`` as well as ``--set key=value`` (``argv`` starts
    with the command name)."""
    files = [a for a in argv[1:] if "=" not in a or a.startswith("-")]
    extra = [f"--set={a}" for a in argv[1:] if "=" in a and not a.startswith("-")]
    return [argv[0], *files, *extra]


def run(args: Options) -> int:
    """Load each recipe; report every invalid one (exit 2 if any)."""
    failures = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.overrides)
        except ConfigError as err:
            failures += 1
            print(f"FAIL {err}")
            continue
        print(f"ok   {path}  ({recipe.model.name_or_path}, {recipe.adapter.kind} top-"
              f"{recipe.adapter.top_k}, {recipe.objective.kind}, {recipe.train.max_steps} steps)")
    return 2 if failures else 0
