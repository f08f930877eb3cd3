"""``lastlayer choose-k``: what ``adapter.top_k: auto`` would choose for a recipe (the
per-layer signal and the rule), without training."""

from __future__ import annotations

import json
import warnings

from lastlayer.config import load_recipe
from lastlayer.config.commands import ChooseKOptions as Options

HELP = ("Show what adapter.top_k: auto would choose for a recipe (the per-layer signal and the "
        "rule), without training.")
EXAMPLES = """examples:
  lastlayer choose-k recipes/medical/smollm2-135m_full-auto_crop.yaml
  lastlayer choose-k RECIPE adapter.top_k_signal=probe      # labelled docs outside eval
  lastlayer choose-k RECIPE adapter.top_k_docs=512 --json"""


def run(args: Options) -> int:
    """The recipe's ``top_k: auto`` choice and its evidence, as text or JSON."""
    recipe = load_recipe(args.recipe, args.overrides)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from lastlayer.training.choose_k import choose_for_recipe
    from lastlayer.training.report import format_choice

    choice = choose_for_recipe(recipe, progress=not args.json)
    print(json.dumps(choice.to_dict(), indent=2) if args.json else format_choice(choice))
    return 0
