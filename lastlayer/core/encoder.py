"""Load a base encoder and turn text into embeddings.

:func:`load_encoder` loads the weights that :func:`lastlayer.core.resolve.resolve_model`
found (a Hub id, a packaged offline copy, or a local path), optionally
bitsandbytes-quantized, fingerprints them (:func:`weights_fingerprint`) and casts them to
the compute precision, into an :class:`Encoder` that tokenizes, pools and normalises.
Decoder LMs work as encoders too (LLM2Vec-style: mean or last-token pooling over a causal
LM's hidden states). The resolver's names (``resolve_model``, ``ResolvedModel``,
``ModelNotFoundError``, ...) stay importable from here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lastlayer.config import ModelConfig
from lastlayer.core.gguf_cache import cached_for_unquantized, dequantized_folder
from lastlayer.core.progress import library_bars_on_terminals_only
from lastlayer.core.progress import progress as progress_bar
from lastlayer.core.resolve import (
    PACKAGED,
    ModelNotFoundError,
    PackagedCopy,
    RemoteCodeError,
    ResolvedModel,
    gguf_path,
    refusing_remote_code,
    resolve_model,
)
from lastlayer.extras import require

__all__ = [
    "PACKAGED", "POOLINGS", "Encoder", "ModelNotFoundError", "PackagedCopy", "RemoteCodeError",
    "ResolvedModel", "cls_pool", "disable_cpu_4bit_repacking", "gguf_path", "last_pool",
    "load_encoder", "longest_first_batches", "mean_pool", "quantization_config",
    "refusing_remote_code", "resolve_model", "weights_fingerprint",
]

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
