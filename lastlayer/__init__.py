"""lastlayer: self-supervised top-k adapters that make text embeddings better in your domain.

The package imports nothing heavy at import time; see ``lastlayer.training.loop.run`` for the
whole pipeline and ``lastlayer.cli`` for the command line.
"""

__version__ = "0.1.0"
