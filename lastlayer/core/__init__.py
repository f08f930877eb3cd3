"""The model side: find where a base model's weights come from (``resolve``: a local path,
the Hub or its cache, a packaged offline copy), load it as an encoder (``encoder``), find
its top-k blocks (``layers``), run a forward split at block L-k (``split``), the adapter
kinds as plugins (``kinds/``: lora, full) behind one kind-independent API (``adapters``:
attach and save for training), an adapter's head (``heads``: its private top-k blocks,
from an artifact or from training's attached copy), and the inference engine every
embedding with an adapter goes through (``engine``; ``target`` opens what a command names
on it). Knows nothing of training, evaluation or serving."""
