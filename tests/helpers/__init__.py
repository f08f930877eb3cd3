"""What the tests share, imported as ``helpers.<module>`` (``tests/`` is on pytest's path).

- ``data``: the checkout's paths, the shipped medical abstracts, jsonl writers, sample texts;
- ``tiny``: tiny real transformers models and the committed tiny tokenizer (``fixtures/``);
- ``models``: a trained-looking perturbation and a snapshot that proves a model unchanged;
- ``artifacts``: ``lastlayer.json`` metadata, tiny artifacts, the artifacts the project ships;
- ``processes``: free ports, the environment and launch line of a worker subprocess;
- ``server``: ``lastlayer serve`` started, awaited and stopped in a subprocess;
- ``gguf``: a tiny Llama written as a real GGUF file;
- workers the tests start as subprocesses (``python -m helpers.<name>``): ``dist_worker``,
  ``embed_worker``, ``train_worker``; and ``plain_embedder``, the Embedder's API without a
  shared trunk.

Fixtures (injected by name) live in ``tests/conftest.py``; nothing here is a test file, and
no test file imports another.
"""
