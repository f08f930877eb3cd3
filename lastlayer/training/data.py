"""Which documents are trained on: the corpus a recipe names, minus the held-out ones.

Training, ``adapter.top_k: auto`` (:mod:`lastlayer.training.choose_k`) and re-signing an
artifact (:mod:`lastlayer.training.sign`) all select documents here, so the three agree on
the same list; the documents held out for evaluation are never trained on.
"""

from __future__ import annotations

from lastlayer.config import Recipe
from lastlayer.corpus import DataError, read_texts
from lastlayer.evaluation.datasets import EvalSet


def training_documents(recipe: Recipe, held_out: EvalSet | None,
                       docs: list[str] | None = None) -> list[str]:
    """The training corpus, minus any document that is held out for evaluation.

    Args:
        recipe: Its ``data`` section names the corpus and caps it (``data.max_docs``).
        held_out: Documents to leave out, if any.
        docs: Documents already in memory, used instead of reading ``data.train``.

    Raises:
        DataError: Fewer than two documents remain.
    """
    docs = read_texts(recipe.data.train, recipe.data.text_field) if docs is None else docs
    if held_out is not None:
        excluded = set(held_out.texts)
        docs = [d for d in docs if d not in excluded]
    if recipe.data.max_docs is not None:
        docs = docs[: recipe.data.max_docs]
    if len(docs) < 2:
        raise DataError(
            f"{recipe.data.train}: only {len(docs)} training documents remain after holding out "
            "the evaluation documents; use a larger corpus or a smaller eval.max_docs."
        )
    return docs
