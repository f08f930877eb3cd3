"""A tiny Llama written as a real GGUF file (2 layers, hidden 64, byte-level BPE vocabulary).

Written with the ``gguf`` package's writer under the names transformers' GGUF loader maps
for ``llama`` (``token_embd``, ``blk.N.attn_q`` ...), so ``from_pretrained(folder,
gguf_file=...)`` loads it as a ``LlamaModel`` with its tokenizer, like a downloaded file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 64, 2, 4, 128


def _vocabulary() -> tuple[list[str], list[str]]:
    """Every byte as GPT-2 spells it, two merges and an end-of-text control token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(dict.fromkeys(bytes_to_unicode().values()))
    return [*tokens, "Ġt", "he", "<|endoftext|>"], ["Ġ t", "h e"]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the tiny Llama to ``path`` (float32 tensors, random weights from ``seed``)."""
    import gguf

    tokens, merges = _vocabulary()
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([1] * (vocab - 1) + [3])  # 3: control
    writer.add_bos_token_id(vocab - 1)
    writer.add_eos_token_id(vocab - 1)
    rng = np.random.default_rng(seed)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    add("token_embd.weight", vocab, HIDDEN)
    square, up, down = (HIDDEN, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)
    shapes = {"attn_q": square, "attn_k": square, "attn_v": square, "attn_output": square,
              "ffn_gate": up, "ffn_up": up, "ffn_down": down}
    for i in range(LAYERS):
        for name, shape in shapes.items():
            add(f"blk.{i}.{name}.weight", *shape)
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(HIDDEN, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
