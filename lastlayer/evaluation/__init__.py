"""In-domain quality of embeddings: data sets, metrics (kNN, clustering, retrieval), whole-
data-set evaluation of an encoder, and the layer probe with its plot."""
