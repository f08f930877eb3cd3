"""``lastlayer train``: train a top-k adapter from a recipe, evaluate it, save the artifact."""

from __future__ import annotations

import warnings

from lastlayer.cli.logs import setup_logging
from lastlayer.config import load_recipe
from lastlayer.config.commands import TrainOptions as Options

HELP = "Train a top-k adapter from a recipe, evaluate it, save the artifact."
EXAMPLES = """examples:
  lastlayer train recipes/medical/smollm2-135m_full-auto_crop.yaml
  lastlayer train recipes/medical/minilm-l6_lora-top2_crop.yaml train.max_steps=20 seed=1
  accelerate launch -m lastlayer train RECIPE          # many GPUs / nodes
  torchrun --nproc_per_node 2 -m lastlayer train RECIPE train.cpu=true   # 2 CPU processes"""


def run(args: Options) -> int:
    """The whole job (see ``lastlayer.training.run.run``)."""
    recipe = load_recipe(args.recipe, args.overrides)
    setup_logging()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    from lastlayer.training.run import run as run_recipe

    run_recipe(recipe)
    return 0
