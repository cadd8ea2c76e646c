"""The launcher's switch that keeps vLLM's torch.compile on with LoRA (CPU build), on
vLLM's own config code: the CPU platform's check turns compilation off whenever LoRA
is enabled, and with the switch it keeps the mode it picks for the model."""

import pytest

from serve import vllm_launcher

pytest.importorskip("vllm")


def _compilation_mode(base_model_dir) -> str:
    from vllm.engine.arg_utils import EngineArgs

    config = EngineArgs(model=str(base_model_dir), enable_lora=True, max_lora_rank=16,
                        max_model_len=512, dtype="float32").create_engine_config()
    assert config.lora_config is not None  # put back after the check
    return config.compilation_config.mode.name


def test_compile_with_lora_is_off_unless_asked(base_model_dir, monkeypatch):
    vllm_launcher.patch_version_lookup()
    if not vllm_launcher.is_cpu_build():
        pytest.skip("the switch acts on the CPU build only")
    from vllm.platforms import cpu

    # the same classmethod, recorded so that the switch's replacement is undone after
    monkeypatch.setattr(cpu.CpuPlatform, "check_and_update_config",
                        cpu.CpuPlatform.__dict__["check_and_update_config"])
    monkeypatch.delenv(vllm_launcher.CPU_COMPILE_WITH_LORA_ENV, raising=False)
    assert not vllm_launcher.patch_cpu_compile_with_lora()
    assert _compilation_mode(base_model_dir) == "NONE"

    monkeypatch.setenv(vllm_launcher.CPU_COMPILE_WITH_LORA_ENV, "1")
    assert vllm_launcher.patch_cpu_compile_with_lora()
    assert vllm_launcher.patch_cpu_compile_with_lora()  # a second call changes nothing
    assert _compilation_mode(base_model_dir) != "NONE"


def test_the_cpu_setting_binds_the_worker_to_that_many_available_cores():
    from serve.vllm_launcher import cpu_binding

    assert cpu_binding("all", [0, 1]) == "0,1"
    assert cpu_binding("1", [0, 1]) == "0"
    assert cpu_binding("8", [2, 5]) == "2,5"  # never more than the process may use
    assert cpu_binding("1500m", [0, 1, 2, 3]) == "0,1"  # a Kubernetes quantity, rounded up
    assert cpu_binding("vllm", [0, 1]) is None and cpu_binding(None, [0, 1]) is None
    for bad in ("0", "-2", "lots", "0m"):
        with pytest.raises(ValueError, match="SIGNALS_VLLM_CPUS"):
            cpu_binding(bad, [0, 1])


def _cpu_flags() -> set[str]:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not _cpu_flags(), reason="no /proc/cpuinfo flags on this machine")
def test_auto_serving_dtype_is_bfloat16_exactly_where_this_cpu_computes_it():
    """``vllm_dtype: auto`` follows the CPU's own flags (AVX-512 BF16 or AMX: bfloat16;
    neither: float32, where bfloat16 ran tens of times slower); explicit dtypes are kept
    and unknown ones refused."""
    import torch

    from classify.backends import serving_dtype

    assert not torch.cuda.is_available()
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert serving_dtype("auto") == ("bfloat16" if native else "float32")
    assert serving_dtype("float32") == "float32"
    assert serving_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="unknown serving dtype 'int8'"):
        serving_dtype("int8")


def test_the_api_knows_a_vllm_dtype_only_where_it_can(base_model_dir):
    """A vLLM the API starts computes in what ``auto`` resolves to here; one at
    ``--vllm-url`` in the dtype the config names, and with ``auto`` in an unknown one
    (this machine's probe says nothing of another's), so nothing is flagged on a guess."""
    from serve.config import ServeConfig
    from serve.server import make_backend
    from classify.backends import serving_dtype

    here = ServeConfig(base_model=base_model_dir, vllm_dtype="auto")
    assert make_backend(here, "http://127.0.0.1:1").dtype == serving_dtype("auto")
    remote = here.model_copy(update={"vllm_url": "http://vllm:8000"})
    assert make_backend(remote, remote.vllm_url).dtype is None
    named = remote.model_copy(update={"vllm_dtype": "bfloat16"})
    assert make_backend(named, named.vllm_url).dtype == "bfloat16"
