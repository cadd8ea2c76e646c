"""The segment-grouped LoRA ops equal a dense per-token LoRA computation.

The reference below is written from the LoRA definition, token by token:
``y[t] += scale * B[i_t] @ (A[i_t] @ x[t])`` for a token with adapter slot ``i_t``, and
nothing for a token with -1 (no adapter). It shares no code with the ops. The ops are
driven exactly as vLLM's ``PunicaWrapperCPU`` drives them (shrink into a float32
buffer per slice, then expand each slice at its offset), with the segment metadata
from vLLM's own ``compute_meta``; and through ``PunicaWrapperCPU.add_lora_linear``
itself with the ops installed.
"""

import pytest
import torch

from serve import vllm_cpu_lora as ops

compute_meta = pytest.importorskip("vllm.lora.punica_wrapper.utils").compute_meta
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

HIDDEN = 576  # SmolLM2-135M: hidden 576, 9 query heads and 3 kv heads of 64, MLP 1,536
RANK = 16
MAX_LORAS = 4
# Every layout of output slices vLLM's linear layers give PunicaWrapperCPU.
LAYOUTS = {
    "qkv_proj (q, k, v packed)": (576, 192, 192),
    "gate_up_proj (gate, up packed)": (1536, 1536),
    "o_proj (one slice)": (576,),
    "down_proj (one slice, from 1,536)": (576,),
}
IN_FEATURES = {"down_proj (one slice, from 1,536)": 1536}


def _weights(generator, in_features, slices, dtype):
    """Per slice: A (max_loras, 1, rank, in) and B (max_loras, 1, out, rank)."""
    a = tuple(torch.randn(MAX_LORAS, 1, RANK, in_features, generator=generator,
                          dtype=dtype) / in_features ** 0.5 for _ in slices)
    b = tuple(torch.randn(MAX_LORAS, 1, size, RANK, generator=generator, dtype=dtype)
              for size in slices)
    return a, b


def _dense_reference(x, y, token_slots, a, b, slices, scale):
    """Token by token, from the definition; float64 so it is the exact answer."""
    expected = y.double().clone()
    for t, slot in enumerate(token_slots.tolist()):
        if slot == -1:
            continue
        offset = 0
        for a_slice, b_slice, size in zip(a, b, slices):
            low_rank = a_slice[slot, 0].double() @ x[t].double() * scale
            expected[t, offset:offset + size] += b_slice[slot, 0].double() @ low_rank
            offset += size
    return expected


def _apply_like_punica_cpu(op_set, x, y, token_slots, a, b, slices, scale):
    """What PunicaWrapperCPU.add_lora_linear does on the prefill (sgmv) path."""
    starts, lengths, indices, batches, max_len, tokens, no_lora = compute_meta(token_slots)
    if no_lora:
        return y
    meta = (starts, lengths, indices, batches, max_len, tokens)
    buffers = [torch.zeros(x.shape[0], RANK, dtype=torch.float32) for _ in slices]
    for buffer, a_slice in zip(buffers, a):
        op_set["sgmv_shrink"](x, a_slice, buffer, *meta, scale)
    offset = 0
    for buffer, b_slice, size in zip(buffers, b, slices):
        op_set["sgmv_expand_slice"](buffer, b_slice, y, *meta, offset, size, True)
        offset += size
    return y


def _token_slots(segments):
    """[(slot, length), ...] -> one slot per token, as vLLM's token_lora_indices."""
    return torch.cat([torch.full((length,), slot, dtype=torch.long)
                      for slot, length in segments])


def _random_segments(generator, count, allow_no_lora):
    low = -1 if allow_no_lora else 0
    slots = torch.randint(low, MAX_LORAS, (count,), generator=generator).tolist()
    lengths = torch.randint(1, 40, (count,), generator=generator).tolist()
    return list(zip(slots, lengths))


CASES = {
    "single segment (one adapter, fast path)": [(2, 57)],
    "single token": [(1, 1)],
    "one adapter then base (-1 last)": [(0, 20), (-1, 33)],
    "base, adapters, base (-1 around)": [(-1, 5), (3, 17), (1, 9), (-1, 12), (3, 4)],
    "base + 3 adapters, the last slot used": [(-1, 11), (0, 13), (2, 7), (3, 21)],
    "same adapter in two segments": [(1, 8), (2, 3), (1, 30)],
}


def _check(segments, layout, dtype=torch.float32, scale=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    slices = LAYOUTS[layout]
    in_features = IN_FEATURES.get(layout, HIDDEN)
    token_slots = _token_slots(segments)
    tokens = token_slots.shape[0]
    x = torch.randn(tokens, in_features, generator=generator).to(dtype)
    y = torch.randn(tokens, sum(slices), generator=generator).to(dtype)
    a, b = _weights(generator, in_features, slices, dtype)
    expected = _dense_reference(x, y, token_slots, a, b, slices, scale)
    got = _apply_like_punica_cpu(ops.SEGMENT_OPS, x, y.clone(), token_slots, a, b,
                                 slices, scale)
    return got, expected, token_slots


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_segment_ops_equal_dense_per_token_lora(case, layout):
    got, expected, _ = _check(CASES[case], layout)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(8))
def test_random_segments_with_and_without_base_tokens(seed, layout):
    generator = torch.Generator().manual_seed(100 + seed)
    segments = _random_segments(generator, count=1 + seed % 7, allow_no_lora=seed % 2 == 0)
    got, expected, _ = _check(segments, layout, seed=seed)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_base_tokens_keep_their_exact_output():
    """-1 segments are skipped: bit for bit what the base projection gave."""
    segments = [(-1, 10), (3, 5), (-1, 7)]
    generator = torch.Generator().manual_seed(7)
    token_slots = _token_slots(segments)
    slices = LAYOUTS["qkv_proj (q, k, v packed)"]
    x = torch.randn(len(token_slots), HIDDEN, generator=generator)
    y = torch.randn(len(token_slots), sum(slices), generator=generator)
    a, b = _weights(generator, HIDDEN, slices, torch.float32)
    got = _apply_like_punica_cpu(ops.SEGMENT_OPS, x, y.clone(), token_slots, a, b, slices, 1.0)
    base = token_slots == -1
    assert torch.equal(got[base], y[base])
    assert not torch.allclose(got[~base], y[~base])


def test_bfloat16_model_matches_reference_to_bfloat16_precision():
    segments = [(0, 16), (-1, 8), (2, 24)]
    got, expected, _ = _check(segments, "gate_up_proj (gate, up packed)",
                              dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, atol=0.1, rtol=2e-2)


@pytest.mark.parametrize("case", CASES)
def test_same_as_vllms_own_ops_where_those_are_right(case):
    """Without -1 tokens vLLM's per-token gather is correct: both must agree."""
    segments = [(slot, length) for slot, length in CASES[case] if slot != -1]
    generator = torch.Generator().manual_seed(3)
    token_slots = _token_slots(segments)
    slices = LAYOUTS["qkv_proj (q, k, v packed)"]
    x = torch.randn(len(token_slots), HIDDEN, generator=generator)
    y = torch.randn(len(token_slots), sum(slices), generator=generator)
    a, b = _weights(generator, HIDDEN, slices, torch.float32)
    vllm_ops = {name: getattr(lora_ops, name) for name in ops.REPLACED_OPS}
    ours = _apply_like_punica_cpu(ops.SEGMENT_OPS, x, y.clone(), token_slots, a, b, slices, 0.5)
    theirs = _apply_like_punica_cpu(vllm_ops, x, y.clone(), token_slots, a, b, slices, 0.5)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("token_slots", [[0, 0, 0], [2, -1, 0, 2, -1], [-1, -1], [3]])
def test_per_token_bgmv_ops_equal_dense_reference(token_slots):
    """bgmv_* (logits / full-linear paths): per-token indices, any order."""
    generator = torch.Generator().manual_seed(11)
    slots = torch.tensor(token_slots)
    x = torch.randn(len(slots), HIDDEN, generator=generator)
    y = torch.randn(len(slots), 40, generator=generator)
    a, b = _weights(generator, HIDDEN, (40,), torch.float32)
    buffer = torch.full((len(slots), RANK), float("nan"))  # every row must be written
    ops.bgmv_shrink(x, a[0], buffer, slots, 0.25)
    got = y.clone()
    ops.bgmv_expand(buffer, b[0], got, slots, add_inputs=True)
    expected = _dense_reference(x, y, slots, a, b, (40,), 0.25)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)

    sliced = torch.zeros(len(slots), 50)
    ops.bgmv_expand_slice(buffer, b[0], sliced, slots, 10, 40, add_inputs=False)
    torch.testing.assert_close(sliced[:, 10:].double(), expected - y.double(),
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(sliced[:, :10], torch.zeros(len(slots), 10))


def test_expand_without_adding_writes_zero_for_base_tokens():
    """add_inputs=False overwrites: a -1 row must get 0, not keep stale values."""
    slots = _token_slots([(1, 3), (-1, 2)])
    starts, lengths, indices, batches, max_len, tokens, _ = compute_meta(slots)
    buffer = torch.randn(5, RANK)
    b = torch.randn(MAX_LORAS, 1, 6, RANK)
    out = torch.full((5, 6), 9.0)
    ops.sgmv_expand(buffer, b, out, starts, lengths, indices, batches, max_len, tokens,
                    add_inputs=False)
    assert torch.equal(out[3:], torch.zeros(2, 6))
    torch.testing.assert_close(out[:3], buffer[:3] @ b[1, 0].T)


def test_punica_cpu_add_lora_linear_uses_the_installed_ops(monkeypatch):
    """Installed into vLLM, the wrapper vLLM's layers call gives the dense answer."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, torch_ops, punica_cpu):  # undone after the test
        for name in ops.REPLACED_OPS:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
    assert ops.install()
    assert punica_cpu.sgmv_shrink is ops.sgmv_shrink
    assert lora_ops.bgmv_expand is ops.bgmv_expand

    wrapper = punica_cpu.PunicaWrapperCPU(max_num_batched_tokens=256, max_batches=8,
                                          device="cpu")
    segments = [(-1, 9), (0, 12), (3, 6), (2, 10)]
    token_slots = _token_slots(segments)
    wrapper._update_prefill_metadata(token_slots)
    wrapper.is_prefill = True
    generator = torch.Generator().manual_seed(5)
    slices = LAYOUTS["qkv_proj (q, k, v packed)"]
    x = torch.randn(len(token_slots), HIDDEN, generator=generator)
    y = torch.randn(len(token_slots), sum(slices), generator=generator)
    a, b = _weights(generator, HIDDEN, slices, torch.float32)
    expected = _dense_reference(x, y, token_slots, a, b, slices, 1.0)
    wrapper.add_lora_linear(y, x, a, b, 1.0, slices)
    torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)


def test_probe_refuses_ops_that_compute_something_else():
    wrong = {name: getattr(lora_ops, name) for name in ops.REPLACED_OPS}
    wrong["sgmv_shrink"] = lambda *args: None  # leaves the buffer at zero
    assert not ops.matches_reference(wrong)
    assert ops.matches_reference({name: getattr(lora_ops, name) for name in ops.REPLACED_OPS})
