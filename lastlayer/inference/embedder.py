"""One base model in memory, many domain adapters, chosen per call, per row, or by routing.

Why one module of ~580 lines: it is one class, the registry, whose every method reads the
same lock and snapshot of loaded adapters (load checks, names, signatures, the encode
entry points); the work itself is the engine's (:mod:`lastlayer.core.engine`), and what
the memory budget adds (``adapter_memory``: resident heads, their builds, the merged /
unmerged rule, ``stats``) is :mod:`lastlayer.inference.resident`'s.

The :class:`Embedder` is the adapter registry on the inference engine
(:mod:`lastlayer.core.engine`): it loads and checks adapters (their base, their names,
their routing signatures), builds each one's head once, and hands every ``encode`` call to
the engine with a snapshot of the registry. The engine runs the base's bottom once per
batch and each adapter's private top-k blocks on its rows, so embedding one text under N
adapters of top-k costs ``(L − k) + N·k`` block passes instead of ``N·L``.

Nothing here changes the base model after loading, so any number of threads may call
``encode`` at once while others ``load`` or ``unload`` adapters. Every encode call returns
one result type, :class:`~lastlayer.core.engine.Embeddings`.

(About 580 lines: most of it is the checks of a registry that refuses quietly wrong
vectors, each with a message that says how to fix the call, and the lazy registration of
``adapter_memory``; the residency itself is in :mod:`lastlayer.inference.resident`.)
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
from torch import nn

from lastlayer import artifact
from lastlayer.artifact import ArtifactMeta
from lastlayer.config import ConfigError, ModelConfig
from lastlayer.core.encoder import Encoder, load_encoder, weights_fingerprint
from lastlayer.core.engine import AUTO, Embeddings, Engine, Head, Key
from lastlayer.core.int8 import check_quantize, quantize_trunk
from lastlayer.core.kinds import kind_named
from lastlayer.core.precision import AUTO as AUTO_PRECISION
from lastlayer.inference.residency import HeadCache, parse_memory
from lastlayer.inference.resident import AdapterLoadError, ResidentHeads

__all__ = ["AUTO", "AdapterInfo", "AdapterLoadError", "BaseMismatchError", "Embedder",
           "Embeddings", "UnknownAdapterError"]


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
            trained blocks: k blocks of memory, no overhead) rather than its LoRA factors
            on the base's own blocks (unmerged: a few hundred KB, a little slower).
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
    """A registered adapter: its info, its key in the head cache (one per registration, so
    a name loaded again never gets the old head), the form asked for, and its signature
    (with ``adapter_memory``: read on first use)."""

    info: AdapterInfo
    key: int
    merge: bool | None
    signature: Any = None  # lastlayer.core.routing.RoutingSignature


def _routing():
    """``lastlayer.core.routing`` (routing signatures; a function so tests can stand in)."""
    from lastlayer.core import routing

    return routing


def _dtype_name(dtype: str | torch.dtype | None) -> str | None:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return dtype


class Embedder(ResidentHeads):
    """A base model loaded once, plus any number of LoRA and full adapters on it.

    Args:
        base: The base model: a Hub id, a local folder (or GGUF file), or a
            :class:`~lastlayer.config.ModelConfig`.
        device: Where to put an unquantized model (default: CUDA if present).
        dtype: ``auto`` (default: bf16 where the hardware multiplies it natively, else
            fp32; :mod:`lastlayer.core.precision`), ``float32``, ``bfloat16`` or
            ``float16`` (or a torch dtype); a ``ModelConfig`` base keeps its own. Adapters
            load in any dtype, whatever they were trained in.
        quantization: ``8bit`` / ``4bit`` (bitsandbytes; LoRA adapters then stay unmerged).
        quantize: ``int8``: the shared trunk (the base's blocks below the heads) in torch's
            dynamic int8 linear layers, for CPU inference; every adapter's head and the
            base's own top blocks stay in ``dtype`` (:mod:`lastlayer.core.int8`).
        max_length: Token limit for texts embedded with the base and for routing
            (default 128, or the ``ModelConfig``'s). Adapters use their own.
        pooling: ``mean``, ``cls`` or ``last`` for the base (default ``mean``).
        normalize: L2-normalise the base's embeddings (default True).
        adapter_memory: Bytes the adapters' heads may use (an int, or ``"2GB"``,
            ``"512MB"``, ``"1.5GiB"``). Then ``load`` only registers an adapter (its
            metadata, checked), its head is built by the first call that needs it, and the
            least recently used heads are dropped when the budget is reached (a dropped
            adapter is built again, to the same vectors, when next needed). None (default):
            every head is built at ``load`` and stays. See :meth:`stats`.

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
                 normalize: bool | None = None, adapter_memory: int | str | None = None,
                 quantize: str | None = None) -> None:
        budget = parse_memory(adapter_memory)
        if dtype is None and not isinstance(base, ModelConfig):
            dtype = AUTO_PRECISION
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
        check_quantize(quantize, config.quantization)  # before minutes of loading
        self.encoder: Encoder = load_encoder(config, device, for_artifact=False)
        self.quantize = quantize
        self.engine = Engine(self.encoder)
        quantize_trunk(self.engine, quantize, config.quantization)
        self.num_layers = self.engine.num_layers
        self._lock = threading.Lock()  # registration (load / unload)
        self._loaded: dict[str, _Loaded] = {}
        self._infos: dict[str, AdapterInfo] = {}  # the same registry, as load gave it
        self._keys = itertools.count()
        self._by_key: dict[int, _Loaded] = {}
        self._forms: dict[int, bool] = {}  # merged or not, fixed at its first build
        self._lazy = budget is not None
        self._cache = HeadCache(budget, self._build, self._estimate)
        self.engine.working_memory = self._cache.hold
        self._shared: frozenset[int] | None = None  # the base's storages
        self._block_sizes: dict[int, int] = {}  # top_k -> bytes of the base's top-k blocks
        self._merged_total = 0  # bytes of every registered adapter's head, merged
        self._signature_cache: dict[int, Any] = {}  # with adapter_memory: read on first use

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
        return self.engine.dim

    @property
    def base_id(self) -> str:
        """The base's id: the one artifacts record (its Hub id), else what it was loaded as."""
        resolved = self.encoder.resolved
        return resolved.hub_id if resolved is not None else self.config.name_or_path

    @property
    def base_names(self) -> set[str]:
        """Every name that means the base: :attr:`base_id` and what it was loaded as."""
        return {self.base_id, self.config.name_or_path}

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
        """The loaded (with ``adapter_memory``: registered) adapters by name, resident or not."""
        with self._lock:
            return dict(self._infos)

    @property
    def adapter_memory(self) -> int | None:
        """The heads' byte budget (None: no budget, every head resident)."""
        return self._cache.budget

    def load(self, path: str | os.PathLike, name: str | None = None,
             merge: bool | None = None, *, meta: ArtifactMeta | None = None) -> str:
        """Load an adapter artifact next to the others, and return its name.

        Builds the adapter's private top-k blocks once (the base stays as it is), so later
        calls only run them. With ``adapter_memory`` it only registers the adapter (reads
        and checks its metadata and base; no weights): the first call that needs it builds
        its head.

        Args:
            path: An artifact folder (``lastlayer.json`` + PEFT files), or a Hub adapter
                ``ORG/NAME`` / ``ORG/NAME@REVISION`` (fetched through the Hugging Face
                cache; offline, the cached snapshot: :func:`lastlayer.hub.resolve_adapter`).
            name: The name to use in ``encode`` (default: the artifact's own name).
            merge: LoRA only: merge the adapter into a private copy of its k blocks
                (fastest; k blocks of memory) or keep it unmerged, its factors run on
                the base's own blocks (a few hundred KB, built in milliseconds; the only
                choice on a quantized base). Default: merged
                on an unquantized base, unmerged on a quantized one; with
                ``adapter_memory``, merged only while the budget holds every registered
                adapter merged (docs/many-adapters.md). Ignored for the full kind, whose
                trained blocks are already plain blocks.
            meta: The folder's metadata, already read by :func:`lastlayer.artifact.read`
                (an index of many adapters), so it is not read again.

        Raises:
            ArtifactError: ``path`` is not a valid artifact; a Hub id that cannot be
                fetched or holds no lastlayer adapter (``lastlayer.hub.HubError``).
            BaseMismatchError: The adapter was trained on another base, or on other
                weights (another file, dtype or quantization) of this one.
            ValueError: ``name`` is taken, reserved, or ``merge=True`` on a quantized base.
        """
        from lastlayer import hub

        source, path = str(path), hub.resolve_adapter(path)
        meta = artifact.read(path) if meta is None else meta
        name = meta.name if name is None else name
        self._check_name(name)
        self._check_base(meta, source)
        if merge and self.quantized and not kind_named(meta.kind).always_merged:
            raise ValueError(f"cannot merge LoRA adapter {name!r} into a {self.config.quantization}"
                             " quantized base; load it with merge=False (or merge=None).")
        if self._lazy:
            signature = None
            routable = (Path(path) / artifact.ROUTING).is_file()
        else:
            signature = self._signature(path, name)
            routable = signature is not None
        info = AdapterInfo(name=name, path=Path(path), kind=meta.kind, top_k=meta.top_k,
                           merged=self._merge_for(meta.kind, merge), routable=routable,
                           meta=meta, source=source)
        entry = _Loaded(info, next(self._keys), merge, signature)
        if not self._lazy:
            self._by_key[entry.key] = entry
            try:
                self._cache.get(entry.key)  # built now, as without a budget it always was
            finally:
                self._by_key.pop(entry.key, None)
            entry = dataclasses.replace(
                entry, info=dataclasses.replace(info, merged=self._forms[entry.key]))
        with self._lock:
            try:
                self._check_name(name)  # another thread may have taken it meanwhile
            except ValueError:
                self._cache.forget(entry.key)
                raise
            self._loaded = {**self._loaded, name: entry}
            self._infos[name] = entry.info
            self._by_key[entry.key] = entry
            self._count_merged(entry, +1)
        return name

    def unload(self, name: str) -> None:
        """Forget adapter ``name`` (calls already running with it finish normally).

        Raises:
            UnknownAdapterError: No adapter of that name is loaded.
        """
        with self._lock:
            if name not in self._loaded:
                raise self._unknown(name, self._loaded)
            entry = self._loaded[name]
            self._loaded = {n: a for n, a in self._loaded.items() if n != name}
            del self._infos[name]
            self._count_merged(entry, -1)
            self._by_key.pop(entry.key, None)
            self._forms.pop(entry.key, None)
            self._signature_cache.pop(entry.key, None)
        self._cache.forget(entry.key)

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
        # Artifacts trained on a bf16 / fp16 load before fingerprints were taken as stored
        # recorded the weights in that dtype: they match a base computing in it.
        if (trained.dtype not in ("float32", AUTO_PRECISION) and not self.quantized
                and trained.quantization is None
                and next(self.model.parameters()).dtype == getattr(torch, trained.dtype)
                and trained.fingerprint == weights_fingerprint(self.model, as_stored=False)):
            return
        ours = self.base_id
        if trained.model not in self.base_names:
            raise BaseMismatchError(
                f"adapter {path} was trained on {trained.model!r}, but this Embedder's base "
                f"is {ours!r}: load it onto Embedder({trained.model!r})."
            )
        differences = [  # an unquantized base's fingerprint holds in every dtype
            f"{what} {theirs} here vs {mine} in training"
            for what, mine, theirs in (
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

    def _signature_of(self, entry: _Loaded):
        """An adapter's routing signature (with ``adapter_memory``: read on first use)."""
        if entry.signature is not None or not self._lazy:
            return entry.signature
        cached = self._signature_cache.get(entry.key)
        if cached is None:
            cached = self._signature_cache[entry.key] = self._signature(entry.info.path,
                                                                        entry.info.name)
        return cached

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
               progress: bool | None = None, *, heads: dict[str, Head] | None = None
               ) -> Embeddings:
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
            heads: Heads already fetched with :meth:`warm` or :meth:`resident` (the
                server fetches them before the batch, so the batch never builds one);
                the adapters not in it are fetched (built if cold) here.

        Returns:
            :class:`~lastlayer.core.engine.Embeddings`: ``vectors`` (``(N, d)`` float32,
            rows in the order of ``texts``), ``tokens`` (how many tokens each text was
            embedded from, after truncation to its adapter's limit: the counts the
            tokenizer already gave, for usage reports) and, with ``adapter="auto"``,
            ``routed`` (per text, the adapter routing picked; None: the base).
            ``numpy.asarray(result)`` is the vectors.

        Raises:
            UnknownAdapterError: A name that is not loaded.
            ValueError: A list whose length differs from the number of texts; routing
                without any routing signature loaded.
            AdapterLoadError: With ``adapter_memory``: a cold adapter's head cannot be
                built (the call fails; other calls and adapters are not affected).
        """
        texts = self._texts(texts)
        loaded = self._snapshot()
        if isinstance(adapter, str) and adapter == AUTO:
            if self._lazy:  # route first, then build only the heads the texts went to
                names = self.engine.route(texts, {}, self._signatures(loaded),
                                          _routing().assign, batch_size, progress)
                picked = self._heads_of(dict.fromkeys(n for n in names if n), loaded, heads)
                out = self.engine.embed(texts, names, picked, batch_size, normalize, False)
                return Embeddings(out.vectors, out.tokens, names)
            return self.engine.embed_routed(texts, self._heads_of(loaded, loaded, heads),
                                            self._signatures(loaded), _routing().assign,
                                            batch_size, normalize, progress)
        keys = self.check_keys(adapter, len(texts), loaded)
        used = self._heads_of(dict.fromkeys(k for k in keys if k is not None), loaded, heads)
        return self.engine.embed(texts, keys, used, batch_size, normalize, progress)

    def encode_all(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None,
                   batch_size: int = 32, normalize: bool | None = None,
                   progress: bool | None = None) -> dict[str | None, np.ndarray]:
        """Embed every text under several adapters with one bottom pass per batch.

        Args:
            texts: The texts.
            adapters: The adapter names (None: the base); default: every loaded adapter.
            batch_size, normalize, progress: As in :meth:`encode`.

        Returns:
            ``{name: (N, d) float32 array}``, each equal to ``encode(texts, name).vectors``.
        """
        texts = self._texts(texts)
        loaded = self._snapshot()
        names = list(loaded) if adapters is None else list(dict.fromkeys(adapters))
        for name in names:
            if name is not None and name not in loaded:
                raise self._unknown(name, loaded)
        used = self._heads_of([n for n in names if n is not None], loaded)
        return self.engine.embed_each(texts, names, used, batch_size, normalize, progress)

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
        loaded = self._snapshot()
        return self.engine.route(texts, {}, self._signatures(loaded), _routing().assign,
                                 batch_size, progress)

    def check_request(self, adapter: str | Sequence[str | None] | None, n: int) -> None:
        """Raise what :meth:`encode` would raise for ``adapter`` on ``n`` texts, before any
        work: an unknown name, a list of the wrong length, routing without signatures.

        Raises:
            UnknownAdapterError, ValueError, TypeError: As :meth:`encode`.
        """
        loaded = self._snapshot()
        if isinstance(adapter, str) and adapter == AUTO:
            self._signatures(loaded)
        else:
            self.check_keys(adapter, n, loaded)

    # -----------------------------------------------------------------------------------
    # Checking a call.

    @staticmethod
    def _texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {bad[0]}.")
        return texts

    def check_keys(self, adapter, n: int, loaded: dict[str, _Loaded] | None = None
                   ) -> list[Key]:
        """One adapter name (or None) per text, every name checked against ``loaded``
        (default: the adapters loaded now)."""
        loaded = self._snapshot() if loaded is None else loaded
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

    def _signatures(self, loaded: dict[str, _Loaded]) -> dict[str, Any]:
        signatures = {n: self._signature_of(a) for n, a in loaded.items() if a.info.routable}
        if not signatures:
            names = ", ".join(repr(n) for n in loaded) or "none"
            raise ValueError(
                f"cannot route: no loaded adapter has a routing signature (loaded: {names}). "
                "Artifacts trained with this lastlayer store one; choose adapters by name "
                "instead (adapter=name or a list)."
            )
        return signatures
