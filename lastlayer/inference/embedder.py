"""One base model in memory, many domain adapters, chosen per call, per row, or by routing.

Every lastlayer adapter changes only blocks L−k … L−1 of its base, so rows bound for
different adapters share the frozen bottom exactly. For each batch the :class:`Embedder`
runs the base's bottom once, up to the lowest block any row of the batch needs, then the
base blocks between split points on the rows that need them, then each adapter's own
top-k blocks on its rows (and the base's remaining blocks on the rows for the base).
Embedding one text under N adapters of top-k thus costs ``(L − k) + N·k`` block passes
instead of ``N·L``, for LoRA and full adapters alike, side by side on one base.

Nothing here changes the base model after loading: adapters run on private copies of
their blocks (:mod:`lastlayer.inference.heads`) and every forward goes through views of
the model (:mod:`lastlayer.core.split`), so any number of threads may call ``encode`` at
once while others ``load`` or ``unload`` adapters.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lastlayer import artifact
from lastlayer.artifact import ArtifactMeta
from lastlayer.config import ConfigError, ModelConfig
from lastlayer.core.encoder import (
    POOLINGS,
    Encoder,
    load_encoder,
    longest_first_batches,
    mean_pool,
)
from lastlayer.core.layers import find_layer_stack
from lastlayer.core.split import BottomRunner, MiddleRunner, TopKHead
from lastlayer.inference.heads import private_blocks

AUTO = "auto"
"""``adapter="auto"``: route each text to the adapter whose domain it belongs to."""


class BaseMismatchError(ConfigError):
    """An adapter was trained on another base model, or on other weights of the same one."""


class UnknownAdapterError(KeyError):
    """An adapter name that is not loaded (never silently replaced by the base)."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class AdapterInfo:
    """What :attr:`Embedder.adapters` says about a loaded adapter.

    Attributes:
        name: The name it is loaded under.
        path: The artifact folder it was loaded from (a Hub adapter's cached snapshot).
        kind: ``lora`` or ``full``.
        top_k: The top blocks it changes.
        merged: Whether it runs as plain private blocks (merged LoRA, or the full kind's
            trained blocks: k blocks of memory, no overhead) rather than LoRA layers
            around the base's weights (unmerged: a few MB, a little slower).
        routable: Whether its artifact holds a routing signature (``adapter="auto"``).
        meta: The artifact's full metadata (``lastlayer.json``).
        source: What ``load`` was given: the folder, or the Hub id ``ORG/NAME[@REVISION]``.
    """

    name: str
    path: Path
    kind: str
    top_k: int
    merged: bool
    routable: bool
    meta: ArtifactMeta
    source: str = ""

    @property
    def pooling(self) -> str:
        return self.meta.embedding.pooling

    @property
    def normalize(self) -> bool:
        return self.meta.embedding.normalize

    @property
    def max_length(self) -> int:
        return self.meta.embedding.max_length


@dataclass(frozen=True)
class _Loaded:
    """A registered adapter: its info, its head (private top-k blocks) and signature."""

    info: AdapterInfo
    head: TopKHead
    signature: Any = None  # lastlayer.core.routing.RoutingSignature


def _routing():
    """``lastlayer.core.routing`` (routing signatures; a function so tests can stand in)."""
    from lastlayer.core import routing

    return routing


def _dtype_name(dtype: str | torch.dtype | None) -> str | None:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return dtype


class Embedder:
    """A base model loaded once, plus any number of LoRA and full adapters on it.

    Args:
        base: The base model: a Hub id, a local folder (or GGUF file), or a
            :class:`~lastlayer.config.ModelConfig`.
        device: Where to put an unquantized model (default: CUDA if present).
        dtype: ``float32`` (default), ``bfloat16`` or ``float16`` (or a torch dtype).
        quantization: ``8bit`` / ``4bit`` (bitsandbytes; LoRA adapters then stay unmerged).
        max_length: Token limit for texts embedded with the base and for routing
            (default 128, or the ``ModelConfig``'s). Adapters use their own.
        pooling: ``mean``, ``cls`` or ``last`` for the base (default ``mean``).
        normalize: L2-normalise the base's embeddings (default True).

    Each adapter embeds its rows exactly as it was trained to: with its own pooling,
    normalisation and token limit (``lastlayer.json``), whatever the base's settings.

    Raises:
        ModelNotFoundError: The base model cannot be found.
        ConfigError: Invalid settings, or ``base`` is an adapter folder.
    """

    def __init__(self, base: str | os.PathLike | ModelConfig,
                 device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, quantization: str | None = None, *,
                 max_length: int | None = None, pooling: str | None = None,
                 normalize: bool | None = None) -> None:
        overrides = {"dtype": _dtype_name(dtype), "quantization": quantization,
                     "max_length": max_length, "pooling": pooling, "normalize": normalize}
        overrides = {key: value for key, value in overrides.items() if value is not None}
        if isinstance(base, ModelConfig):
            config = dataclasses.replace(base, **overrides)
        else:
            if artifact.is_artifact(base):
                meta = artifact.read(base)
                raise ConfigError(
                    f"{base} is an adapter, not a base model: use "
                    f"Embedder({meta.base.model!r}) and then .load({str(base)!r})."
                )
            config = ModelConfig(name_or_path=str(base), **overrides)
        self.config = config
        self.encoder: Encoder = load_encoder(config, device)
        self.num_layers = find_layer_stack(self.encoder.model).num_layers
        self._lock = threading.Lock()  # registration (load / unload)
        self._views_lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}
        self._views: dict[tuple, nn.Module] = {}

    # -----------------------------------------------------------------------------------
    # The base.

    @property
    def model(self) -> nn.Module:
        """The base transformers model (frozen, eval mode; never modified)."""
        return self.encoder.model

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def dim(self) -> int:
        """The embedding size."""
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def fingerprint(self) -> str:
        """The base weights' fingerprint (what artifacts record as ``base.fingerprint``)."""
        return self.encoder.fingerprint

    @property
    def quantized(self) -> bool:
        return self.config.quantization is not None

    # -----------------------------------------------------------------------------------
    # Adapters.

    @property
    def adapters(self) -> dict[str, AdapterInfo]:
        """The loaded adapters by name."""
        return {name: loaded.info for name, loaded in self._snapshot().items()}

    def load(self, path: str | os.PathLike, name: str | None = None,
             merge: bool | None = None) -> str:
        """Load an adapter artifact next to the others, and return its name.

        Builds the adapter's private top-k blocks once (the base stays as it is), so later
        calls only run them.

        Args:
            path: An artifact folder (``lastlayer.json`` + PEFT files), or a Hub adapter
                ``ORG/NAME`` / ``ORG/NAME@REVISION`` (fetched through the Hugging Face
                cache; offline, the cached snapshot: :func:`lastlayer.hub.resolve_adapter`).
            name: The name to use in ``encode`` (default: the artifact's own name).
            merge: LoRA only: merge the adapter into a private copy of its k blocks
                (fastest; k blocks of memory) or keep it unmerged around the base's
                weights (a few MB; the only choice on a quantized base). Default: merged
                on an unquantized base, unmerged on a quantized one. Ignored for the full
                kind, whose trained blocks are already plain blocks.

        Raises:
            ArtifactError: ``path`` is not a valid artifact; a Hub id that cannot be
                fetched or holds no lastlayer adapter (``lastlayer.hub.HubError``).
            BaseMismatchError: The adapter was trained on another base, or on other
                weights (another file, dtype or quantization) of this one.
            ValueError: ``name`` is taken, reserved, or ``merge=True`` on a quantized base.
        """
        from lastlayer import hub

        source, path = str(path), hub.resolve_adapter(path)
        meta = artifact.read(path)
        name = meta.name if name is None else name
        self._check_name(name)
        self._check_base(meta, source)
        if meta.kind == "full":
            merge = True
        elif merge is None:
            merge = not self.quantized
        elif merge and self.quantized:
            raise ValueError(f"cannot merge LoRA adapter {name!r} into a {self.config.quantization}"
                             " quantized base; load it with merge=False (or merge=None).")
        blocks = private_blocks(self.model, path, meta.kind, meta.top_k, merge)
        head = TopKHead(self.model, meta.top_k, blocks=blocks)
        signature = self._signature(path, name)
        info = AdapterInfo(name=name, path=Path(path), kind=meta.kind, top_k=meta.top_k,
                           merged=merge, routable=signature is not None, meta=meta,
                           source=source)
        with self._lock:
            self._check_name(name)  # another thread may have taken it meanwhile
            self._loaded = {**self._loaded, name: _Loaded(info, head, signature)}
        return name

    def unload(self, name: str) -> None:
        """Forget adapter ``name`` (calls already running with it finish normally).

        Raises:
            UnknownAdapterError: No adapter of that name is loaded.
        """
        with self._lock:
            if name not in self._loaded:
                raise self._unknown(name, self._loaded)
            self._loaded = {n: a for n, a in self._loaded.items() if n != name}

    def _snapshot(self) -> dict[str, _Loaded]:
        """The registry as it is now; calls use one snapshot throughout (the dict is
        replaced, never changed, on load / unload)."""
        with self._lock:
            return self._loaded

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an adapter name must be a non-empty string, got {name!r}.")
        if name == AUTO:
            raise ValueError(f"{AUTO!r} is reserved (adapter='auto' routes); choose another "
                             "name with load(path, name=...).")
        if name in self._loaded:
            raise ValueError(f"an adapter named {name!r} is already loaded "
                             f"(from {self._loaded[name].info.path}); unload it first or "
                             "choose another name with load(path, name=...).")

    def _check_base(self, meta: ArtifactMeta, path) -> None:
        """Refuse an adapter trained on other base weights (the fingerprint decides; the
        id only words the message)."""
        trained = meta.base
        if trained.fingerprint == self.fingerprint:
            return
        resolved = self.encoder.resolved
        ours = resolved.hub_id if resolved is not None else self.config.name_or_path
        if trained.model != ours:
            raise BaseMismatchError(
                f"adapter {path} was trained on {trained.model!r}, but this Embedder's base "
                f"is {ours!r}: load it onto Embedder({trained.model!r})."
            )
        differences = [
            f"{what} {theirs} here vs {mine} in training"
            for what, mine, theirs in (
                ("dtype", trained.dtype, self.config.dtype),
                ("quantization", trained.quantization, self.config.quantization),
            ) if mine != theirs
        ]
        hint = ("; ".join(differences) + ": load the base as it was trained") if differences \
            else "other weights were loaded under the same name (another file or revision)"
        raise BaseMismatchError(
            f"adapter {path} was trained on other weights of {ours!r}: "
            f"{trained.describe()}, fingerprint {trained.fingerprint}; this Embedder's base "
            f"has fingerprint {self.fingerprint} ({hint}). Its vectors would be quietly "
            "wrong, so it is refused."
        )

    def _signature(self, path, name: str):
        """The artifact's routing signature, checked to fit this base, or None."""
        routing = _routing()
        signature = routing.read_signature(path)
        if signature is not None and not 0 <= signature.layer < self.num_layers:
            raise artifact.ArtifactError(
                f"{path}: the routing signature of {name!r} pools block {signature.layer}, "
                f"but the base has blocks 0 … {self.num_layers - 1}."
            )
        return signature

    @staticmethod
    def _unknown(name: object, loaded: dict[str, _Loaded]) -> UnknownAdapterError:
        names = ", ".join(repr(n) for n in loaded) or "none (load one with Embedder.load)"
        return UnknownAdapterError(
            f"no adapter named {name!r} is loaded; loaded: {names}. Use None for the base, "
            f"or {AUTO!r} to route."
        )

    # -----------------------------------------------------------------------------------
    # Embedding.

    def encode(self, texts: Sequence[str], adapter: str | Sequence[str | None] | None = None,
               batch_size: int = 32, normalize: bool | None = None,
               progress: bool | None = None, return_tokens: bool = False
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embed texts with the base, one adapter, one adapter per text, or by routing.

        Args:
            texts: The texts (a single string counts as one text).
            adapter: None (the base), a loaded adapter's name, ``"auto"`` (each text goes
                to the adapter :meth:`route` picks, or the base), or a list with one entry
                (a name or None) per text: rows for different adapters share one batch
                and its bottom pass.
            batch_size: Texts per batch (sorted longest first, to waste little padding).
            normalize: L2-normalise every row (True / False); None: as each row's
                adapter was trained (the base: as the Embedder was set up).
            progress: Show a progress bar (None: only on a terminal).
            return_tokens: Also return how many tokens each text was embedded from
                (special tokens included, after truncation to its adapter's limit): the
                counts the tokenizer already gave, for usage reports.

        Returns:
            A ``(N, d)`` float32 array, rows in the order of ``texts``; with
            ``return_tokens``, ``(vectors, tokens)`` (tokens: an ``(N,)`` int64 array).

        Raises:
            UnknownAdapterError: A name that is not loaded.
            ValueError: A list whose length differs from the number of texts.
        """
        texts = self._texts(texts)
        loaded = self._snapshot()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if adapter == AUTO:
            routed = self.encode_routed(texts, batch_size, normalize, progress, return_tokens)
            return (routed[0], routed[2]) if return_tokens else routed[0]
        keys = self._keys(adapter, len(texts), loaded)
        tokens = np.zeros(len(texts), dtype=np.int64)
        self._run(texts, [[(key, out)] for key in keys], loaded, batch_size, normalize,
                  progress, tokens=tokens)
        return (out, tokens) if return_tokens else out

    def encode_routed(self, texts: Sequence[str], batch_size: int = 32,
                      normalize: bool | None = None, progress: bool | None = None,
                      return_tokens: bool = False
                      ) -> (tuple[np.ndarray, list[str | None]]
                            | tuple[np.ndarray, list[str | None], np.ndarray]):
        """``encode(texts, adapter="auto")`` and the adapter each text went to, from one pass.

        Callers that need to know what embedded each row (its token limit, a log) get it
        here without routing twice.

        Returns:
            ``(vectors, names)``: the ``(N, d)`` float32 array, and per text the adapter
            routing picked (None: the base); with ``return_tokens`` also the tokens each
            text was embedded from, at its routed adapter's limit (as in :meth:`encode`).

        Raises:
            ValueError: No loaded adapter has a routing signature.
        """
        texts = self._texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = np.zeros(len(texts), dtype=np.int64)
        names = self._run(texts, [[] for _ in texts], self._snapshot(), batch_size, normalize,
                          progress, routing=True, out=out, tokens=tokens)
        return (out, names, tokens) if return_tokens else (out, names)

    def encode_all(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None,
                   batch_size: int = 32, normalize: bool | None = None,
                   progress: bool | None = None) -> dict[str | None, np.ndarray]:
        """Embed every text under several adapters with one bottom pass per batch.

        Args:
            texts: The texts.
            adapters: The adapter names (None: the base); default: every loaded adapter.
            batch_size, normalize, progress: As in :meth:`encode`.

        Returns:
            ``{name: (N, d) float32 array}``, each equal to ``encode(texts, name)``.
        """
        texts = self._texts(texts)
        loaded = self._snapshot()
        names = list(loaded) if adapters is None else list(dict.fromkeys(adapters))
        for name in names:
            if name is not None and name not in loaded:
                raise self._unknown(name, loaded)
        outs = {name: np.zeros((len(texts), self.dim), dtype=np.float32) for name in names}
        requests = [[(name, out) for name, out in outs.items()] for _ in texts]
        if names:
            self._run(texts, requests, loaded, batch_size, normalize, progress)
        return outs

    def route(self, texts: Sequence[str], batch_size: int = 32,
              progress: bool | None = None) -> list[str | None]:
        """The adapter each text belongs to (None: the base), from the loaded adapters'
        routing signatures.

        Runs only the base's bottom blocks, up to the deepest block a signature pools,
        exactly as ``encode(texts, adapter="auto")`` does on the way to its embeddings.

        Raises:
            ValueError: No loaded adapter has a routing signature.
        """
        texts = self._texts(texts)
        return self._run(texts, [[] for _ in texts], self._snapshot(), batch_size, None,
                         progress, routing=True)

    # -----------------------------------------------------------------------------------
    # The batch engine.

    @staticmethod
    def _texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {bad[0]}.")
        return texts

    def _keys(self, adapter, n: int, loaded: dict[str, _Loaded]) -> list[str | None]:
        """One adapter name (or None) per text, every name checked."""
        if adapter is None or isinstance(adapter, str):
            keys = [adapter] * n
        elif isinstance(adapter, Sequence):
            keys = list(adapter)
            if len(keys) != n:
                raise ValueError(f"adapter is a list of {len(keys)} entries for {n} texts: "
                                 "give one adapter name (or None) per text.")
        else:
            raise TypeError(f"adapter must be None, a name, {AUTO!r} or a list of names; "
                            f"got {type(adapter).__name__}.")
        for key in dict.fromkeys(keys):
            if key == AUTO:  # a whole-call "auto" never gets here
                raise ValueError(f"{AUTO!r} routes a whole call: pass adapter={AUTO!r}, or "
                                 "route(texts) to get a list to edit.")
            if key is not None and key not in loaded:
                raise self._unknown(key, loaded)
        return keys

    def _settings(self, key: str | None, loaded: dict[str, _Loaded]) -> tuple[str, bool, int]:
        """(pooling, normalize, max_length) of the base (None) or an adapter."""
        if key is None:
            return self.encoder.pooling, self.encoder.normalize, self.encoder.max_length
        info = loaded[key].info
        return info.pooling, info.normalize, info.max_length

    def _start(self, key: str, loaded: dict[str, _Loaded]) -> int:
        """The block an adapter's head starts at (L − k)."""
        return self.num_layers - loaded[key].info.top_k

    def _run(self, texts: list[str], requests: list[list[tuple[str | None, np.ndarray]]],
             loaded: dict[str, _Loaded], batch_size: int, normalize: bool | None,
             progress: bool | None, routing: bool = False, out: np.ndarray | None = None,
             tokens: np.ndarray | None = None) -> list[str | None] | None:
        """Embed ``texts``: ``requests[i]`` lists ``(adapter, out)``, and row ``i`` of each
        ``out`` receives text ``i`` under that adapter.

        With ``routing`` the requests come from the loaded adapters' routing signatures
        instead: row ``i`` of ``out`` (if given) receives text ``i`` under the adapter
        routing picks for it. Returns the routed names then. ``tokens[i]`` (if given)
        receives the length of text ``i``'s input (one adapter per text).
        """
        signatures = self._signatures(loaded) if routing else {}
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        routed: list[str | None] = [None] * len(texts)
        later: list[tuple[int, str]] = []  # routed to an adapter with another token limit
        batches = longest_first_batches(texts, batch_size)
        with torch.inference_mode():
            disable = None if progress is None else not progress  # None: only on a tty
            for idx in tqdm(batches, desc="embed", unit="batch", disable=disable):
                if routing:
                    names, deferred = self._batch_routed(
                        texts, idx, loaded, signatures, normalize, out, tokens)
                    for i, name in zip(idx, names, strict=True):
                        routed[i] = name
                    later += deferred
                else:
                    self._batch(texts, idx, requests, loaded, normalize, tokens)
        if later:  # their adapter truncates differently: one more pass for those texts
            rows = np.zeros((len(later), self.dim), dtype=np.float32)
            counts = np.zeros(len(later), dtype=np.int64)
            self._run([texts[i] for i, _ in later], [[(name, rows)] for _, name in later],
                      loaded, batch_size, normalize, False, tokens=counts)
            for row, count, (i, _) in zip(rows, counts, later, strict=True):
                out[i] = row
                if tokens is not None:
                    tokens[i] = count
        return routed if routing else None

    def _signatures(self, loaded: dict[str, _Loaded]) -> dict[str, Any]:
        signatures = {n: a.signature for n, a in loaded.items() if a.signature is not None}
        if not signatures:
            names = ", ".join(repr(n) for n in loaded) or "none"
            raise ValueError(
                f"cannot route: no loaded adapter has a routing signature (loaded: {names}). "
                "Artifacts trained with this lastlayer store one; choose adapters by name "
                "instead (adapter=name or a list)."
            )
        return signatures

    def _tokenize(self, items: list[tuple[int, int]], texts: list[str]) -> dict[str, Tensor]:
        """Model inputs for ``(text index, max_length)`` items, each truncated to its own
        limit and padded on the right to the longest."""
        ids: list[list[int]] = [[]] * len(items)
        by_length: dict[int, list[int]] = {}
        for row, (_, limit) in enumerate(items):
            by_length.setdefault(limit, []).append(row)
        for limit, rows in by_length.items():
            encoded = self.tokenizer([texts[items[r][0]] for r in rows], truncation=True,
                                     max_length=limit)["input_ids"]
            for row, tokens in zip(rows, encoded, strict=True):
                ids[row] = tokens
        width = max(len(tokens) for tokens in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _trunk(self, batch: dict[str, Tensor], depth: list[int], layers: list[int]
               ) -> dict[int, tuple[list[int], Tensor, Tensor]]:
        """The base's states at each of ``layers`` (block inputs), for the rows that need
        them: row ``r`` is carried up to block ``depth[r]``.

        Returns ``{layer: (rows, states, mask)}``; one bottom pass for every row, then the
        base blocks between consecutive layers on the rows that go further.
        """
        mask = batch["attention_mask"]
        states = self._part("bottom", self.num_layers - layers[0])(batch)
        rows = list(range(len(depth)))
        found = {layers[0]: (rows, states, mask)}
        for below, layer in itertools.pairwise(layers):
            going = [r for r in rows if depth[r] >= layer]
            if len(going) != len(rows):
                positions = {r: p for p, r in enumerate(rows)}
                keep = torch.tensor([positions[r] for r in going], device=states.device)
                states, mask, rows = states.index_select(0, keep), mask.index_select(0, keep), going
            states = self._part("middle", below, layer)(states, mask)
            found[layer] = (rows, states, mask)
        return found

    def _part(self, kind: str, *args: int) -> nn.Module:
        """A view of the base (bottom, middle or base head), built once and cached."""
        key = (kind, *args)
        view = self._views.get(key)
        if view is None:
            with self._views_lock:
                view = self._views.get(key)
                if view is None:
                    build = {"bottom": BottomRunner, "middle": MiddleRunner, "head": TopKHead}
                    view = self._views[key] = build[kind](self.model, *args)
        return view

    def _head(self, key: str | None, start: int, loaded: dict[str, _Loaded]) -> nn.Module:
        if key is None:
            return self._part("head", self.num_layers - start)
        return loaded[key].head

    def _run_jobs(self, jobs: dict[str | None, list[tuple[int, int, np.ndarray]]],
                  starts: dict[str | None, int], trunk, loaded, normalize) -> None:
        """Run each adapter's head (or the base's remaining blocks) on its rows, pool, and
        write row ``i`` of each ``out``; ``jobs[key]`` lists ``(row, i, out)``."""
        for key, members in jobs.items():
            rows, states, mask = trunk[starts[key]]
            positions = {r: p for p, r in enumerate(rows)}
            take = [positions[row] for row, _, _ in members]
            if take != list(range(len(rows))):
                keep = torch.tensor(take, device=states.device)
                states, mask = states.index_select(0, keep), mask.index_select(0, keep)
            pooling, own_normalize, _ = self._settings(key, loaded)
            last = self._head(key, starts[key], loaded)(states, mask)
            vectors = POOLINGS[pooling](last, mask).float()
            if own_normalize if normalize is None else normalize:
                vectors = nn.functional.normalize(vectors, dim=-1)
            vectors = vectors.cpu().numpy()
            for vector, (_, i, out) in zip(vectors, members, strict=True):
                out[i] = vector

    def _batch(self, texts: list[str], idx: list[int], requests, loaded, normalize,
               tokens: np.ndarray | None = None) -> None:
        """One batch of texts ``idx`` with explicit adapters (``tokens``: see :meth:`_run`)."""
        items: dict[tuple[int, int], int] = {}
        jobs: dict[str | None, list[tuple[int, int, np.ndarray]]] = {}
        for i in idx:
            for key, out in requests[i]:
                row = items.setdefault((i, self._settings(key, loaded)[2]), len(items))
                jobs.setdefault(key, []).append((row, i, out))
        starts = {key: self._start(key, loaded) for key in jobs if key is not None}
        if None in jobs:  # the base: its remaining blocks from the deepest split point
            starts[None] = max(starts.values(), default=self.num_layers - 1)
        depth = [0] * len(items)
        for key, members in jobs.items():
            for row, _, _ in members:
                depth[row] = max(depth[row], starts[key])
        batch = self._tokenize(list(items), texts)
        if tokens is not None:
            lengths = batch["attention_mask"].sum(1).tolist()
            for (i, _), row in items.items():
                tokens[i] = lengths[row]
        trunk = self._trunk(batch, depth, sorted(set(starts.values())))
        self._run_jobs(jobs, starts, trunk, loaded, normalize)

    def _batch_routed(self, texts, idx, loaded, signatures, normalize, out,
                      tokens: np.ndarray | None = None
                      ) -> tuple[list[str | None], list[tuple[int, str]]]:
        """One batch of texts ``idx`` routed by ``signatures`` (and embedded into ``out``
        unless it is None; ``tokens``: see :meth:`_run`). Returns the names, and the
        ``(text, name)`` pairs left for a second pass because their adapter's token limit
        differs from the base's."""
        limit = self.encoder.max_length
        items = [(i, limit) for i in idx]
        route_layers = {sig.layer for sig in signatures.values()}
        starts: dict[str | None, int] = {}
        if out is not None:
            starts = {name: self._start(name, loaded) for name in signatures}
            starts[None] = max([*starts.values(), *route_layers])
        layers = sorted(route_layers | set(starts.values()))
        batch = self._tokenize(items, texts)
        if tokens is not None:  # the deferred rows are counted again in their own pass
            tokens[idx] = batch["attention_mask"].sum(1).cpu().numpy()
        trunk = self._trunk(batch, [layers[-1]] * len(items), layers)
        pooled = {}
        for layer in route_layers:  # every row reaches every layer: rows in batch order
            _, states, mask = trunk[layer]
            pooled[layer] = mean_pool(states.float(), mask).cpu().numpy()
        names = list(_routing().assign(signatures, pooled))
        if len(names) != len(idx) or not set(names) <= {*signatures, None}:
            raise RuntimeError(f"routing returned {names!r} for {len(idx)} texts and "
                               f"adapters {sorted(signatures)}.")
        deferred: list[tuple[int, str]] = []
        if out is not None:
            jobs: dict[str | None, list[tuple[int, int, np.ndarray]]] = {}
            for row, (i, name) in enumerate(zip(idx, names, strict=True)):
                if name is not None and self._settings(name, loaded)[2] != limit:
                    deferred.append((i, name))
                else:
                    jobs.setdefault(name, []).append((row, i, out))
            self._run_jobs(jobs, starts, trunk, loaded, normalize)
        return names, deferred
