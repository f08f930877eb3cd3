"""Attach a recipe's trainable adapter, with its objective's model switches around it.

The adapter itself goes on through :func:`lastlayer.core.adapters.attach`; what an objective
switches in the model (dropout on or off, :mod:`lastlayer.training.objectives`) is applied
before or after that, and the order matters: what is switched before the adapter goes on
(e.g. ``objective.model_dropout: false``) leaves the adapter's own settings alone; what is
switched after reaches the adapter too (the ``dropout`` objective).
"""

from __future__ import annotations

from lastlayer.config import ConfigError, Recipe
from lastlayer.core.adapters import attach
from lastlayer.core.encoder import Encoder
from lastlayer.core.layers import LayerStackError
from lastlayer.training.objectives import objective_for


def attach_for_training(encoder: Encoder, recipe: Recipe) -> list[str]:
    """Attach the recipe's adapter with its objective's model switches; say what changed.

    Args:
        encoder: The base encoder; its ``model`` gets the trainable adapter.
        recipe: Its ``adapter`` section says what to attach, its ``objective`` what to
            switch.

    Returns:
        One message per switch made, for the run's log.

    Raises:
        ConfigError: ``adapter.target_modules`` names modules the top-k blocks do not have
            (the message lists the ones they have).
    """
    objective = objective_for(recipe.objective)
    messages = objective.before_attach(encoder.model, recipe.objective)
    targets = recipe.adapter.target_modules
    try:
        attach(encoder, recipe.adapter)
    except LayerStackError as err:
        if targets is None:  # not about the targets: the model's own layer stack
            raise
        raise ConfigError(f"adapter.target_modules={targets}: {err}. Set it to some of those "
                          "suffixes, or to null for every linear layer.") from None
    return messages + objective.after_attach(encoder.model, recipe.objective)
