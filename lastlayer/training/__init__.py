"""Self-supervised training of a top-k adapter, one module per job.

From the bottom up: ``views`` (crop / span / dropout views of a document), ``objectives``
(one object per ``objective.kind``), ``loss`` (InfoNCE over the global batch), ``cache`` and
``pairs`` (pair streams, fresh or from cached bottom-layer states), ``data`` (which
documents are trained on), ``choose_k`` (``adapter.top_k: auto``), ``accelerator``,
``attach`` (the trainable adapter with its objective's model switches), ``checkpoint``
(periodic saves, resume), ``loop`` (the Accelerate loop only), ``report`` (``eval.json``
and the terminal table), ``assemble`` (routing signature and artifact files) and ``run``
(``prepare`` / ``fit`` / ``finish``: the public ``run``, ``lastlayer.train``). ``sign`` is a
repair tool outside that path: it adds a routing signature to an artifact saved without
one. Imports point down this list; no two modules import each other.
"""
