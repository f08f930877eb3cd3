"""The roofline's FLOP counter against a hand count on tiny configs, and its peaks."""

from __future__ import annotations

import types

import pytest

from benchmarks.bench import roofline as rl


def config(**fields):
    return types.SimpleNamespace(**fields)


BERT = config(model_type="bert", hidden_size=8, intermediate_size=32, num_attention_heads=2,
              num_hidden_layers=3)
LLAMA = config(model_type="llama", hidden_size=8, intermediate_size=16, num_attention_heads=4,
               num_key_value_heads=2, head_dim=2, num_hidden_layers=2)


def test_bert_block_by_hand():
    # T = 5: Q, K, V, O 4·(2·5·8·8) = 2560; QKᵀ and AV 2·(2·5·5·8) = 800; up and down
    # 2·(2·5·8·32) = 5120
    assert rl.block_flops(BERT, 5) == 2560 + 800 + 5120
    assert rl.forward_flops(BERT, [5, 5]) == 3 * 2 * (2560 + 800 + 5120)
    assert rl.forward_flops(BERT, [5], blocks=1.5) == 1.5 * (2560 + 800 + 5120)


def test_gated_gqa_block_by_hand():
    # T = 3, d_q = 4·2 = 8, d_kv = 2·2 = 4: Q and O 2·(2·3·8·8) = 768, K and V
    # 2·(2·3·8·4) = 384; attention 4·3·3·8 = 288; gate, up, down 3·(2·3·8·16) = 2304
    assert rl.block_flops(LLAMA, 3) == 768 + 384 + 288 + 2304
    assert rl.forward_flops(LLAMA, [3, 1]) == 2 * (rl.block_flops(LLAMA, 3)
                                                   + rl.block_flops(LLAMA, 1))


def test_peaks_follow_the_flags():
    amx = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"]
    assert [rl.flops_per_cycle(p, amx) for p in rl.PRECISIONS] == [64, 1024, 2048]
    assert [rl.flops_per_cycle(p, ["avx2", "fma"]) for p in rl.PRECISIONS] == [32, 32, 32]
    assert rl.flops_per_cycle("bf16", ["avx512f", "avx512_bf16"]) == 128
    assert rl.theoretical_peak("fp32", cores=2, flags=["avx512f"], ghz=2.5) == 320
    with pytest.raises(ValueError, match="precision"):
        rl.flops_per_cycle("fp8", amx)


def test_roofline_row():
    row = rl.roofline(BERT, [5, 5], 1e-6, "fp32", cores=1)
    assert row["gflop"] == pytest.approx(rl.forward_flops(BERT, [5, 5]) / 1e9)
    assert row["gflops"] == pytest.approx(row["gflop"] / 1e-6)
    assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / row["peak_gflops"])
    assert "fraction_of_measured" not in row
    measured = rl.roofline(BERT, [5], 1.0, "fp32", measured=10.0)
    assert measured["fraction_of_measured"] == pytest.approx(measured["gflops"] / 10.0)


def test_measured_peak_is_positive():
    assert rl.measured_peak("fp32", threads=1, size=64, seconds=0.05) > 0
