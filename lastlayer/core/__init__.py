"""The model side: load a base encoder, find its top-k blocks, attach / save / load adapters,
and run a forward split at block L-k. Knows nothing of training, evaluation or serving."""
